"""Runs that survive a person: --resume checks what it continues, Ctrl-C, output folders, what a
finished run leaves; through the real entry point on the tiny test_vit."""

from __future__ import annotations

TINY = ("--backbone", "test_vit", "--weights", "random", "--img-size", "32")



def test_resume_refuses_other_options_and_other_data(ingested, tmp_path, vpt, make_tree):
    run = tmp_path / "run"
    code, _, err = vpt("train", ingested, "--out", run, *TINY, "--epochs", "2", "--batch-size", "4")
    assert code == 0, err
    code, _, err = vpt("train", ingested, "--out", run, *TINY, "--resume", "--method", "linear-probe")
    flat = " ".join(err.split())
    assert code == 2 and "--method linear-probe differs from the run's vpt-deep" in flat
    code, _, err = vpt("train", ingested, "--out", run, "--resume", "--lr", "0.5")
    assert code == 2 and "--lr 0.5 differs from the run's None" in " ".join(err.split())
    other = make_tree(tmp_path / "other", seed=4, names=("good", "scratch"))
    assert vpt("ingest", other, "--out", tmp_path / "data2", "--val-fraction", "0.2", "--test-fraction", "0.2")[0] == 0
    code, _, err = vpt("train", tmp_path / "data2", "--out", run, "--resume")
    assert code == 2 and "the data differs from the run's" in " ".join(err.split())
    # the same options and data, or none at all: it continues (here: nothing left)
    code, _, err = vpt("train", ingested, "--out", run, *TINY, "--epochs", "2", "--batch-size", "4", "--resume")
    assert code == 0 and "already finished its 2 epochs" in " ".join(err.split())


def test_ctrl_c_during_cache_build_then_resume_starts_again(ingested, tmp_path, vpt, monkeypatch):
    from vptcli import training

    real = training.build_caches

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    run = tmp_path / "run"
    monkeypatch.setattr(training, "build_caches", interrupted)
    code, _, err = vpt("train", ingested, "--out", run, *TINY, "--epochs", "1", "--batch-size", "4")
    flat = " ".join(err.split())
    assert code == 130 and "interrupted before the first epoch ended" in flat
    assert f"vpt train {ingested} --out {run} --resume" in flat and "Traceback" not in err and "Aborted" not in err
    monkeypatch.setattr(training, "build_caches", real)
    code, _, err = vpt("train", ingested, "--out", run, "--resume")
    assert code == 0, err
    assert "starting" in err and (run / "prompts.safetensors").is_file() and (run / "last.ckpt.safetensors").is_file()


def test_ctrl_c_during_an_epoch_says_what_was_saved(ingested, tmp_path, vpt, monkeypatch):
    from vptcli import training

    real = training.train_one_epoch

    def stop_in_second(s, opt, epoch, *args, **kwargs):
        if epoch == 1:
            raise KeyboardInterrupt
        return real(s, opt, epoch, *args, **kwargs)

    run = tmp_path / "run"
    monkeypatch.setattr(training, "train_one_epoch", stop_in_second)
    code, _, err = vpt("train", ingested, "--out", run, *TINY, "--epochs", "3", "--batch-size", "4")
    flat = " ".join(err.split())
    assert code == 130 and "holds epoch 1 of 3" in flat and f"continue with: vpt train {ingested} --out {run} --resume" in flat
    assert len([line for line in err.splitlines() if "interrupted" in line]) == 1
    monkeypatch.setattr(training, "train_one_epoch", real)
    code, _, err = vpt("train", ingested, "--out", run, "--resume")
    assert code == 0 and "resuming" in err and "after epoch 1 of 3" in " ".join(err.split())


