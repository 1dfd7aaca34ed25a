"""The verifier's worker processes: none outlives its trainer, and a batch deadline bounds what pathological answers cost.

Faults are real: a trainer-like child process is killed (SIGKILL, SIGTERM, SIGINT) while its workers are deep in
SymPy, and the test walks /proc for anything of that process tree left alive. Pathological answers are real too
(power towers SymPy never finishes evaluating).
"""

import json
import logging
import math
import os
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from nft_trl import make_math_verifier
from nft_trl.rewards.pool import VerifierPool


LINUX_PROC = Path("/proc/self/stat").exists()
# Seconds the workers of a killed trainer may take to be gone (they go in milliseconds; the host may be busy).
GONE_WITHIN_S = 10.0


def tower(base: int) -> str:
    """A boxed power tower: SymPy tries to evaluate it and never returns (CPU and memory keep growing)."""
    return rf"\boxed{{{base}^{{{base}^{{{base}^{{{base}}}}}}}}}"


# A trainer-like process: starts a verifier and grades one tower per worker, each against its own gold so that every
# worker gets one; once all workers are busy it prints the pids of its workers, then waits to be killed.
TRAINER = r"""
import json, math, os, sys, threading, time
import nft_trl.rewards.pool as pool_module
from nft_trl.rewards.verifier import make_math_verifier

workers, where, pdeathsig = int(sys.argv[1]), sys.argv[2], sys.argv[3] == "1"
pool_module.TIE_WORKERS_WITH_PDEATHSIG = pdeathsig
verifier = make_math_verifier(timeout=300.0, batch_timeout=math.inf, workers=workers)
pool = pool_module.get_default_pool(workers)
towers = [r"\boxed{%d^{%d^{%d^{%d}}}}" % ((9 - i,) * 4) for i in range(workers)]

def report():
    while True:
        busy = [w for w in list(pool._pool) if w.state == "busy" and w.executor_pid]
        if len(busy) == workers:
            break
        time.sleep(0.02)
    time.sleep(0.5)  # let them get deep into SymPy
    pids = {"trainer": os.getpid(), "supervisors": [w.process.pid for w in busy], "executors": [w.executor_pid for w in busy]}
    print(json.dumps(pids), flush=True)

threading.Thread(target=report, daemon=True).start()
grade = lambda: verifier(towers, solution=[str(i) for i in range(workers)])
if where == "thread":
    thread = threading.Thread(target=grade)
    thread.start()
    thread.join()
else:
    grade()
"""


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, session id) of a process, or None if there is no such process."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = text[text.rindex(")") + 2 :].split()  # after "pid (comm) "
    return fields[0], int(fields[3])


def tree_alive(pids: dict) -> list[int]:
    """Live processes of a trainer's verifier: the pids it reported, and anything in its supervisors' sessions
    (each supervisor leads its own session; its executors, replaced ones included, inherit it). Zombies are dead."""
    known = {pids["trainer"], *pids["supervisors"], *pids["executors"]}
    sessions = set(pids["supervisors"])
    alive = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        stat = _stat(pid)
        if stat is None or stat[0] in ("Z", "X"):
            continue
        if pid in known or stat[1] in sessions:
            alive.append(pid)
    return sorted(alive)


