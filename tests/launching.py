"""Starting several processes from a test: a free port, a hard timeout, and torch's gloo exit race.

`run` starts a command in its own session and, when it runs past its timeout, kills it and everything it started
(`kill_launch`), so a hang fails the test instead of blocking the suite. torch's gloo backend can abort a process at interpreter exit
("terminate called without an active exception", pytorch#190489) after all its work is done; a launch that fails
only that way, with its expected output written, is run once more rather than reported as a failure of the code
under test.
"""

import contextlib
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest


GLOO_EXIT_ABORT = "terminate called without an active exception"
LAUNCH_TIMEOUT_S = 420


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(
    cmd: list[str], *, expect: Path | None = None, timeout: float = LAUNCH_TIMEOUT_S
) -> subprocess.CompletedProcess:
    """Run `cmd` offline with one thread per process; fail the test on a non-zero exit or a hang."""
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "CI": "true",
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    for attempt in (1, 2):
        process = subprocess.Popen(
            cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
        )
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_launch(process.pid)
            process.communicate()
            pytest.fail(f"launch hung for {timeout:.0f} s and was killed: {' '.join(cmd)}")
        finished = expect is None or expect.exists()
        exit_race = process.returncode != 0 and GLOO_EXIT_ABORT in stderr and finished
        if attempt == 2 or not exit_race:
            assert process.returncode == 0, (stdout[-2000:], stderr[-6000:])
            return subprocess.CompletedProcess(cmd, process.returncode, stdout, stderr)


def kill_launch(pid: int) -> None:
    """SIGKILL a launcher started with `start_new_session=True` and every process it started.

    torch's elastic agent (under `accelerate launch` and `torchrun`) starts each rank in a session of its own, so
    killing the launcher's process group alone leaves the ranks running, and with them whatever they run (a ninja
    build). The sessions of the launcher's descendants are collected while the tree is intact, then every process in
    them is killed, by pid, until none is left.
    """
    own_session = os.getsid(0)
    sessions: set[int] = set()
    for _ in range(50):
        table = _process_table()
        children: dict[int, list[int]] = {}
        for child, (parent, _, _) in table.items():
            children.setdefault(parent, []).append(child)
        tree, todo = set(), [pid]
        while todo:
            current = todo.pop()
            if current in table and current not in tree:
                tree.add(current)
                todo.extend(children.get(current, []))
        sessions |= {table[p][1] for p in tree} - {own_session}
        members = [
            p for p, (_, session, state) in table.items() if (p in tree or session in sessions) and state != "Z"
        ]
        if not members:
            return
        for member in members:
            with contextlib.suppress(ProcessLookupError):
                os.kill(member, signal.SIGKILL)
        time.sleep(0.2)


def _process_table() -> dict[int, tuple[int, int, str]]:
    """pid -> (parent pid, session id, state) of every process, from /proc."""
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        table[int(entry.name)] = (int(fields[1]), int(fields[3]), fields[0])
    return table
