"""Worker processes that run math-verify's SymPy step under a hard per-verification timeout, with no signals.

math-verify's own timeouts use ``SIGALRM``, which only works on the main thread. Here every SymPy step runs in a
worker process (:mod:`nft_trl.rewards._worker`) that is killed (``SIGKILL``) when one verification exceeds its timeout;
that answer is graded wrong and the worker is replaced in milliseconds. This holds on any thread, inside an asyncio
loop, in several processes, and in forked children (e.g. data-loader workers), which start their own workers. A worker
that crashes costs only the answer it was on. Workers are fresh interpreters that import math-verify only (never torch
or your script). POSIX only (workers fork); Linux also ties each executor's life to its supervisor
(``PR_SET_PDEATHSIG``).
"""

import atexit
import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Literal


logger = logging.getLogger(__name__)

# Seconds a fresh worker process may take to import math-verify (SymPy, ANTLR) before we report a broken install.
STARTUP_TIMEOUT_S = 120.0
# Seconds to wait for a worker to exit on its own at shutdown before killing it.
SHUTDOWN_GRACE_S = 1.0
# Load balancing: a gold's answers are split into pieces of at least MIN_CHUNK_ANSWERS, and at most about
# 1 / CHUNKS_PER_WORKER of one worker's share of the batch.
MIN_CHUNK_ANSWERS = 4
CHUNKS_PER_WORKER = 4
_WORKER_SCRIPT = Path(__file__).with_name("_worker.py")


class _Worker:
    """One supervisor process (math-verify imported) and its current executor; see ``_math_verify_worker``."""

    def __init__(self) -> None:
        task_read, task_write = os.pipe()
        result_read, result_write = os.pipe()
        try:
            # -P: do not put the nft_trl folder on sys.path; the script imports only the stdlib and math-verify.
            # A new session keeps a terminal's Ctrl-C away from workers; the parent shuts them down itself.
            self.process = subprocess.Popen(
                [sys.executable, "-P", str(_WORKER_SCRIPT), str(task_read), str(result_write)],
                pass_fds=(task_read, result_write),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                start_new_session=True,
            )
        except BaseException:
            for fd in (task_read, task_write, result_read, result_write):
                os.close(fd)
            raise
        os.close(task_read)
        os.close(result_write)
        self.tasks = Connection(task_write, readable=False, writable=True)
        self.results = Connection(result_read, readable=True, writable=False)
        self.executor_pid: int | None = None
        self.state: Literal["starting", "idle", "busy", "restarting"] = "starting"
        self.deadline = time.monotonic() + STARTUP_TIMEOUT_S
        self.unit: _Unit | None = None
        self.position = -1  # -1: parsing the gold; i >= 0: verifying answer i of the unit

    def kill_executor(self) -> None:
        if self.executor_pid is not None:
            with contextlib.suppress(ProcessLookupError):  # it already died (crashed): a new one is starting
                os.kill(self.executor_pid, signal.SIGKILL)

    def close(self) -> None:
        for connection in (self.tasks, self.results):
            with contextlib.suppress(OSError):
                connection.close()
        # Closing the task pipe makes the executor, then the supervisor, exit; kill them if they do not.
        try:
            self.process.wait(timeout=SHUTDOWN_GRACE_S)
        except subprocess.TimeoutExpired:
            self.kill_executor()
            self.process.kill()
            self.process.wait()


@dataclass
class _Unit:
    """One gold and the answers to check against it, as dispatched to one worker."""

    uid: int
    index: int  # position in the caller's list of units
    gold: str
    answers: list[str]
    offset: int = 0  # answers[0] is answer number `offset` of the caller's unit (after a requeue)


@dataclass
class _UnitResult:
    gold_parseable: bool | None = None  # None: the gold parse timed out or crashed
    verdicts: list[bool] = field(default_factory=list)


