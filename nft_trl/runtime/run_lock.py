"""The output folder of a run: writable before the first step, and written by one live run at a time.

`claim_output_dir` is what `NFTTrainer` calls at construction on the main process:

- it creates the folder and writes and removes a probe file in it, so that a folder that cannot be written fails now,
  naming it, instead of with a `PermissionError` at the first save, after the steps;
- it takes the run lock: an `fcntl.flock` on `<output_dir>/_nft_run.lock`, held for the trainer's life. The file holds
  the holder's pid, host, start time and command, so that a second run on the same folder fails at construction
  saying who holds it (two runs on one folder otherwise both exit 0 with interleaved checkpoints and logs).

The lock is the kernel's, not the file's existence: when the holder dies, even by `SIGKILL`, the kernel drops it and the
next run takes it, so there is no stale lock to remove by hand; the file stays behind, harmless. Its name starts with
`_`, which `Trainer.push_to_hub` leaves out of the upload.

Within one process the lock is shared: a notebook that builds a second trainer on the same folder (re-running a cell)
reuses it, and it is released when the last `RunLock` of that folder is garbage collected or `release()`d. On a file
system without `flock` support the run goes on with a warning.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import socket
import sys
import time
import weakref
from dataclasses import dataclass


logger = logging.getLogger(__name__)

#: The lock file inside the output folder (a leading `_`: `Trainer.push_to_hub` ignores it).
LOCK_FILE_NAME = "_nft_run.lock"
#: Errors of `flock` that mean "another open file holds the lock" (the others: no lock support on this file system).
_HELD_ELSEWHERE = (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES)


class OutputDirError(ValueError):
    """The output folder cannot be used: not writable, or in use by another live run. The message says what to do."""


@dataclass
class _Held:
    """The open lock file of one folder in this process (None without flock support) and its live holders."""

    fd: int | None
    holders: int = 0


# Lock file path -> this process's hold on it. flock conflicts between two open() of the same file even within one
# process, so a second trainer on the same folder must reuse the first one's descriptor rather than open its own.
_HELD: dict[str, _Held] = {}


class RunLock:
    """A hold on the run lock of `output_dir`; released when garbage collected or by `release()`."""

    def __init__(self, output_dir: str | os.PathLike):
        self.path = os.path.realpath(os.path.join(output_dir, LOCK_FILE_NAME))
        held = _HELD.get(self.path)
        if held is None:
            held = _HELD[self.path] = _Held(_lock(self.path, str(output_dir)))
        held.holders += 1
        self._finalizer = weakref.finalize(self, _release, self.path)

    def release(self) -> None:
        self._finalizer()


def _lock(path: str, output_dir: str) -> int | None:
    """Open and lock `path` (creating it) and write who holds it; `OutputDirError` when another process holds it."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as error:
        raise OutputDirError(
            f"Cannot open the run lock {path} ({error.strerror or error}). Remove that file if no run uses "
            f"output_dir {output_dir}, or give this run another output_dir."
        ) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
        if error.errno not in _HELD_ELSEWHERE:
            os.close(fd)
            logger.warning(
                "Cannot lock %s (%s): this file system has no flock support, so a second run writing the same "
                "output_dir would not be detected.",
                path,
                error.strerror,
            )
            return None
        holder = _read_holder(fd)
        os.close(fd)
        raise OutputDirError(
            f"output_dir {output_dir} is in use by another training run ({holder}; lock file {path}). Two runs "
            "writing one folder interleave their checkpoints, logs and final model. Give this run another "
            "output_dir, or wait for that run to end (or stop it)."
        ) from None
    holder = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S %z")}
    holder["command"] = " ".join(sys.argv)[:500]
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)
    return fd


def _read_holder(fd: int) -> str:
    try:
        holder = json.loads(os.pread(fd, 4096, 0).decode())
        return f"pid {holder['pid']} on host {holder['host']}, started {holder['started']}: {holder['command']}"
    except (OSError, ValueError, KeyError, TypeError):  # being written at this instant, or not ours
        return "holder unknown"


def _release(path: str) -> None:
    held = _HELD.get(path)
    if held is None:
        return
    held.holders -= 1
    if held.holders == 0:
        del _HELD[path]
        if held.fd is not None:
            os.close(held.fd)  # closing the last descriptor of the open file releases the flock


def check_writable(output_dir: str | os.PathLike) -> None:
    """Create `output_dir` and write and remove a probe file in it; `OutputDirError` naming the folder if that fails."""
    probe = os.path.join(output_dir, f"_nft_write_probe.{os.getpid()}")
    try:
        os.makedirs(output_dir, exist_ok=True)
        with open(probe, "wb") as file:
            file.write(b"probe")
        os.remove(probe)
    except OSError as error:
        raise OutputDirError(
            f"output_dir {output_dir} cannot be written ({type(error).__name__}: {error.strerror or error}), so the "
            "checkpoints and the model could not be saved. Choose a folder this user can write (--output_dir), or "
            "fix its permissions."
        ) from None


def claim_output_dir(output_dir: str | os.PathLike) -> RunLock:
    """Check that `output_dir` can be written and take its run lock (see the module docstring)."""
    check_writable(output_dir)
    return RunLock(output_dir)
