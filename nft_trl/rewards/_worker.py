"""Worker process for :mod:`nft_trl.rewards.pool`: runs math-verify's SymPy step where it can be killed.

This file is started as a script (``python -P _worker.py TASK_FD RESULT_FD PARENT_PID PDEATHSIG``), never imported
from the ``nft_trl`` package, so a worker imports only the standard library and math-verify (SymPy,
latex2sympy2_extended), never torch or the trainer's ``__main__``. It is written to be safe to start from any thread
of any process.

Two levels of process:

- the *supervisor* (this script's main process) imports math-verify once and warms SymPy up (``WARMUP_PAIRS``), then
  forks an *executor* and waits; it is single-threaded, so forking it is safe;
- the *executor* reads units of work from ``TASK_FD`` and writes verdicts to ``RESULT_FD``, caching parsed golds and
  answers. Its first message is ``("ready", pid)`` so the parent can ``SIGKILL`` it when a verification exceeds its
  timeout. When an executor dies (killed, or crashed in SymPy/ANTLR), the supervisor forks a fresh one in a few
  milliseconds, with math-verify already imported; a new ``ready`` while a unit is in flight tells the parent that the
  executor crashed. An executor exits cleanly (status 0) when the parent closes ``TASK_FD`` (or dies); the supervisor
  then exits.

Neither level outlives the parent, whatever ends it (``SIGKILL`` included), even while an executor is stuck in SymPy:

- each process, right after it starts, asks the kernel to ``SIGKILL`` it when its parent ends (Linux
  ``PR_SET_PDEATHSIG``, when ``PDEATHSIG`` is 1), then checks that its parent is still ``PARENT_PID`` (resp. the
  supervisor), closing the race with a parent that ended before the request took effect;
- the supervisor also looks at its parent's pid every ``WATCHDOG_INTERVAL_S`` while an executor runs, and when it
  changed (the parent ended: we were reparented) kills the executor and exits: the second line where
  ``PR_SET_PDEATHSIG`` is missing (not Linux, or prctl failed).

``PR_SET_PDEATHSIG`` follows the *thread* that forked: the parent starts workers from a thread that lives as long as
it does (``pool._Spawner``), so a worker is not killed when a short-lived thread that used the pool ends.

Protocol (pickled tuples through :class:`multiprocessing.connection.Connection`):

- parent -> executor: ``("unit", unit_id, gold_text, [answer_text, ...])``
- executor -> parent: ``("ready", pid)``, then per unit ``("gold", unit_id, parseable)``, one
  ``("verdict", unit_id, index, correct)`` per answer (skipped when the gold is not parseable), ``("done", unit_id)``.
"""

import contextlib
import ctypes
import logging
import os
import select
import signal
import sys
import time
from collections import OrderedDict
from multiprocessing.connection import Connection


# Gold/answer pairs graded once in the supervisor before it forks executors: SymPy imports and builds much of itself
# lazily on first use (simplify, sets, relational solving), and a forked executor inherits that warm state instead of
# paying for it on its first verifications and again after every kill.
WARMUP_PAIRS = (
    (r"\boxed{\frac{1}{2}}", r"\boxed{0.5}"),
    (r"\boxed{2\sqrt{3}}", r"\boxed{\sqrt{12}}"),
    (r"\boxed{(1, 2]}", r"\boxed{(1, 3]}"),
    (r"\boxed{\{1, 2\}}", r"\boxed{\{2, 1\}}"),
    (r"\boxed{x = 3}", r"\boxed{3}"),
    (r"\boxed{50\%}", r"The final answer is $0.5$."),
    (r"\boxed{x^2 + 1}", r"\boxed{(x + 1)^2}"),
    (r"\boxed{\frac{\pi}{6}}", r"\boxed{30^\circ}"),
    (r"\boxed{\text{(B)}}", r"\boxed{B}"),
    (r"\boxed{\begin{pmatrix} 1 \\ 2 \end{pmatrix}}", r"\boxed{(1, 2)}"),
)
# prctl(2) option: signal this process when its parent dies.
PR_SET_PDEATHSIG = 1
# Seconds between two looks at the parent's pid while the supervisor waits on an executor.
WATCHDOG_INTERVAL_S = 0.25
# Where pidfd_open is missing (not Linux): seconds between two looks at whether the executor has exited.
EXECUTOR_POLL_S = 0.02
# How many parsed texts (golds and answers) an executor keeps: a batch's 512 golds and their distinct answers fit,
# and memory stays bounded.
PARSE_CACHE_SIZE = 4096


def _configs():
    from math_verify import ExprExtractionConfig, LatexExtractionConfig

    # Boxed answers first; without an anchor ("final answer is", "answer:") or a box nothing is extracted, so a
    # truncated completion is never graded by whatever expression it happened to end on.
    return [
        LatexExtractionConfig(boxed_match_priority=0, try_extract_without_anchor=False),
        ExprExtractionConfig(try_extract_without_anchor=False),
    ]


