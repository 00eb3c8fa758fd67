"""A prompt registry: versions of prompt files per task, a production pointer with a gate, rollback,
and an append-only audit log, in an SQLite database (Python's ``sqlite3``) inside a registry folder.

Layout of a registry folder (every path stored is relative to it, so a copied folder verifies)::

    registry.sqlite                  tasks, versions, promotions, audit (schema below)
    objects/<sha256>/prompts.safetensors   content-addressed copy (sha256 of the file's bytes)
    objects/<sha256>/train_images.json     the run's training images, when published from a run folder

- **versions** are immutable rows (SQLite triggers refuse UPDATE and DELETE): task, version number
  (1, 2, ... per task), the prompt file's sha256, its stored files and their sha256, method, classes,
  validation metrics, training-data fingerprint, backbone identity, when, who and a note.
- **promotions** is the production stack of a task: ``promote`` pushes a version, ``rollback`` retires
  the top one; the production version is the newest active row.
- **audit** (publish, set-acceptance, promote, promote-refused, force-promote, rollback) is append-only (triggers raise on UPDATE and DELETE) and hash-chained: each entry stores
  the sha256 of the previous entry's hash and its own content, so :func:`verify` also detects an entry
  changed by other means than SQL (an edited file with the triggers dropped).

Concurrency: every change runs in one ``BEGIN IMMEDIATE`` transaction (one writer at a time; others
wait up to :data:`BUSY_TIMEOUT_S`), with SQLite's rollback journal (not WAL, so that the folder is
complete after every commit and can be copied); stored files are written under a temporary name and
renamed into place before the row that names them is committed.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import getpass
import hashlib
import json
import os
import shutil
import sqlite3
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from vptcli.errors import VptError

DB_FILE = "registry.sqlite"
OBJECTS = "objects"
SCHEMA_VERSION = 1
BUSY_TIMEOUT_S = 60.0
"""How long a writer waits for another writer's transaction (seconds)."""
SIDECAR_FILES = ("train_images.json", "ood_reference.safetensors")
"""Files beside a prompt file that are stored with it when present: the run's training images (the
leakage check of the promotion gate reads them) and its unfamiliar-image reference
(:data:`vptcli.ood.OOD_FILE`, so that ``vpt predict --registry`` flags unfamiliar images too)."""
GATE_METRIC = "macro_f1"


def _is_prompt_file(rel: str) -> bool:
    """Whether a stored file (path relative to the registry) is the version's prompt file, not a sidecar."""
    return rel.endswith(".safetensors") and Path(rel).name not in SIDECAR_FILES

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);""",
    """CREATE TABLE IF NOT EXISTS tasks (
    name TEXT PRIMARY KEY,
    created TEXT NOT NULL,
    acceptance_path TEXT,
    acceptance_split TEXT,
    acceptance_fingerprint TEXT,
    acceptance_images INTEGER
);""",
    """CREATE TABLE IF NOT EXISTS versions (
    task TEXT NOT NULL REFERENCES tasks(name),
    version INTEGER NOT NULL,
    digest TEXT NOT NULL,
    files TEXT NOT NULL,
    method TEXT NOT NULL,
    classes TEXT NOT NULL,
    metrics TEXT NOT NULL,
    data_fingerprint TEXT NOT NULL,
    backbone TEXT NOT NULL,
    trained TEXT NOT NULL,
    published TEXT NOT NULL,
    user TEXT NOT NULL,
    note TEXT NOT NULL,
    source TEXT NOT NULL,
    PRIMARY KEY (task, version),
    UNIQUE (task, digest)
);""",
    """CREATE TABLE IF NOT EXISTS promotions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    task TEXT NOT NULL REFERENCES tasks(name),
    version INTEGER NOT NULL,
    time TEXT NOT NULL,
    active INTEGER NOT NULL DEFAULT 1
);""",
    """CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    time TEXT NOT NULL,
    user TEXT NOT NULL,
    action TEXT NOT NULL,
    task TEXT,
    version INTEGER,
    detail TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);""",
    """CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit
    BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;""",
    """CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit
    BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;""",
    """CREATE TRIGGER IF NOT EXISTS versions_no_update BEFORE UPDATE ON versions
    BEGIN SELECT RAISE(ABORT, 'published versions are immutable'); END;""",
    """CREATE TRIGGER IF NOT EXISTS versions_no_delete BEFORE DELETE ON versions
    BEGIN SELECT RAISE(ABORT, 'published versions are immutable'); END;""",
    """CREATE TRIGGER IF NOT EXISTS promotions_no_delete BEFORE DELETE ON promotions
    BEGIN SELECT RAISE(ABORT, 'the promotion history is kept'); END;""",
)
"""The tables and triggers (created when missing, inside the first write transaction)."""


class RegistryError(VptError):
    """A registry that does not exist, a task or version that does not, a refused promotion."""


@dataclass(frozen=True)
class Version:
    """One published version of a task (a row of ``versions``; JSON columns decoded)."""

    task: str
    version: int
    digest: str
    files: dict
    method: str
    classes: list
    metrics: dict
    data_fingerprint: str
    backbone: dict
    trained: str
    published: str
    user: str
    note: str
    source: str

    def prompt_path(self, root: Path) -> Path:
        """The stored prompt file of this version under the registry folder ``root``."""
        return Path(root) / next(p for p in self.files if _is_prompt_file(p))


@dataclass(frozen=True)
class AuditEntry:
    """One row of the audit log."""

    id: int
    time: str
    user: str
    action: str
    task: str | None
    version: int | None
    detail: dict


def now() -> str:
    """UTC time, ISO 8601 to the second."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def current_user() -> str:
    """The login name of this process (``getpass.getuser``), ``unknown`` when it cannot be told."""
    try:
        return getpass.getuser()
    except (OSError, KeyError, ImportError):
        return "unknown"


