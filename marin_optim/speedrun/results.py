"""The files a run leaves behind, written so that a failed run never clobbers a good one.

``metrics.partial.jsonl`` grows while the run trains (one row per step, one per evaluation);
only a run that finishes writes, each through a temporary file and an atomic rename,
``loss_curve.png``, ``metrics.jsonl``, ``config.yaml`` and, last, ``results.json`` (Marin's
speedrun layout: ``{"runs": [{"run_info": {...}}]}``).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

from marin_optim.errors import ConfigError

RESULTS = "results.json"
METRICS = "metrics.jsonl"
PARTIAL_METRICS = "metrics.partial.jsonl"
CONFIG = "config.yaml"
PLOT = "loss_curve.png"
CHECKPOINTS = "checkpoints"


def make_dir(path: str | Path, field: str, value: str | Path | None = None, *, keep: bool = True) -> Path:
    """``path`` made a directory (with its parents) where it is not one, or a one-line
    ``ConfigError`` naming ``field`` (and its ``value``, by default ``path``) where it cannot be (a
    file in the way, no permission, a read-only file system): the check a command runs on its
    output directory before anything heavy, so a run cannot train and then fail to write its
    results. With ``keep=False`` the directories it made are removed again (a check that leaves
    nothing behind)."""
    p = Path(path)
    given = f"{field}={str(path if value is None else value)!r}"
    where = "" if value is None else f" {p}"
    if p.exists() and not p.is_dir():
        raise ConfigError(f"{given}:{where}{' is' if where else ''} a file, not a directory")
    missing = [d for d in (p, *p.parents) if not d.exists()]
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"{given}: cannot create the directory{where} ({e.strerror or e})") from None
    writable = os.access(p, os.W_OK | os.X_OK)
    if not keep:
        for d in missing:  # deepest first
            with contextlib.suppress(OSError):
                d.rmdir()
    if not writable:
        raise ConfigError(f"{given}: the directory{where} is not writable")
    return p


def write_atomic(path: str | Path, data: bytes | str) -> None:
    """Writes ``data`` to a temporary file beside ``path`` and renames it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = data.encode() if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the usual permissions
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value


def dumps(obj: Any) -> str:
    return json.dumps(jsonable(obj), indent=2, sort_keys=True)


def write_results(run_dir: str | Path, run_info: dict[str, Any]) -> Path:
    path = Path(run_dir) / RESULTS
    write_atomic(path, dumps({"runs": [{"run_info": run_info}]}) + "\n")
    return path


def read_results(run_dir: str | Path) -> dict[str, Any]:
    """The ``run_info`` of a finished run's ``results.json``."""
    data = json.loads((Path(run_dir) / RESULTS).read_text())
    return data["runs"][0]["run_info"]


class MetricsLog:
    """Appends JSON rows to ``metrics.partial.jsonl``; ``finish()`` publishes it as ``metrics.jsonl``."""

    def __init__(self, run_dir: str | Path, enabled: bool = True):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / PARTIAL_METRICS
        self.enabled = enabled
        self._file = None

    def open(self, keep_up_to_step: int | None) -> list[dict[str, Any]]:
        """Opens for appending; with ``keep_up_to_step`` (a resume) drops rows of later steps and
        returns the rows kept, else starts empty. A resume reads the unfinished file, or, where
        the run had published it (a finished run extended, a kill before ``results.json``), the
        published one."""
        rows: list[dict[str, Any]] = []
        if not self.enabled:
            return rows
        self.run_dir.mkdir(parents=True, exist_ok=True)
        source = self.path if self.path.exists() else self.run_dir / METRICS
        if keep_up_to_step is not None and source.exists():
            for line in source.read_text().splitlines():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut short by a kill
                if row.get("step", math.inf) <= keep_up_to_step:
                    rows.append(row)
        write_atomic(self.path, "".join(json.dumps(jsonable(r)) + "\n" for r in rows))
        self._file = self.path.open("a")
        return rows

    def write(self, row: dict[str, Any]) -> None:
        if self._file is not None:
            self._file.write(json.dumps(jsonable(row)) + "\n")
            self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def finish(self) -> Path:
        self.close()
        final = self.run_dir / METRICS
        if self.enabled:
            os.replace(self.path, final)
        return final


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    rows = []
    for line in Path(path).read_text().splitlines():
        if line.strip():
            rows.append(json.loads(line))
    return rows