def start_trainer(workers: int, where: str = "main", pdeathsig: bool = True) -> tuple[subprocess.Popen, dict]:
    child = subprocess.Popen(
        [sys.executable, "-c", TRAINER, str(workers), where, "1" if pdeathsig else "0"],
        stdout=subprocess.PIPE,
        text=True,
        # SIGINT as a terminal delivers it: a test run as a background job of a script inherits it ignored.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    ready, _, _ = select.select([child.stdout], [], [], 180)
    line = child.stdout.readline() if ready else ""
    if not line:
        child.kill()
        child.wait()
        pytest.fail("the trainer process never reported its busy workers")
    return child, json.loads(line)


def kill_and_count(sig: int, workers: int = 2, where: str = "main", pdeathsig: bool = True) -> tuple[list[int], float]:
    """Start a trainer, send it `sig` while its workers are busy, and return what of its tree is left (after up to
    GONE_WITHIN_S) and how long it took to go."""
    child, pids = start_trainer(workers, where, pdeathsig)
    assert _stat(pids["executors"][0]) is not None
    start = time.monotonic()
    os.kill(child.pid, sig)
    try:
        child.wait(timeout=60)
        left = tree_alive(pids)
        while left and time.monotonic() - start < GONE_WITHIN_S:
            time.sleep(0.05)
            left = tree_alive(pids)
        return left, time.monotonic() - start
    finally:
        for pid in tree_alive(pids):  # never leave a failed test's orphans behind
            os.kill(pid, signal.SIGKILL)
        if child.poll() is None:
            child.kill()
            child.wait()


needs_proc = pytest.mark.skipif(not LINUX_PROC, reason="walks /proc (Linux)")


@needs_proc
@pytest.mark.parametrize(
    "sig, where",
    [(signal.SIGKILL, "main"), (signal.SIGTERM, "main"), (signal.SIGINT, "main"), (signal.SIGKILL, "thread")],
    ids=["SIGKILL", "SIGTERM", "SIGINT", "SIGKILL-pool-used-from-a-thread"],
)
def test_no_worker_outlives_its_trainer(sig, where):
    left, seconds = kill_and_count(sig, where=where)
    print(f"\n[{signal.Signals(sig).name}, {where}] processes left: {len(left)}; tree gone after {seconds:.2f} s")
    assert left == []


@needs_proc
def test_parent_pid_watchdog_alone_ends_the_workers():
    """Without PR_SET_PDEATHSIG (as on macOS), each supervisor notices its parent is gone and ends its executor."""
    left, seconds = kill_and_count(signal.SIGKILL, pdeathsig=False)
    print(f"\n[SIGKILL, watchdog only] processes left: {len(left)}; tree gone after {seconds:.2f} s")
    assert left == []


def test_workers_started_from_a_thread_outlive_that_thread():
    """PR_SET_PDEATHSIG fires when the *thread* that forked a worker ends: workers started while the pool is used
    from a short-lived thread must live on for the next call."""
    pool = VerifierPool(1)
    try:
        thread = threading.Thread(target=pool.run, args=([(r"\boxed{x}", [r"\boxed{x}"])], 30.0))
        thread.start()
        thread.join()
        supervisor = pool._pool[0].process
        time.sleep(0.5)
        assert supervisor.poll() is None, f"the worker died with the thread that started it ({supervisor.poll()})"
        assert pool.run([(r"\boxed{y}", [r"\boxed{y}"])], 30.0)[0].verdicts == [True]
        assert pool._pool[0].process is supervisor
    finally:
        pool.close()


# ---------------------------------------------------------------------------------------------------------------
# The batch deadline
# ---------------------------------------------------------------------------------------------------------------

# Per-answer timeout in these tests: without a batch deadline, each tower would hold its worker this long.
LONG_TIMEOUT_S = 30.0
DEADLINE_S = 2.0
# Right answers that need SymPy (none is settled by the fast path), each against its own gold.
RIGHT = {
    "(x+1)^2": r"\boxed{x^2 + 2x + 1}",
    r"\frac{\sqrt{2}}{2}": r"\boxed{\frac{1}{\sqrt{2}}}",
    "[0, 1)": r"\boxed{[0,1)}",
    r"\{1, 2\}": r"\boxed{\{2, 1\}}",
    "2\\sqrt{3}": r"\boxed{\sqrt{12}}",
    "x^2 - 1": r"\boxed{(x-1)(x+1)}",
}


def executors_alive(pids) -> list[int]:
    return [pid for pid in pids if (stat := _stat(pid)) is not None and stat[0] not in ("Z", "X")]


def test_batch_deadline_grades_the_unverified_answers_wrong_and_replaces_their_workers(caplog):
    verifier = make_math_verifier(timeout=LONG_TIMEOUT_S, batch_timeout=DEADLINE_S, workers=2)
    assert verifier([r"\boxed{x}"], solution=["x"]) == [1.0]  # workers started (start-up is not in the deadline)
    from nft_trl.rewards.pool import get_default_pool

    pool = get_default_pool(2)
    # Four towers against one gold: one piece, taken by one worker, where they would cost 4 x 30 s one after the
    # other; the other worker grades the right answers.
    towers = [tower(base) for base in (9, 8, 7, 6)]
    completions = list(RIGHT.values()) + towers
    solutions = list(RIGHT) + ["5"] * len(towers)
    executors_before = [worker.executor_pid for worker in pool._pool]
    start = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="nft_trl.rewards.verifier"):
        rewards = verifier(completions, solution=solutions)
    seconds = time.monotonic() - start
    print(f"\n[deadline {DEADLINE_S} s] the call took {seconds:.2f} s; unverified {verifier.counts.last_unverified}")
    assert rewards == [1.0] * len(RIGHT) + [0.0] * len(towers)
    assert seconds < 3 * DEADLINE_S  # without the deadline: 4 x 30 s
    assert verifier.counts.last_unverified == len(towers)
    assert verifier.counts.cut_batches == 1 and verifier.counts.unverified == len(towers)
    warnings = [record.getMessage() for record in caplog.records if "batch deadline" in record.getMessage()]
    assert len(warnings) == 1 and f"{len(towers)} of {len(completions)} answers" in warnings[0], warnings
    # The executor that was on a tower is gone (not left computing), and the pool works at once.
    if LINUX_PROC:
        deadline = time.monotonic() + GONE_WITHIN_S
        while len(executors_alive(executors_before)) > 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(executors_alive(executors_before)) <= 1
    assert verifier([r"\boxed{\frac{6}{4}}", r"\boxed{x+x}"], solution=["1.5", "2x"]) == [1.0, 1.0]
    assert verifier.counts.last_unverified == 0 and verifier.counts.unverified == len(towers)


