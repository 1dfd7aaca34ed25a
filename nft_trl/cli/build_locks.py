"""Stale build locks of torch C++ extensions: found and cleared before DeepSpeed on CPU builds its ops.

DeepSpeed on its CPU accelerator compiles C++ ops with `torch.utils.cpp_extension` the first time they are used:
`deepspeed_shm_comm` whenever its communication backend starts (every ZeRO run), `cpu_adam` (or `cpu_adagrad`,
`cpu_lion`) when an optimizer is offloaded to CPU. torch guards each build with a `FileBaton`: the empty file `lock` in
the op's build directory (`$TORCH_EXTENSIONS_DIR/<op>/`, else `~/.cache/torch_extensions/py<ver>_cpu/<op>/`), created
with `O_EXCL` by the building process, held open by it, and deleted when the build ends. Every other process polls
until the file is gone, with no timeout and no message. A build killed with SIGKILL (a timeout, the OOM killer) leaves
the file behind, and every later run waits on it forever.

A lock is stale when nothing builds under it:

- no process has the lock file open (the builder keeps the descriptor of its `O_EXCL` open until it releases), and no
  process works inside the build directory (torch runs ninja, and ninja the compiler, with that folder as cwd; a
  builder killed mid-compilation can leave them running);
- and it is at least `min_age_s` old. That covers builders this process cannot see: in another PID namespace sharing
  the folder, or more privileged than it (a container's init, whose `/proc` entries it may not read). A younger lock
  without a visible holder is watched until it reaches that age, or goes, or a holder shows.

A stale lock is deleted, with a warning naming it. Deleting loses nothing: torch's build is a ninja build, which
reruns every step that did not finish. A lock that cannot be judged (owned by another user, whose processes may be
hidden, or no `/proc`) is left in place with a warning that names the file and the fix. The check and the deletion
run under an exclusive `flock` of the build directory, so the processes of one launch, which all check at once,
cannot delete a lock that one of them has just taken for a real build.

This runs only for DeepSpeed on a machine without GPUs (`nft_trl.cli.train.cpu_rehearsal_defaults`), where every
builder is on this machine. On a GPU cluster the extensions folder may be shared between nodes, whose builders no
`/proc` here can see.
"""

from __future__ import annotations

import fcntl
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path


logger = logging.getLogger(__name__)

LOCK_NAME = "lock"
#: A lock without a visible holder is deleted once it is this old (seconds since it was created).
STALE_LOCK_MIN_AGE_S = 60.0
POLL_S = 1.0
PROC = Path("/proc")


def extensions_root() -> Path:
    """The folder that holds one build directory per op, as `torch.utils.cpp_extension` picks it."""
    root = os.environ.get("TORCH_EXTENSIONS_DIR")
    if root:
        return Path(root)
    import torch
    from torch.utils.cpp_extension import get_default_build_root

    if torch.version.hip is not None:
        accelerator = f"rocm{torch.version.hip.replace('.', '')}"
    elif torch.version.cuda is not None:
        accelerator = f"cu{torch.version.cuda.replace('.', '')}"
    else:
        accelerator = "cpu"
    python = f"py{sys.version_info.major}{sys.version_info.minor}{getattr(sys, 'abiflags', '')}"
    return Path(get_default_build_root()) / f"{python}_{accelerator}"


@dataclass
class LockState:
    """What is known about one build lock: its age, the processes that build under it, whether all could be seen."""

    path: Path
    age_s: float
    identity: tuple[int, int]  # (device, inode): tells the lock that was judged from one created since
    holders: dict[int, str] = field(default_factory=dict)  # pid -> why: "has the lock open" or "works in <dir>"
    unjudgeable: str | None = None  # why the holders cannot be looked for, if so
    hidden: list[int] = field(default_factory=list)  # processes this one may not inspect

    def describe_holders(self) -> str:
        return ", ".join(f"pid {pid} ({_command(pid)}) {why}" for pid, why in sorted(self.holders.items()))