def test_export_refuses_a_folder_of_other_files_and_eval_stays_out_of_it(ingested, tmp_path, vpt, make_tree):
    run = tmp_path / "run"
    assert vpt("train", ingested, "--out", run, *TINY, "--epochs", "1", "--batch-size", "4")[0] == 0
    images = make_tree(tmp_path / "images", n_per_class=1, names=("good", "scratch"))
    code, _, err = vpt("export", run, "--out", images)
    assert code == 2 and "holds other files (good, scratch)" in " ".join(err.split()) and "--exist-ok" in err
    assert sorted(p.name for p in images.iterdir()) == ["good", "scratch"]
    assert vpt("export", run, "--out", tmp_path / "export")[0] == 0
    assert vpt("export", run, "--out", tmp_path / "export")[0] == 0  # a previous export is replaced
    code, _, err = vpt("export", run, "--out", images, "--exist-ok")
    assert code == 0, err
    assert (images / "model.onnx").is_file() and (images / "good" / "000.png").is_file()
    code, out, err = vpt("eval", tmp_path / "export", ingested)
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "export").iterdir()) == ["model.onnx", "ood_reference.safetensors", "prompts.safetensors"]
    assert (tmp_path / "export-eval-test" / "report.json").is_file()
    assert f"wrote {tmp_path / 'export-eval-test' / 'report.json'}" in " ".join(out.split())


def test_training_curves_and_the_list_of_files_written(ingested, tmp_path, vpt, monkeypatch):
    from vptcli import training

    plotted = []
    real = training.training_curves_png
    monkeypatch.setattr(training, "training_curves_png", lambda rows, path: plotted.append([r["epoch"] for r in rows]) or real(rows, path))
    run = tmp_path / "run"
    code, out, err = vpt("train", ingested, "--out", run, *TINY, "--epochs", "2", "--batch-size", "4")
    assert code == 0, err
    assert plotted[-1] == [0, 1, 2]  # the head fitted before any epoch is plotted too
    png = (run / "training_curves.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 1000
    flat = " ".join(out.split())
    written = sorted(p.name for p in run.iterdir())
    assert "training_curves.png" in written and "train_images.json" in written
    for name in written:
        assert f"wrote {run / name}" in flat


def test_resume_accepts_the_auto_options_it_was_started_with(ingested, tmp_path, vpt):
    run = tmp_path / "run"
    args = ("train", ingested, "--out", run, "--backbone", "test_vit", "--weights", "random", "--epochs", "1",
            "--batch-size", "4", "--img-size", "auto", "--prompt-start-block", "auto")
    code, out, err = vpt(*args)
    assert code == 0, err
    code, out, err = vpt(*args, "--resume")  # the original command plus --resume
    assert code == 0, err
    assert "nothing to resume" in err and "wrote" not in out  # a finished run: nothing written, none listed
    code, out, err = vpt(*args[:-2], "--prompt-start-block", "2", "--resume")
    assert code == 2 and "--prompt-start-block 2 differs from the run's 5" in err
    code, out, err = vpt("train", ingested, "--out", tmp_path / "nothing", "--resume", *TINY)
    assert code == 2 and "no run here to resume" in " ".join(err.split()) and "Errno" not in err


def test_eval_refuses_an_out_folder_of_other_files(ingested, tmp_path, vpt, make_tree):
    run = tmp_path / "run"
    code, _, err = vpt("train", ingested, "--out", run, *TINY, "--epochs", "1", "--batch-size", "4")
    assert code == 0, err
    images = make_tree(tmp_path / "images", n_per_class=2)
    before = sorted(p.name for p in images.iterdir())
    code, _, err = vpt("eval", run, ingested, "--out", images)
    assert code == 2 and "holds other files" in " ".join(err.split()) and "--exist-ok" in err
    assert sorted(p.name for p in images.iterdir()) == before
    code, _, err = vpt("eval", run, ingested, "--out", images, "--exist-ok")
    assert code == 0, err
    assert (images / "report.json").is_file()
    code, _, err = vpt("eval", run, ingested, "--out", images)  # now also a previous report folder, but not only that
    assert code == 2 and "holds other files" in " ".join(err.split())
