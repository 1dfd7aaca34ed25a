"""Stale torch-extension build locks (`nft_trl.cli.build_locks`): real processes, a temporary TORCH_EXTENSIONS_DIR.

A lock that no process holds is deleted; a lock held by a live build is left alone, whether the build shows as a
process working in the build directory (ninja, the compiler) or as the process that has the lock open (torch's
`FileBaton`); a builder killed with SIGKILL leaves a lock that is then cleared. Nothing here touches the real cache.
"""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from nft_trl.cli.build_locks import clear_stale_build_locks, extensions_root, inspect_lock


OP = "deepspeed_shm_comm"
HOUR = 3600.0


@pytest.fixture
def extensions(tmp_path, monkeypatch):
    """A temporary TORCH_EXTENSIONS_DIR with one op's build directory."""
    root = tmp_path / "torch_extensions"
    (root / OP).mkdir(parents=True)
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(root))
    assert extensions_root() == root
    return root


def make_lock(root, age_s: float = HOUR):
    lock = root / OP / "lock"
    lock.touch()
    then = time.time() - age_s
    os.utime(lock, (then, then))
    return lock


def start(cmd, **kwargs) -> subprocess.Popen:
    process = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, **kwargs)
    assert process.stdout.readline().strip() == "ready"
    return process


def stop(process: subprocess.Popen) -> None:
    process.kill()
    process.wait()


def test_lock_that_no_process_holds_is_deleted(extensions, caplog):
    lock = make_lock(extensions)
    state = inspect_lock(lock)
    assert state.holders == {} and state.unjudgeable is None and state.age_s >= HOUR - 60
    assert clear_stale_build_locks() == [lock]
    assert not lock.exists() and (extensions / OP).is_dir()
    assert "Deleted the stale torch extension build lock" in caplog.text and str(lock) in caplog.text
    assert clear_stale_build_locks() == []  # nothing left to do


def test_lock_of_a_process_working_in_the_build_directory_is_left_alone(extensions, caplog):
    lock = make_lock(extensions)
    ninja = subprocess.Popen(["sleep", "30"], cwd=extensions / OP)  # what a live build looks like: ninja's cwd
    try:
        assert inspect_lock(lock).holders == {ninja.pid: f"works in {extensions / OP}"}
        assert clear_stale_build_locks() == []
        assert lock.exists()
        assert f"pid {ninja.pid} (sleep) works in" in caplog.text
    finally:
        stop(ninja)
    assert clear_stale_build_locks() == [lock] and not lock.exists()


def test_lock_of_a_live_file_baton_is_left_alone_and_cleared_after_sigkill(extensions):
    """torch's own FileBaton takes the lock in a child that works elsewhere; SIGKILL leaves it behind."""
    lock = extensions / OP / "lock"
    holder_code = textwrap.dedent(
        f"""
        import time
        from torch.utils.file_baton import FileBaton
        assert FileBaton({str(lock)!r}).try_acquire()
        print("ready", flush=True)
        time.sleep(60)
        """
    )
    builder = start([sys.executable, "-c", holder_code], cwd=extensions)
    try:
        os.utime(lock, (time.time() - HOUR, time.time() - HOUR))  # old enough that only a holder keeps it
        assert inspect_lock(lock).holders == {builder.pid: "has the lock open"}
        assert clear_stale_build_locks() == [] and lock.exists()
    finally:
        os.kill(builder.pid, signal.SIGKILL)
        builder.wait()
    assert builder.returncode == -signal.SIGKILL and lock.exists()  # what an interrupted build leaves
    assert clear_stale_build_locks() == [lock] and not lock.exists()


def test_young_lock_is_watched_until_old_enough(extensions, caplog):
    lock = make_lock(extensions, age_s=0.0)
    assert clear_stale_build_locks(min_age_s=1.0, poll_s=0.1) == [lock]
    assert "watching it until it is 1 s old" in caplog.text and not lock.exists()


def test_young_lock_released_while_watched_is_not_an_error(extensions):
    lock = make_lock(extensions, age_s=0.0)
    code = f"import os, time; print('ready', flush=True); time.sleep(0.5); os.remove({str(lock)!r})"
    releaser = start([sys.executable, "-c", code])
    try:
        assert clear_stale_build_locks(min_age_s=30.0, poll_s=0.1) == []
    finally:
        releaser.wait(timeout=30)
    assert not lock.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU rehearsal path runs only without GPUs")
def test_training_script_clears_the_lock_before_deepspeed(extensions, monkeypatch, caplog):
    """The training script's entry point (`parse_args`, through `cpu_rehearsal_defaults`) clears a stale lock when
    accelerate has started it with DeepSpeed on a machine without GPUs, and only then. (A real ZeRO launch after a
    killed build: tests/test_zero3.py.)"""
    from nft_trl.cli.train import cpu_rehearsal_defaults

    lock = make_lock(extensions)
    monkeypatch.delenv("ACCELERATE_USE_DEEPSPEED", raising=False)
    assert cpu_rehearsal_defaults() == {} and lock.exists()
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    assert cpu_rehearsal_defaults() == {"use_cpu": True}
    assert not lock.exists() and f"Deleted the stale torch extension build lock {lock}" in caplog.text


def test_lock_that_cannot_be_judged_is_left_with_the_fix(extensions, monkeypatch, caplog):
    """Without a /proc to search (here: pointed at an empty folder), a lock is never deleted; the warning names it."""
    from nft_trl.cli import build_locks

    monkeypatch.setattr(build_locks, "PROC", extensions / "no-proc-here")
    lock = make_lock(extensions)
    assert clear_stale_build_locks() == [] and lock.exists()
    assert "cannot tell whether a build holds it" in caplog.text and f"rm {lock}" in caplog.text
