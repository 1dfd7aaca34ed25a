"""Starting several processes from a test: a free port, a hard timeout, and torch's gloo exit race.

`run` starts a command in its own process group and kills the whole group when it runs past its timeout, so a hang
fails the test instead of blocking the suite. torch's gloo backend can abort a process at interpreter exit
("terminate called without an active exception", pytorch#190489) after all its work is done; a launch that fails
only that way, with its expected output written, is run once more rather than reported as a failure of the code
under test.
"""

import os
import signal
import socket
import subprocess
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
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
            pytest.fail(f"launch hung for {timeout:.0f} s and was killed: {' '.join(cmd)}")
        finished = expect is None or expect.exists()
        exit_race = process.returncode != 0 and GLOO_EXIT_ABORT in stderr and finished
        if attempt == 2 or not exit_race:
            assert process.returncode == 0, (stdout[-2000:], stderr[-6000:])
            return subprocess.CompletedProcess(cmd, process.returncode, stdout, stderr)