def test_answers_of_a_gold_the_deadline_never_reached_are_wrong_not_unscored():
    """With one worker stuck on a tower, the other golds are never parsed: their answers sent to SymPy are graded
    0.0 (wrong; None would mean unscored), while answers settled without SymPy keep their verdict."""
    verifier = make_math_verifier(timeout=LONG_TIMEOUT_S, batch_timeout=DEADLINE_S, workers=1)
    assert verifier([r"\boxed{x}"], solution=["x"]) == [1.0]
    completions = [tower(9), tower(8), r"\boxed{x^2 + 2x + 1}", r"\boxed{(x+1)^2}", r"\boxed{7}", r"\boxed{6}"]
    solutions = ["5", "5", "(x+1)^2", "(x+1)^2", "7", "7"]
    rewards = verifier(completions, solution=solutions)
    assert rewards == [0.0, 0.0, 0.0, 1.0, 1.0, 0.0]
    assert verifier.counts.last_unverified == 3  # two towers and the expanded square
    assert verifier([r"\boxed{x^2 + 2x + 1}"], solution=["(x+1)^2"]) == [1.0]


def test_batch_timeout_settings():
    assert make_math_verifier().batch_deadline(verifications=100, workers=2) == 5.0 + 5.0 + 0.05 * 100 / 2
    assert make_math_verifier(batch_timeout=3.0).batch_deadline(verifications=10**6, workers=1) == 3.0
    assert make_math_verifier(batch_timeout=math.inf).batch_deadline(verifications=1, workers=1) == math.inf
    for bad in (0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="batch_timeout"):
            make_math_verifier(batch_timeout=bad)
