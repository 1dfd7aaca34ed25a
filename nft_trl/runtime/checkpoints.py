"""Crash-consistent checkpoints: a checkpoint counts only once a completion marker says every file of it is written.

transformers writes a checkpoint folder file by file (weights, optimizer, scheduler, RNG, trainer state) and then
deletes old ones. A kill, a signal or a full disk in between leaves a folder that `get_last_checkpoint` happily picks,
and the resume crashes on it (or, worse, resumes without part of the state). Here:

- after every file of a checkpoint is written (NFT's own state included), the main process flushes them to disk and
  writes `MARKER` atomically (temporary file, fsync, rename, fsync of the folder); the marker lists each file and its
  size, so a file cut short afterwards is noticed too;
- `newest_complete` is what `resume_from_checkpoint=True` resumes from: the newest folder whose marker checks out; the
  incomplete ones it passes over are returned so the caller can name them;
- `rotate` deletes old checkpoints only after a newer one is complete, removing each one's marker first, so a kill
  while deleting never leaves a folder that looks complete.

Pure file-system functions: no torch, no accelerator.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any


#: The file whose presence (and agreement with the folder) makes a checkpoint complete.
MARKER = "nft_checkpoint_complete.json"
MARKER_VERSION = 1
_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")


def checkpoint_step(path: str | os.PathLike) -> int | None:
    """The step of a `checkpoint-<step>` folder, or None for any other name."""
    match = _CHECKPOINT_RE.match(Path(path).name)
    return int(match.group(1)) if match else None


def list_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """Every `checkpoint-<step>` folder of `output_dir`, oldest step first."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.is_dir() and checkpoint_step(p) is not None]
    return sorted(found, key=checkpoint_step)


def fsync_path(path: str | os.PathLike) -> None:
    """Flush a file, or a folder's entries, to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write `text` to `path` so that a reader sees either the old file or the whole new one, never a torn one."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_path(path.parent)


def read_json_state(path: str | os.PathLike, what: str) -> Any:
    """Read a JSON state file of a checkpoint; a missing or unreadable one is an error that names it."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{what} is missing from the checkpoint: {path} does not exist. This checkpoint was not saved with the "
            "same settings (or not by this version of nft-trl); resume with the settings it was saved with, or start "
            "a new run."
        ) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(
            f"{what} in {path} is not valid JSON ({err}); the file is damaged. Resume from an earlier checkpoint "
            "(pass its folder as resume_from_checkpoint) or start a new run."
        ) from err


def _files_of(folder: Path) -> dict[str, int]:
    """Every file below `folder` (relative path -> size), the marker and temporary files left out."""
    files = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.name != MARKER and not path.name.endswith(".tmp"):
            files[path.relative_to(folder).as_posix()] = path.stat().st_size
    return files


def mark_complete(folder: str | os.PathLike, *, step: int) -> None:
    """Flush every file of the checkpoint to disk, then write its marker atomically (the last write of a save)."""
    folder = Path(folder)
    files = _files_of(folder)
    for name in files:
        fsync_path(folder / name)
    for sub in {folder / name for name in files}:
        fsync_path(sub.parent)
    record = {"version": MARKER_VERSION, "step": step, "files": files}
    atomic_write_text(folder / MARKER, json.dumps(record, indent=1))


def unmark(folder: str | os.PathLike) -> None:
    """Make a checkpoint incomplete (before deleting or rewriting it)."""
    folder = Path(folder)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(folder / MARKER)
        fsync_path(folder)


def incomplete_reason(folder: str | os.PathLike) -> str | None:
    """None when the checkpoint is complete, else why not (in words, for a log line or an error)."""
    folder = Path(folder)
    marker = folder / MARKER
    if not marker.exists():
        return f"no {MARKER}: its save was interrupted (or it was written by a version of nft-trl without markers)"
    try:
        record = json.loads(marker.read_text())
        files = record["files"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        return f"its {MARKER} is damaged ({err})"
    for name, size in files.items():
        path = folder / name
        if not path.exists():
            return f"{name} is missing"
        actual = path.stat().st_size
        if actual != size:
            return f"{name} has {actual} bytes, {size} were written"
    return None


@dataclass
class Skipped:
    path: Path
    reason: str

    def __str__(self) -> str:
        return f"{self.path.name} ({self.reason})"


def newest_complete(output_dir: str | os.PathLike) -> tuple[Path | None, list[Skipped]]:
    """The newest complete checkpoint of `output_dir` and the newer, incomplete ones passed over (newest first)."""
    skipped = []
    for folder in reversed(list_checkpoints(output_dir)):
        reason = incomplete_reason(folder)
        if reason is None:
            return folder, skipped
        skipped.append(Skipped(folder, reason))
    return None, skipped


def remove_checkpoint(folder: str | os.PathLike) -> None:
    """Delete a checkpoint folder, its marker first, so that a kill midway never leaves it looking complete."""
    unmark(folder)
    shutil.rmtree(folder, ignore_errors=True)


def rotate(
    output_dir: str | os.PathLike, keep: int | None, protect: tuple[str | os.PathLike | None, ...] = ()
) -> list[Path]:
    """Keep the `keep` newest complete checkpoints (and those in `protect`); delete the older ones, and every
    incomplete folder older than the newest complete one (it can never be resumed). Returns what was deleted.

    `keep` None or <= 0 deletes nothing but the incomplete leftovers.
    """
    folders = list_checkpoints(output_dir)
    complete = [f for f in folders if incomplete_reason(f) is None]
    if not complete:
        return []
    newest_step = checkpoint_step(complete[-1])
    protected = {Path(p).resolve() for p in protect if p}
    deleted = []
    stale = [f for f in folders if f not in complete and checkpoint_step(f) < newest_step]
    old = complete[:-keep] if keep and keep > 0 else []
    for folder in stale + old:
        if folder.resolve() in protected:
            continue
        remove_checkpoint(folder)
        deleted.append(folder)
    return deleted