def inspect_lock(lock: Path) -> LockState | None:
    """The state of `lock`, or `None` when it does not exist."""
    try:
        stat = lock.stat()
    except FileNotFoundError:
        return None
    state = LockState(lock, age_s=max(0.0, time.time() - stat.st_mtime), identity=(stat.st_dev, stat.st_ino))
    if not PROC.is_dir():
        state.unjudgeable = "there is no /proc to look for the process that builds under it"
        return state
    if stat.st_uid != os.geteuid() and os.geteuid() != 0:
        state.unjudgeable = f"it belongs to another user (uid {stat.st_uid}), whose processes may be hidden from us"
        return state
    lock_path = os.path.realpath(lock)
    directory = os.path.dirname(lock_path)
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        try:
            cwd = os.readlink(entry / "cwd")
            if cwd == directory or cwd.startswith(directory + os.sep):
                state.holders[pid] = f"works in {cwd}"
                continue
            for fd in (entry / "fd").iterdir():
                if os.readlink(fd) == lock_path:
                    state.holders[pid] = "has the lock open"
                    break
        except (FileNotFoundError, ProcessLookupError, NotADirectoryError):
            continue  # the process ended while we looked
        except PermissionError:
            state.hidden.append(pid)  # more privileged than us (a container's init): the lock's age covers it
    return state


def clear_stale_build_locks(
    root: str | Path | None = None, *, min_age_s: float = STALE_LOCK_MIN_AGE_S, poll_s: float = POLL_S
) -> list[Path]:
    """Delete the build locks under `root` (default: `extensions_root()`) that no build holds; return their paths.

    A lock younger than `min_age_s` without a visible holder is watched (every `poll_s` seconds) until it goes, a
    holder shows, or it reaches that age. Locks held by a build are left for DeepSpeed to wait on, and locks that
    cannot be judged are left with a warning that names them.
    """
    root = Path(root) if root is not None else extensions_root()
    if not root.is_dir():
        return []
    removed = []
    for lock in sorted(root.glob(f"*/{LOCK_NAME}")):
        if _clear_if_stale(lock, min_age_s=min_age_s, poll_s=poll_s):
            removed.append(lock)
    return removed


def _clear_if_stale(lock: Path, *, min_age_s: float, poll_s: float) -> bool:
    announced = False
    while True:
        with _exclusive(lock.parent):
            state = inspect_lock(lock)
            if state is None:
                return False
            if state.unjudgeable:
                logger.warning(
                    "Found the torch extension build lock %s (%.0f s old) and cannot tell whether a build holds it: "
                    "%s. If DeepSpeed then waits without end, no build is running: delete that file (rm %s).",
                    lock,
                    state.age_s,
                    state.unjudgeable,
                    lock,
                )
                return False
            if state.holders:
                log = logger.warning if state.age_s >= min_age_s else logger.info
                log(
                    "The torch extension build lock %s (%.0f s old) is held by a running build: %s. DeepSpeed waits "
                    "for it to finish.",
                    lock,
                    state.age_s,
                    state.describe_holders(),
                )
                return False
            if state.age_s >= min_age_s:
                if _identity(lock) == state.identity:
                    lock.unlink()
                    logger.warning(
                        "Deleted the stale torch extension build lock %s (%.0f s old, no process builds under it: "
                        "an interrupted build left it%s). Without this, DeepSpeed would wait on it forever; the "
                        "build reruns what did not finish.",
                        lock,
                        state.age_s,
                        f"; {len(state.hidden)} process(es) could not be inspected" if state.hidden else "",
                    )
                    return True
                continue  # replaced while we looked: judge the new one
        if not announced:
            logger.warning(
                "The torch extension build lock %s is %.0f s old and no process builds under it; watching it until "
                "it is %.0f s old before deleting it as stale.",
                lock,
                state.age_s,
                min_age_s,
            )
            announced = True
        time.sleep(min(poll_s, min_age_s - state.age_s))


class _exclusive:
    """An exclusive `flock` of a directory, serialising the judges of its lock across processes."""

    def __init__(self, directory: Path):
        self.directory = directory

    def __enter__(self):
        self.fd = os.open(self.directory, os.O_RDONLY)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        os.close(self.fd)  # closing the descriptor releases the flock


def _identity(lock: Path) -> tuple[int, int] | None:
    try:
        stat = lock.stat()
    except FileNotFoundError:
        return None
    return stat.st_dev, stat.st_ino


def _command(pid: int) -> str:
    try:
        return (PROC / str(pid) / "comm").read_text().strip()
    except OSError:
        return "?"
