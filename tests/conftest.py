"""Fixtures and helpers shared by the tests: the in-process `vpt` runner, a tiny image tree, the methods.

``benchmarks/`` is put on ``sys.path`` so that the tests can import its data-set recipe
(``elpv_data``) the way the benchmark scripts do.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))


def run_vpt(monkeypatch, capsys, *args) -> tuple[int, str, str]:
    """Run vptcli.cli.main with ``args`` -> (exit code, stdout, stderr)."""
    from vptcli.cli import main

    monkeypatch.setattr(sys, "argv", ["vpt", *map(str, args)])
    with pytest.raises(SystemExit) as info:
        main()
    captured = capsys.readouterr()
    return info.value.code, captured.out, captured.err


@pytest.fixture
def vpt(monkeypatch, capsys):
    """``vpt(*args) -> (exit code, stdout, stderr)``: the real entry point, in-process."""
    return lambda *args: run_vpt(monkeypatch, capsys, *args)


def build_tree(root: Path, n_per_class: int = 10, size: int = 40, seed: int = 0,
               names: tuple[str, str] = ("bright_left", "bright_right")) -> Path:
    """Two separable classes of PNGs under ``root``: bright left half (first class) vs bright right
    half (second class), with noise."""
    rng = np.random.default_rng(seed)
    for c, name in enumerate(names):
        (root / name).mkdir(parents=True)
        for i in range(n_per_class):
            img = rng.integers(0, 60, size=(size, size, 3), dtype=np.uint8)
            if c == 0:
                img[:, : size // 2] += 150
            else:
                img[:, size // 2 :] += 150
            Image.fromarray(img).save(root / name / f"{i:03d}.png")
    return root


@pytest.fixture(scope="session")
def make_tree():
    """:func:`build_tree`, as a fixture."""
    return build_tree


@pytest.fixture()
def ingested(tmp_path, vpt, make_tree):
    """A two-class tree (``good``, ``scratch``) ingested with 20 % validation and 20 % test -> its folder."""
    src = make_tree(tmp_path / "src", names=("good", "scratch"))
    code, _, err = vpt("ingest", src, "--out", tmp_path / "data", "--val-fraction", "0.2", "--test-fraction", "0.2")
    assert code == 0, err
    return tmp_path / "data"