class VerifierPool:
    """Processes that run math-verify's SymPy step under a hard per-verification timeout.

    Create once and reuse (see :func:`get_default_pool`): workers start lazily on the first call and live until
    :meth:`close` (default pools close at interpreter exit). Thread-safe: concurrent calls are served one batch at a
    time. A pool used in a forked child starts its own workers and leaves the parent's alone.

    Args:
        workers (`int`):
            Number of worker processes (at least 1).
    """

    def __init__(self, workers: int) -> None:
        if workers < 1:
            raise ValueError(f"A VerifierPool needs at least one worker, got workers={workers}.")
        self.workers = workers
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._pool: list[_Worker] = []
        self._next_uid = 0
        self.timeouts = 0  # verifications killed for exceeding their timeout, over the pool's life
        _all_pools.add(self)

    def _forget_after_fork(self) -> None:
        """In a forked child (e.g. a data-loader worker): the workers are the parent's. Drop our copies of their
        pipes (so the parent's shutdown still reaches them) and a lock another thread may have held at the fork."""
        self._lock = threading.Lock()
        for worker in self._pool:
            for connection in (worker.tasks, worker.results):
                with contextlib.suppress(OSError):
                    connection.close()
        self._pid, self._pool = os.getpid(), []

    def __repr__(self) -> str:
        return f"VerifierPool(workers={self.workers}, running={len(self._pool)})"

    def close(self) -> None:
        """Stop all worker processes. The pool starts new ones if it is used again."""
        with self._lock:
            if os.getpid() == self._pid:
                for worker in self._pool:
                    worker.close()
            self._pool = []

    def run(self, units: Sequence[tuple[str, Sequence[str]]], timeout: float) -> list[_UnitResult]:
        """Grade ``[(gold_text, [answer_text, ...]), ...]``; each parse or verification gets ``timeout`` seconds.

        Returns one result per unit: whether the gold parsed (None if its parse timed out) and one verdict per
        answer (False for an answer whose verification timed out or crashed its worker).
        """
        results = [_UnitResult(verdicts=[False] * len(answers)) for _, answers in units]
        if not units:
            return results
        with self._lock:
            for worker in list(self._pool):
                if worker.process.poll() is not None:  # its supervisor died between calls
                    self._replace(worker, deque(), results)
            while len(self._pool) < self.workers:
                self._pool.append(_Worker())
            # Longest units first, and none longer than a fair share, so no worker is left with a long tail of work
            # while the others idle; a split unit's gold is parsed once more, by the worker that takes the other part.
            total = sum(len(answers) for _, answers in units)
            chunk = max(MIN_CHUNK_ANSWERS, -(-total // (CHUNKS_PER_WORKER * self.workers)))
            pieces = []
            for index, (gold, answers) in enumerate(units):
                for offset in range(0, max(1, len(answers)), chunk):
                    pieces.append((index, gold, list(answers[offset : offset + chunk]), offset))
            pieces.sort(key=lambda piece: len(piece[2]), reverse=True)
            queue = deque(
                _Unit(uid=self._new_uid(), index=index, gold=gold, answers=answers, offset=offset)
                for index, gold, answers, offset in pieces
            )
            timeouts_before = self.timeouts
            try:
                self._drain(queue, results, timeout)
            except BaseException:  # e.g. KeyboardInterrupt: drop the work in flight so no later call sees its results
                for worker in self._pool:
                    if worker.state == "busy":
                        worker.kill_executor()
                        worker.unit, worker.state = None, "restarting"
                        worker.deadline = time.monotonic() + STARTUP_TIMEOUT_S
                raise
            timed_out = self.timeouts - timeouts_before
        if timed_out:
            logger.warning(
                "math_verifier: %d verification(s) exceeded the %.1f s timeout and were graded 0.0 (their worker "
                "processes were killed and replaced).",
                timed_out,
                timeout,
            )
        return results

    def _new_uid(self) -> int:
        self._next_uid += 1
        return self._next_uid

    def _drain(self, queue: deque, results: list[_UnitResult], timeout: float) -> None:
        while queue or any(worker.state == "busy" for worker in self._pool):
            for worker in list(self._pool):
                if worker.state == "idle" and queue:
                    unit = queue.popleft()
                    try:
                        worker.tasks.send(("unit", unit.uid, unit.gold, unit.answers))
                    except OSError:  # its processes died while idle: retry the unit on a fresh worker
                        queue.appendleft(unit)
                        self._replace(worker, queue, results)
                        continue
                    worker.state, worker.unit, worker.position = "busy", unit, -1
                    worker.deadline = time.monotonic() + timeout
            waiting = [worker for worker in self._pool if worker.state != "idle"]
            if not waiting:
                continue
            remaining = max(0.0, min(worker.deadline for worker in waiting) - time.monotonic())
            by_connection = {worker.results: worker for worker in waiting}
            for connection in wait(list(by_connection), timeout=remaining):
                worker = by_connection[connection]
                # Drain everything this worker has written so far before looking at deadlines.
                while worker in self._pool and connection.poll():
                    try:
                        message = connection.recv()
                    except (EOFError, OSError):  # the supervisor died (e.g. the OOM killer)
                        if worker.state == "starting":
                            raise RuntimeError(
                                f"A math-verify worker exited during start-up (exit code {worker.process.poll()}); "
                                "check that `math-verify` and `latex2sympy2_extended` import in this environment."
                            ) from None
                        self._replace(worker, queue, results)
                        break
                    self._handle(worker, message, queue, results, timeout)
            now = time.monotonic()
            for worker in list(self._pool):
                if worker.deadline > now:
                    continue
                if worker.state == "busy":
                    logger.debug("math_verifier: timeout on gold %r (item %d)", worker.unit.gold[:80], worker.position)
                    self.timeouts += 1
                    worker.kill_executor()
                    self._fail_current(worker, queue, results)
                    worker.state, worker.deadline = "restarting", now + STARTUP_TIMEOUT_S
                    if worker.process.poll() is not None:  # no supervisor left to fork a new executor
                        self._replace(worker, queue, results)
                elif worker.state in ("starting", "restarting"):
                    raise RuntimeError(
                        f"A math-verify worker did not start within {STARTUP_TIMEOUT_S:.0f} s; check that "
                        "`math-verify` and `latex2sympy2_extended` import in this environment."
                    )

    def _handle(self, worker: _Worker, message: tuple, queue: deque, results: list[_UnitResult], timeout: float):
        kind = message[0]
        if kind == "ready":
            if worker.state == "busy":  # the executor crashed mid-unit and the supervisor replaced it
                self._fail_current(worker, queue, results)
            worker.executor_pid, worker.state = message[1], "idle"
            return
        unit = worker.unit
        if worker.state != "busy" or unit is None or message[1] != unit.uid:
            return  # a late message from an executor that was killed
        result = results[unit.index]
        if kind == "gold":
            result.gold_parseable = message[2]
            worker.position = 0
        elif kind == "verdict":
            result.verdicts[unit.offset + message[2]] = message[3]
            worker.position = message[2] + 1
        elif kind == "done":
            worker.state, worker.unit = "idle", None
            return
        worker.deadline = time.monotonic() + timeout

    def _fail_current(self, worker: _Worker, queue: deque, results: list[_UnitResult]) -> None:
        """The item ``worker`` was on timed out or crashed: grade it as failed and requeue the rest of its unit."""
        unit, position = worker.unit, worker.position
        worker.unit = None
        if unit is None:
            return
        if position < 0:
            return  # the gold's parse timed out: gold_parseable stays None unless another piece of it parsed
        results[unit.index].verdicts[unit.offset + position] = False
        if position + 1 < len(unit.answers):
            rest = _Unit(
                uid=self._new_uid(),
                index=unit.index,
                gold=unit.gold,
                answers=unit.answers[position + 1 :],
                offset=unit.offset + position + 1,
            )
            queue.appendleft(rest)

    def _replace(self, worker: _Worker, queue: deque, results: list[_UnitResult]) -> None:
        """Its supervisor died: fail the item it was on, stop what is left of it, and start a fresh worker."""
        if worker.state == "busy":
            self._fail_current(worker, queue, results)
        worker.kill_executor()
        worker.close()
        self._pool[self._pool.index(worker)] = _Worker()


_all_pools: "weakref.WeakSet[VerifierPool]" = weakref.WeakSet()
_default_pools: dict[int, VerifierPool] = {}
_default_pools_lock = threading.Lock()


def _after_fork_in_child() -> None:
    global _default_pools_lock
    _default_pools_lock = threading.Lock()
    for pool in list(_all_pools):
        pool._forget_after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)


def default_workers() -> int:
    """One worker per CPU this process may use, shared among the ranks on this node (``LOCAL_WORLD_SIZE``)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    ranks_per_node = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return max(1, cpus // max(1, ranks_per_node))


def get_default_pool(workers: int | None = None) -> VerifierPool:
    """The process-wide pool with ``workers`` workers (default :func:`default_workers`), created on first use."""
    workers = default_workers() if workers is None else max(1, workers)
    with _default_pools_lock:
        pool = _default_pools.get(workers)
        if pool is None:
            pool = _default_pools[workers] = VerifierPool(workers)
        return pool


@atexit.register
def shutdown_default_pools() -> None:
    """Stop the workers of every default pool (registered with :mod:`atexit`)."""
    with _default_pools_lock:
        pools = list(_default_pools.values())
    for pool in pools:
        pool.close()