class Registry:
    """A registry folder (:func:`open_registry`; ``create=True`` makes a new one at its first write, so a
    first publish refused before anything is copied, for a bad task name or source, leaves nothing behind).

    Raises:
        RegistryError: no registry at ``root`` (without ``create``), or a newer schema.
    """

    def __init__(self, root: str | os.PathLike, *, create: bool = False) -> None:
        self.root = Path(root)
        db = self.root / DB_FILE
        if not db.is_file():
            if not create:
                raise self._missing()
            if self.root.exists() and not self.root.is_dir():
                raise RegistryError(f"--registry {self.root}: a file, not a registry folder")
            own = (DB_FILE, f"{DB_FILE}-journal", OBJECTS)  # another process creating the same registry right now
            if self.root.is_dir() and any(p for p in self.root.iterdir() if not p.name.startswith(".") and p.name not in own):
                raise RegistryError(f"--registry {self.root}: holds other files and no {DB_FILE}; "
                                    "a new registry needs a new or empty folder")
        self._db = db

    def _missing(self) -> RegistryError:
        return RegistryError(f"{self.root}: no prompt registry here (no {DB_FILE}); publish a first version "
                             "with `vpt registry publish ... --registry DIR`, which creates it")

    @contextlib.contextmanager
    def connect(self, write: bool = False) -> Iterator[sqlite3.Connection]:
        """A connection; ``write``: inside one ``BEGIN IMMEDIATE`` transaction, committed on success and
        rolled back on any error; the first write creates the registry folder.

        Raises:
            RegistryError: reading a registry not created yet, a database error.
        """
        if write:
            self.root.mkdir(parents=True, exist_ok=True)
        elif not self._db.is_file():
            raise self._missing()
        con = sqlite3.connect(self._db, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        con.row_factory = sqlite3.Row
        try:
            con.execute("PRAGMA journal_mode=DELETE")
            con.execute("PRAGMA foreign_keys=ON")
            if write:
                con.execute("BEGIN IMMEDIATE")
                try:
                    for stmt in SCHEMA:
                        con.execute(stmt)
                    _check_schema(con, self._db)
                    yield con
                except BaseException:
                    con.execute("ROLLBACK")
                    raise
                con.execute("COMMIT")
            else:
                yield con
        except sqlite3.DatabaseError as exc:
            raise RegistryError(f"{self._db}: {exc}") from None
        finally:
            con.close()

    # ------------------------------------------------------------------------------------- writes

    def publish(self, model_path: str | os.PathLike, task: str, note: str = "") -> Version:
        """Store a prompt file (a run folder, export folder or ``.safetensors`` file; read and verified
        by :func:`vptcli.artifacts.read_prompt_file`) as the next version of ``task`` (created on first use).

        Raises:
            ArtifactError: an unreadable or tampered prompt file.
            RegistryError: a bad task name, or the same file already published for the task.
        """
        from vptcli.artifacts import read_prompt_file, resolve_prompt_path
        from vptcli.digests import file_sha256

        check_task_name(task)
        src = resolve_prompt_path(model_path)
        _, meta = read_prompt_file(src)
        digest = file_sha256(src)
        files = {f"{OBJECTS}/{digest}/{src.name if src.suffix == '.safetensors' else 'prompts.safetensors'}": src}
        for name in SIDECAR_FILES:
            if (src.parent / name).is_file():
                files[f"{OBJECTS}/{digest}/{name}"] = src.parent / name
        stored = {rel: self._store(path, rel) for rel, path in files.items()}
        with self.connect(write=True) as con:
            same = con.execute("SELECT version FROM versions WHERE task=? AND digest=?", (task, digest)).fetchone()
            if same:
                raise RegistryError(f"{src}: this prompt file is already version {same[0]} of task {task!r}")
            if con.execute("SELECT 1 FROM tasks WHERE name=?", (task,)).fetchone() is None:
                con.execute("INSERT INTO tasks(name, created) VALUES (?, ?)", (task, now()))
            number = con.execute("SELECT COALESCE(MAX(version), 0) + 1 FROM versions WHERE task=?", (task,)).fetchone()[0]
            row = {"task": task, "version": number, "digest": digest, "files": json.dumps(stored, sort_keys=True),
                   "method": meta.method, "classes": json.dumps(meta.classes), "metrics": json.dumps(meta.metrics),
                   "data_fingerprint": meta.data_fingerprint, "backbone": json.dumps(meta.backbone, sort_keys=True),
                   "trained": meta.created, "published": now(), "user": current_user(), "note": note,
                   "source": str(src)}
            con.execute(f"INSERT INTO versions({', '.join(row)}) VALUES ({', '.join('?' * len(row))})", tuple(row.values()))
            self._audit(con, "publish", task, number, {"digest": digest, "note": note, "source": str(src),
                                                       "metrics": meta.metrics})
        return self.version(task, number)

    def set_acceptance(self, task: str, data: str | os.PathLike, split: str | None = None, reason: str = "") -> dict:
        """Pin the acceptance set of ``task``: an ingested data set (``split``, default ``test``) or a
        class-per-folder tree (every image). Its fingerprint (class and pixel sha256 of every image) is
        kept; a promotion refuses data that no longer matches it.

        Returns:
            What was pinned (path, split, fingerprint, images, classes) and ``unknown_classes``: the
            acceptance classes that no published version of the task knows yet (a misnamed folder, or
            a class a coming version adds; their images count as misses for any version without them,
            see :func:`acceptance_scores`).

        Raises:
            RegistryError: unknown task. VptError: no usable images (see :func:`vptcli.evaluation.load_eval_data`).
        """
        from vptcli.evaluation import load_eval_data
        from vptcli.train_report import Reporter

        known = {c for v in self.versions(task) for c in v.classes}  # unknown task: refused before any image is read
        ev = load_eval_data(data, split, Reporter())
        if not ev.records:
            raise RegistryError(f"{data}: no usable images to accept versions of {task!r} on")
        classes = sorted({r.label for r in ev.records})
        pinned = {"path": str(Path(data).resolve()), "split": ev.split, "fingerprint": images_fingerprint(ev.records),
                  "images": len(ev.records), "classes": classes, "unknown_classes": [c for c in classes if c not in known]}
        with self.connect(write=True) as con:
            self._task_row(con, task)
            con.execute("UPDATE tasks SET acceptance_path=?, acceptance_split=?, acceptance_fingerprint=?, "
                        "acceptance_images=? WHERE name=?",
                        (pinned["path"], pinned["split"], pinned["fingerprint"], pinned["images"], task))
            self._audit(con, "set-acceptance", task, None, {**pinned, "reason": reason})
        return pinned

    def promote(self, task: str, version: int, *, max_drop: float = 0.0, force: bool = False, reason: str = "",
                device: str = "cpu", reporter=None) -> dict:
        """Make ``version`` the production version of ``task``, through the gate.

        The gate (:func:`gate`) scores the candidate and the current production version on the task's
        acceptance set; it refuses when the candidate's macro-F1 is lower by more than ``max_drop``
        (a fraction, 0.01 = one point). ``force`` with a ``reason`` overrides a refusal (and a missing
        acceptance set); the override is logged with the scores, and so is every refusal (with the reason
        when there is no score: acceptance images used in training, missing or changed).

        Returns:
            The gate's result (scores, drop, passed, forced).

        Raises:
            RegistryError: unknown task or version, the version is production already, the gate refused,
                ``force`` without ``reason``, no acceptance set without ``force``.
        """
        if force and not reason.strip():
            raise RegistryError("--force needs --reason TEXT: a forced promotion is logged with its reason")
        if max_drop < 0:
            raise RegistryError(f"--max-drop must be >= 0, got {max_drop}")
        cand = self.version(task, version)
        prod = self.production(task)
        if prod is not None and prod.version == version:
            raise RegistryError(f"version {version} is already the production version of {task!r}")
        try:
            result = self.gate(task, cand, prod, max_drop=max_drop, device=device, reporter=reporter, allow_missing=force)
        except RegistryError as exc:  # no score (acceptance images used in training, missing or changed): refused, logged
            with self.connect(write=True) as con:
                self._audit(con, "promote-refused", task, version, {"from": prod.version if prod else None, "message": str(exc)})
            raise
        result["forced"] = bool(force and not result["passed"])
        gate_log = {k: v for k, v in result.items() if k != "message"}
        if not result["passed"] and not force:
            with self.connect(write=True) as con:  # a refusal is logged too
                self._audit(con, "promote-refused", task, version, {"from": prod.version if prod else None, "gate": gate_log,
                                                                    "message": result["message"]})
            raise RegistryError(result["message"] + "; pass --force --reason TEXT to promote anyway (logged)")
        with self.connect(write=True) as con:
            now_prod = _production_row(con, task)
            if (now_prod["version"] if now_prod else None) != (prod.version if prod else None):
                raise RegistryError(f"task {task!r}: the production version changed while the gate ran; run promote again")
            con.execute("INSERT INTO promotions(task, version, time) VALUES (?, ?, ?)", (task, version, now()))
            detail = {"from": prod.version if prod else None, "gate": gate_log, "reason": reason}
            self._audit(con, "force-promote" if result["forced"] else "promote", task, version, detail)
        return result

    def rollback(self, task: str, reason: str = "") -> tuple[int, int]:
        """Retire the production version of ``task``; the version promoted before it is production again
        (no gate: it was accepted before). Returns ``(retired version, production version now)``.

        Raises:
            RegistryError: unknown task, or no earlier production version to return to.
        """
        with self.connect(write=True) as con:
            self._task_row(con, task)
            active = con.execute("SELECT id, version FROM promotions WHERE task=? AND active=1 ORDER BY id DESC LIMIT 2",
                                 (task,)).fetchall()
            if len(active) < 2:
                what = "no production version" if not active else f"version {active[0]['version']} is the first production version"
                raise RegistryError(f"task {task!r}: nothing to roll back to ({what})")
            con.execute("UPDATE promotions SET active=0 WHERE id=?", (active[0]["id"],))
            self._audit(con, "rollback", task, active[1]["version"], {"from": active[0]["version"], "reason": reason})
        return active[0]["version"], active[1]["version"]

    # -------------------------------------------------------------------------------------- reads

    def tasks(self) -> list[dict]:
        """Every task: name, created, versions, production version (or None), acceptance set."""
        with self.connect() as con:
            rows = con.execute("SELECT * FROM tasks ORDER BY name").fetchall()
            out = []
            for r in rows:
                n = con.execute("SELECT COUNT(*) FROM versions WHERE task=?", (r["name"],)).fetchone()[0]
                prod = _production_row(con, r["name"])
                out.append({"task": r["name"], "created": r["created"], "versions": n,
                            "production": prod["version"] if prod else None,
                            "acceptance": _acceptance(r)})
            return out

    def versions(self, task: str) -> list[Version]:
        """Every version of ``task``, oldest first. Raises RegistryError: unknown task."""
        with self.connect() as con:
            self._task_row(con, task)
            return [_version(r) for r in con.execute("SELECT * FROM versions WHERE task=? ORDER BY version", (task,))]

    def version(self, task: str, version: int | None = None) -> Version:
        """Version ``version`` of ``task`` (None: the production version).

        Raises:
            RegistryError: unknown task or version, or no production version.
        """
        with self.connect() as con:
            self._task_row(con, task)
            if version is None:
                prod = _production_row(con, task)
                if prod is None:
                    raise RegistryError(f"task {task!r} has no production version; promote one with "
                                        f"`vpt registry promote {task} VERSION`")
                version = prod["version"]
            row = con.execute("SELECT * FROM versions WHERE task=? AND version=?", (task, version)).fetchone()
            if row is None:
                last = con.execute("SELECT MAX(version) FROM versions WHERE task=?", (task,)).fetchone()[0]
                raise RegistryError(f"task {task!r} has no version {version} (versions 1..{last or 0})")
            return _version(row)

    def production(self, task: str) -> Version | None:
        """The production version of ``task``, or None."""
        with self.connect() as con:
            self._task_row(con, task)
            prod = _production_row(con, task)
        return self.version(task, prod["version"]) if prod else None

    def acceptance(self, task: str) -> dict | None:
        """The pinned acceptance set of ``task`` (path, split, fingerprint, images) or None."""
        with self.connect() as con:
            return _acceptance(self._task_row(con, task))

    def log(self, task: str | None = None) -> list[AuditEntry]:
        """The audit log, oldest first (only ``task``'s entries when given)."""
        with self.connect() as con:
            q, args = ("SELECT * FROM audit WHERE task=? ORDER BY id", (task,)) if task else ("SELECT * FROM audit ORDER BY id", ())
            return [AuditEntry(r["id"], r["time"], r["user"], r["action"], r["task"], r["version"], json.loads(r["detail"]))
                    for r in con.execute(q, args)]

    def verify(self) -> list[str]:
        """Check the registry: SQLite's integrity check, every stored file present with its recorded
        sha256, every prompt file readable with matching tensors, the audit log's hash chain. Returns
        the problems found (empty: the registry is sound)."""
        from vptcli.artifacts import ArtifactError, read_prompt_file
        from vptcli.digests import file_sha256

        problems = []
        with self.connect() as con:
            check = con.execute("PRAGMA integrity_check").fetchone()[0]
            if check != "ok":
                problems.append(f"{DB_FILE}: SQLite integrity check: {check}")
            rows = con.execute("SELECT * FROM versions ORDER BY task, version").fetchall()
            audit = con.execute("SELECT * FROM audit ORDER BY id").fetchall()
        for r in rows:
            for rel, digest in json.loads(r["files"]).items():
                p = self.root / rel
                if not p.is_file():
                    problems.append(f"{r['task']} v{r['version']}: {rel} is missing")
                elif file_sha256(p) != digest:
                    problems.append(f"{r['task']} v{r['version']}: {rel} does not match its sha256 (modified or corrupt)")
                elif _is_prompt_file(rel):
                    try:
                        read_prompt_file(p)
                    except ArtifactError as exc:
                        problems.append(f"{r['task']} v{r['version']}: {exc}")
        prev = ""
        for r in audit:
            if r["prev_hash"] != prev or _entry_hash(prev, dict(r)) != r["hash"]:
                problems.append(f"audit entry {r['id']} ({r['action']}): the hash chain is broken (entry changed or removed)")
            prev = r["hash"]
        return problems

    # ----------------------------------------------------------------------------------- the gate

    def gate(self, task: str, candidate: Version, production: Version | None, *, max_drop: float = 0.0,
             device: str = "cpu", reporter=None, allow_missing: bool = False) -> dict:
        """Score ``candidate`` and ``production`` on the task's acceptance set (:func:`acceptance_scores`).

        Returns:
            ``{"metric", "candidate", "production" (None without one), "drop", "max_drop", "passed",
            "acceptance", "message"}``; ``passed`` is False when the drop exceeds ``max_drop`` or when
            no acceptance set is pinned (then the scores are None).

        Raises:
            RegistryError: the acceptance data changed since it was pinned, is missing, or holds images a
                version was trained on (unless ``allow_missing``, i.e. a forced promotion).
        """
        acc = self.acceptance(task)
        base = {"metric": GATE_METRIC, "candidate": None, "production": production.version if production else None,
                "candidate_score": None, "production_score": None, "drop": None, "max_drop": max_drop,
                "acceptance": acc}
        if acc is None:
            return {**base, "passed": False,
                    "message": f"task {task!r} has no acceptance set; pin one with `vpt registry set-acceptance {task} DATA`"}
        try:
            cand_score, prod_score = acceptance_scores(self.root, acc, candidate, production, device=device, reporter=reporter)
        except RegistryError as exc:
            if not allow_missing:
                raise
            return {**base, "passed": False, "message": f"no scores: {exc}"}
        drop = None if prod_score is None else round(prod_score - cand_score, 6)
        passed = drop is None or drop <= max_drop + 1e-12
        shown = (f"macro-F1 {cand_score:.4f} (version {candidate.version})" +
                 ("" if prod_score is None else f" vs {prod_score:.4f} (production version {production.version})"))
        message = (f"gate passed: {shown}" if passed else
                   f"gate refused version {candidate.version} of {task!r}: {shown}, a drop of {drop:.4f} > --max-drop {max_drop:g}")
        return {**base, "candidate": candidate.version, "candidate_score": cand_score, "production_score": prod_score,
                "drop": drop, "passed": passed, "message": message}

    # ------------------------------------------------------------------------------------ helpers

    def _store(self, src: Path, rel: str) -> str:
        """Copy ``src`` to ``root/rel`` (temporary name, fsync, rename; kept when already there with
        the same bytes). Returns the file's sha256."""
        from vptcli.digests import file_sha256

        dest = self.root / rel
        digest = file_sha256(src)
        if dest.is_file() and file_sha256(dest) == digest:
            return digest
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
        try:
            with os.fdopen(fd, "wb") as out, open(src, "rb") as fh:
                shutil.copyfileobj(fh, out, 1 << 22)
                out.flush()
                os.fsync(out.fileno())
            if file_sha256(tmp) != digest:
                raise RegistryError(f"{src}: changed while it was copied into the registry; publish again")
            os.replace(tmp, dest)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        return digest

    def _task_row(self, con: sqlite3.Connection, task: str) -> sqlite3.Row:
        row = con.execute("SELECT * FROM tasks WHERE name=?", (task,)).fetchone()
        if row is None:
            known = [r[0] for r in con.execute("SELECT name FROM tasks ORDER BY name")]
            raise RegistryError(f"{self.root}: no task {task!r} (tasks: {', '.join(known) or 'none yet'})")
        return row

    def _audit(self, con: sqlite3.Connection, action: str, task: str | None, version: int | None, detail: dict) -> None:
        prev = con.execute("SELECT hash FROM audit ORDER BY id DESC LIMIT 1").fetchone()
        entry = {"time": now(), "user": current_user(), "action": action, "task": task, "version": version,
                 "detail": json.dumps(detail, sort_keys=True, default=str), "prev_hash": prev[0] if prev else ""}
        entry["hash"] = _entry_hash(entry["prev_hash"], entry)
        con.execute(f"INSERT INTO audit({', '.join(entry)}) VALUES ({', '.join('?' * len(entry))})", tuple(entry.values()))


def parse_task_ref(value: str, flag: str) -> tuple[str, int | None]:
    """``TASK`` -> ``(TASK, None)`` (its production version); ``TASK@VERSION`` -> ``(TASK, VERSION)``.

    Raises:
        VptError: a version that is not a positive whole number (the message names ``flag``).
    """
    task, sep, version = value.partition("@")
    if not task or (sep and not (version.isascii() and version.isdigit() and int(version) >= 1)):
        raise VptError(f"{flag} {value}: give TASK (its production version) or TASK@VERSION (a version number)")
    return task, int(version) if sep else None


def open_registry(root: str | os.PathLike, create: bool = False) -> Registry:
    """:class:`Registry` at ``root`` (see its errors)."""
    return Registry(root, create=create)


def check_task_name(task: str) -> None:
    """A task name: ASCII letters and digits, ``-``, ``_``, ``.``, starting with a letter or digit (so
    it is never read as an option or a hidden name); 1-100 characters.

    Raises:
        RegistryError: another name.
    """
    ok = (0 < len(task) <= 100 and task.isascii() and task[0].isalnum()
          and all(c.isalnum() or c in "-_." for c in task))
    if not ok:
        raise RegistryError(f"task name {task!r}: start with a letter or digit, then use ASCII letters, digits, '-', "
                            "'_' or '.' (at most 100 characters)")


def images_fingerprint(records) -> str:
    """sha256 (hex) of the sorted ``class TAB pixel-sha256`` lines of ``records``: the acceptance images,
    independent of their file names and of where the folder lies."""
    lines = sorted(f"{r.label}\t{r.sha256}" for r in records)
    return hashlib.sha256("\n".join(lines).encode("utf-8")).hexdigest()


def acceptance_scores(root: Path, acc: dict, candidate: Version, production: Version | None, *,
                      device: str = "cpu", reporter=None) -> tuple[float, float | None]:
    """Macro-F1 of ``candidate`` and ``production`` (None without one) on the acceptance images, over the
    acceptance set's classes: an image of a class a model does not know counts as a miss (so a version
    that adds a class is compared fairly with one that lacks it). Scores from
    :func:`vptcli.evaluation.evaluate` (leakage refused), macro-F1 by scikit-learn.

    Raises:
        RegistryError: the acceptance data is missing or no longer matches its pinned fingerprint.
    """
    from sklearn.metrics import f1_score

    from vptcli.evaluation import evaluate, load_eval_data
    from vptcli.train_report import Reporter

    data = Path(acc["path"])
    if not data.exists():
        raise RegistryError(f"acceptance set {data} is missing; restore it or pin another one with `vpt registry set-acceptance`")
    ev = load_eval_data(data, None if _is_raw(data) else acc["split"], Reporter())
    if images_fingerprint(ev.records) != acc["fingerprint"]:
        raise RegistryError(f"acceptance set {data} changed since it was pinned (fingerprint differs); re-pin it with "
                            "`vpt registry set-acceptance` (logged) or restore it")
    classes = sorted({r.label for r in ev.records})
    scores = []
    for v in (candidate, production):
        if v is None:
            scores.append(None)
            continue
        _check_held_out(root, v, ev.records, data)
        try:
            report, _ = evaluate(v.prompt_path(root), data, split=None if ev.raw else ev.split, device=device,
                                 reporter=reporter, unknown_classes=True)
        except VptError as exc:
            if isinstance(exc, RegistryError):
                raise
            raise VptError(f"gate, version {v.version} on the acceptance set: {exc}") from None
        y = [im["true"] for im in report["images"]]
        p = [im["predicted"] for im in report["images"]]
        scores.append(round(float(f1_score(y, p, labels=classes, average="macro", zero_division=0)), 6))
    return scores[0], scores[1]


def _check_held_out(root: Path, v: Version, records, data: Path) -> None:
    """Refuse an acceptance set that shares images (pixel sha256) with the images version ``v`` was
    trained or selected on (its stored ``train_images.json``; without one, evaluation checks what it can).

    Raises:
        RegistryError: naming the number of shared images.
    """
    from vptcli.train_config import read_train_images

    try:
        listed = read_train_images(v.prompt_path(root).parent)
    except VptError as exc:
        raise RegistryError(f"{exc}; run `vpt registry verify`") from None
    if listed is None:
        return
    trained = {r.sha256 for r in listed[2]}
    shared = sum(r.sha256 in trained for r in records)
    if shared:
        raise RegistryError(f"acceptance set {data}: {shared} of {len(records)} images were used to train or select "
                            f"version {v.version} of {v.task!r} (same pixels); its score would be optimistic: pin a "
                            "held-out acceptance set with `vpt registry set-acceptance`")


def _is_raw(data: Path) -> bool:
    from vptcli.manifest import is_manifest_dir

    return not is_manifest_dir(data)


def _entry_hash(prev: str, entry: dict) -> str:
    body = json.dumps([prev, entry["time"], entry["user"], entry["action"], entry["task"], entry["version"], entry["detail"]])
    return hashlib.sha256(body.encode("utf-8")).hexdigest()


def _production_row(con: sqlite3.Connection, task: str):
    return con.execute("SELECT version FROM promotions WHERE task=? AND active=1 ORDER BY id DESC LIMIT 1", (task,)).fetchone()


def _acceptance(row) -> dict | None:
    if row["acceptance_path"] is None:
        return None
    return {"path": row["acceptance_path"], "split": row["acceptance_split"], "fingerprint": row["acceptance_fingerprint"],
            "images": row["acceptance_images"]}


def _version(row) -> Version:
    d = dict(row)
    for k in ("files", "classes", "metrics", "backbone"):
        d[k] = json.loads(d[k])
    return Version(**d)


def _check_schema(con: sqlite3.Connection, db: Path) -> None:
    row = con.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
    if row is None:
        con.execute("INSERT INTO meta(key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
    elif int(row[0]) > SCHEMA_VERSION:
        raise RegistryError(f"{db}: registry schema {row[0]} is newer than this vpt ({SCHEMA_VERSION}); upgrade vptcli")
