"""`SampleStore`: the per-benchmark jsonl of `nft-trl eval`, append-only and never rewritten in place.

A header line with the generation settings and their hash, then one line per finished problem. Records are only
appended; a file torn by a kill is repaired through a temporary copy, fsync and an atomic rename, so a kill at any
moment leaves either the old file or the repaired one (tests/test_sample_store.py kills it inside the repair).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any


logger = logging.getLogger(__name__)

SETTINGS_HASH_CHARS = 16


def settings_hash(settings: dict[str, Any]) -> str:
    """Short, order-independent hash of a JSON-serialisable settings dict."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:SETTINGS_HASH_CHARS]


class SampleStore:
    """Append-only per-benchmark jsonl: a header with the settings, then one record per finished problem.

    Records are keyed by problem id and the settings hash; a file whose header has another hash is refused. Finished
    lines are never rewritten in place: records are only appended (an append that fails is cut back to where it
    started), the file is created with its header by an atomic rename, and a file torn by an interrupted write (an
    unreadable or unterminated line) is repaired by writing the readable lines to a temporary file beside it, syncing
    it, and renaming it over the original (`replace_atomically`). A kill at any moment leaves either the old file or
    the repaired one, never less.
    """

    def __init__(self, path: str | Path, settings: dict[str, Any]):
        self.path = Path(path)
        self.settings = settings
        self.hash = settings_hash(settings)
        self.records: dict[str, dict[str, Any]] = {}
        remove_stale_temporaries(self.path)
        if self.path.exists() and self.path.stat().st_size > 0:
            self._read()
        else:
            if self.path.exists():
                logger.warning("%s is empty; starting this benchmark over.", self.path)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            header = {"type": "header", "settings_hash": self.hash, "settings": settings}
            replace_atomically(self.path, [_encode(header)])

    def _read(self) -> None:
        data = self.path.read_bytes()
        lines = data.split(b"\n")
        if lines[-1] == b"":  # the file ends with a newline: no unterminated tail
            lines.pop()
        valid: list[tuple[bytes, dict[str, Any]]] = []
        dropped = 0
        for line in lines:
            try:
                record = json.loads(line.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError):
                dropped += 1
                continue
            if isinstance(record, dict):
                valid.append((line, record))
            else:
                dropped += 1
        if not valid or valid[0][1].get("type") != "header":
            raise ValueError(f"{self.path} is not an nft-trl sample file (no header line); move it away.")
        header = valid[0][1]
        if header.get("settings_hash") != self.hash:
            old = header.get("settings", {})
            changed = sorted(k for k in set(old) | set(self.settings) if old.get(k) != self.settings.get(k))
            raise ValueError(
                f"{self.path} was written with other settings (differences in: {', '.join(changed)}). Refusing to "
                "mix them: use another --output_dir, or delete the file to start this benchmark over."
            )
        for _, record in valid[1:]:
            if record.get("settings_hash") == self.hash and "id" in record:
                self.records[record["id"]] = record
        if dropped or not data.endswith(b"\n"):
            logger.warning(
                "%s: dropping %d unreadable line(s) left by an interrupted write; rewriting the file through a "
                "temporary copy.",
                self.path,
                dropped,
            )
            replace_atomically(self.path, [line + b"\n" for line, _ in valid])
        logger.info("%s: %d finished problem(s) read back.", self.path, len(self.records))

    def add(self, records: list[dict[str, Any]]) -> None:
        for record in records:
            record["settings_hash"] = self.hash
        append_durably(self.path, b"".join(_encode(r) for r in records))
        for record in records:
            self.records[record["id"]] = record


def _encode(record: dict[str, Any]) -> bytes:
    return (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")


def append_durably(path: Path, data: bytes) -> None:
    """Append `data` to `path` and fsync it; if the write fails (disk full, a file-size limit), cut the file back to
    its previous end so that no partial line stays behind, then re-raise."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    try:
        start = os.lseek(fd, 0, os.SEEK_END)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        except BaseException:
            os.ftruncate(fd, start)  # only this process appends: what lies before `start` is finished lines
            raise
    finally:
        os.close(fd)


TEMPORARY_SUFFIX = ".tmp"


def _temporary_path(path: Path, pid: int) -> Path:
    return path.with_name(f".{path.name}.{pid}{TEMPORARY_SUFFIX}")


def replace_atomically(path: Path, chunks: Sequence[bytes]) -> None:
    """Make `path` hold `chunks` through a temporary file in the same folder: write, fsync, `os.replace`, then fsync
    the folder. Whenever this process dies, `path` is either its old content or the new one."""
    temporary = _temporary_path(path, os.getpid())
    try:
        with open(temporary, "wb") as f:
            for chunk in chunks:
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def remove_stale_temporaries(path: Path) -> None:
    """Delete temporary copies of `path` left by a process that was killed inside `replace_atomically`."""
    if not path.parent.is_dir():
        return
    prefix = f".{path.name}."
    for candidate in path.parent.iterdir():
        name = candidate.name
        if not (name.startswith(prefix) and name.endswith(TEMPORARY_SUFFIX)):
            continue
        pid = name[len(prefix) : -len(TEMPORARY_SUFFIX)]
        if pid.isdigit() and not _process_alive(int(pid)):
            logger.info("Removing %s, left by an interrupted rewrite.", candidate)
            candidate.unlink(missing_ok=True)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# ----------------------------------------------------------------------------------------------------------- scoring