def parse_text(text: str, extraction_config) -> list:
    """Parse ``text`` with math-verify, its signal-based timeout disabled (the parent enforces time)."""
    from math_verify import parse

    return parse(text, extraction_config=extraction_config, parsing_timeout=None)


def verify_parsed(gold: list, answer: list) -> bool:
    """Compare two parsed answers with math-verify, its signal-based timeout disabled."""
    from math_verify import verify

    return bool(verify(gold, answer, timeout_seconds=None))


def _serve(tasks: Connection, results: Connection, extraction_config: list) -> None:
    # Golds and answers are wrapped and parsed the same way, so one cache serves both: a gold is parsed once per
    # executor however many answers it is checked against, and an answer seen before (a common wrong value, another
    # question's gold) is not parsed again.
    parsed: OrderedDict[str, list] = OrderedDict()

    def parse_cached(text: str) -> list:
        value = parsed.get(text)
        if value is not None:
            parsed.move_to_end(text)
            return value
        try:
            value = parse_text(text, extraction_config)
        except Exception:  # math-verify swallows most errors; anything left means "nothing parsed"
            value = []
        parsed[text] = value
        if len(parsed) > PARSE_CACHE_SIZE:
            parsed.popitem(last=False)
        return value

    results.send(("ready", os.getpid()))
    while True:
        try:
            message = tasks.recv()
        except (EOFError, OSError):
            return
        _, unit_id, gold_text, answers = message
        gold = parse_cached(gold_text)
        results.send(("gold", unit_id, bool(gold)))
        if gold:
            for index, answer_text in enumerate(answers):
                try:
                    correct = verify_parsed(gold, parse_cached(answer_text))
                except Exception:
                    correct = False
                results.send(("verdict", unit_id, index, correct))
        results.send(("done", unit_id))


def _tie_to_parent(parent_pid: int, pdeathsig: bool) -> None:
    """Have the kernel ``SIGKILL`` this process when its parent ends; exit now if the parent already has."""
    if pdeathsig and sys.platform.startswith("linux"):
        with contextlib.suppress(Exception):  # no prctl: the supervisor's watchdog is left
            prctl = ctypes.CDLL(None, use_errno=True).prctl  # int prctl(int option, unsigned long arg2, ...)
            prctl(PR_SET_PDEATHSIG, ctypes.c_ulong(signal.SIGKILL), *(ctypes.c_ulong(0),) * 3)
    if os.getppid() != parent_pid:
        os._exit(0)  # the parent ended before the line above took effect (we were reparented)


def _wait_executor(pid: int, parent_pid: int) -> int | None:
    """Wait for the executor ``pid`` to exit and return its exit code; if the parent ends first, kill the executor
    and return None. The parent's pid is checked every ``WATCHDOG_INTERVAL_S``."""
    pidfd = None
    with contextlib.suppress(AttributeError, OSError):  # pidfd_open: Linux 5.3+
        pidfd = os.pidfd_open(pid)
    try:
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                return os.waitstatus_to_exitcode(status)
            if os.getppid() != parent_pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                return None
            if pidfd is not None:
                select.select([pidfd], [], [], WATCHDOG_INTERVAL_S)  # readable when the executor exits
            else:
                time.sleep(EXECUTOR_POLL_S)
    finally:
        if pidfd is not None:
            os.close(pidfd)


def main(task_fd: int, result_fd: int, parent_pid: int, pdeathsig: bool) -> None:
    _tie_to_parent(parent_pid, pdeathsig)  # first: importing math-verify takes seconds
    # math-verify warns once per process that its own timeout is disabled: that is deliberate here.
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    extraction_config = _configs()  # imports math-verify once, in the supervisor: every executor inherits it
    for gold_text, answer_text in WARMUP_PAIRS:
        with contextlib.suppress(Exception):  # warm-up only
            verify_parsed(parse_text(gold_text, extraction_config), parse_text(answer_text, extraction_config))

    supervisor_pid = os.getpid()
    tasks = Connection(task_fd, readable=True, writable=False)
    results = Connection(result_fd, readable=False, writable=True)
    while os.getppid() == parent_pid:
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                # The supervisor is single-threaded, so its one thread is the executor's parent for PR_SET_PDEATHSIG.
                _tie_to_parent(supervisor_pid, pdeathsig)
                _serve(tasks, results, extraction_config)
            except OSError:
                pass  # the parent is gone (broken pipe): shut down
            except BaseException:
                code = 1  # anything else: the supervisor forks a fresh executor
            finally:
                os._exit(code)
        if _wait_executor(pid, parent_pid) in (0, None):
            return  # the parent closed the task pipe, or ended: shut down


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1")
