"""Worker processes that run math-verify's SymPy step under a hard per-verification timeout, with no signals.

math-verify's own timeouts use ``SIGALRM``, which only works on the main thread. Here every SymPy step runs in a
worker process (:mod:`nft_trl.rewards._worker`) that is killed (``SIGKILL``) when one verification exceeds its timeout;
that answer is graded wrong and the worker is replaced in milliseconds. This holds on any thread, inside an asyncio
loop, in several processes, and in forked children (e.g. data-loader workers), which start their own workers. A worker
that crashes costs only the answer it was on. Workers are fresh interpreters that import math-verify only (never torch
or your script). POSIX only (workers fork).

A batch may also have a deadline (``VerifierPool.run``'s ``deadline``): when it passes, the answers not yet verified
are graded wrong and reported, and the workers still busy on them are killed and replaced, so a few pathological
answers cost a batch at most its deadline instead of one timeout each.

No worker outlives the process that started it, however that process ends (``SIGKILL`` included): on Linux each
worker process asks the kernel to kill it when its parent ends (``PR_SET_PDEATHSIG``), and each supervisor also
watches its parent's pid (see :mod:`nft_trl.rewards._worker`). Because the kernel ties ``PR_SET_PDEATHSIG`` to the
*thread* that forked, workers are always started from a thread that lives as long as the process (``_Spawner``).
"""

import atexit
import contextlib
import logging
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
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
# Ask the kernel to kill each worker process when its parent ends (Linux PR_SET_PDEATHSIG). The supervisors' watchdog
# on their parent's pid works either way; tests turn this off to check that watchdog alone.
TIE_WORKERS_WITH_PDEATHSIG = True


class _Spawner:
    """Starts worker processes from a thread that lives as long as this process.

    Linux sends ``PR_SET_PDEATHSIG`` when the *thread* that forked a child ends, not the process: a worker started
    from a short-lived thread (a thread pool's, ``asyncio.to_thread``'s) would be killed as soon as that thread ends.
    The main thread starts workers itself; any other thread hands the start to one daemon thread, created on first
    use (a forked child makes its own).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: queue.SimpleQueue | None = None

    def call(self, start: Callable[[], subprocess.Popen]) -> subprocess.Popen:
        if threading.current_thread() is threading.main_thread():
            return start()
        with self._lock:
            if self._requests is None:
                self._requests = queue.SimpleQueue()
                threading.Thread(
                    target=self._serve, args=(self._requests,), name="nft-trl-verifier-spawner", daemon=True
                ).start()
            requests = self._requests
        future: Future = Future()
        requests.put((start, future))
        return future.result()

    @staticmethod
    def _serve(requests: queue.SimpleQueue) -> None:
        while True:
            start, future = requests.get()
            try:
                future.set_result(start())
            except BaseException as error:  # handed to the caller's thread
                future.set_exception(error)


_spawner = _Spawner()


class _Worker:
    """One supervisor process (math-verify imported) and its current executor; see ``_math_verify_worker``."""

    def __init__(self) -> None:
        task_read, task_write = os.pipe()
        result_read, result_write = os.pipe()
        # -P: do not put the nft_trl folder on sys.path; the script imports only the stdlib and math-verify.
        # A new session keeps a terminal's Ctrl-C away from workers; the parent shuts them down itself.
        command = [
            sys.executable,
            "-P",
            str(_WORKER_SCRIPT),
            str(task_read),
            str(result_write),
            str(os.getpid()),
            "1" if TIE_WORKERS_WITH_PDEATHSIG else "0",
        ]
        try:
            self.process = _spawner.call(
                lambda: subprocess.Popen(
                    command,
                    pass_fds=(task_read, result_write),
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    start_new_session=True,
                )
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
    gold_parseable: bool | None = None  # None: not known (the parse timed out, crashed, or the deadline came first)
    gold_failed: bool = False  # the gold's parse timed out or crashed its worker
    verdicts: list[bool] = field(default_factory=list)
    unverified: list[int] = field(default_factory=list)  # answers the batch deadline cut (their verdict is False)


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
        self.unverified = 0  # answers left unverified by a batch deadline, over the pool's life
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

    def run(
        self, units: Sequence[tuple[str, Sequence[str]]], timeout: float, deadline: float | None = None
    ) -> list[_UnitResult]:
        """Grade ``[(gold_text, [answer_text, ...]), ...]``; each parse or verification gets ``timeout`` seconds.

        ``deadline`` bounds the whole batch: seconds from when its first unit reaches a worker (waiting for another
        caller's batch and worker start-up are not counted). When it passes, whatever is not verified yet is graded
        False and listed in its result's ``unverified``, and the workers still busy are killed and replaced. None:
        no limit.

        Returns one result per unit: whether the gold parsed (None if its parse timed out, crashed or was cut by the
        deadline; ``gold_failed`` tells the first two apart) and one verdict per answer (False for an answer whose
        verification timed out, crashed its worker, or was cut by the deadline).
        """
        if deadline is not None and not deadline > 0:
            raise ValueError(f"deadline must be None or a positive number of seconds, got {deadline!r}.")
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
                self._drain(queue, results, timeout, deadline)
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

    def _drain(self, queue: deque, results: list[_UnitResult], timeout: float, deadline: float | None) -> None:
        cutoff = None  # when the batch deadline passes, once the first unit is sent
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
                    if cutoff is None and deadline is not None:
                        cutoff = time.monotonic() + deadline
            waiting = [worker for worker in self._pool if worker.state != "idle"]
            if not waiting:
                continue
            next_event = min(worker.deadline for worker in waiting)
            if cutoff is not None:
                next_event = min(next_event, cutoff)
            remaining = max(0.0, next_event - time.monotonic())
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
            if cutoff is not None and now >= cutoff:
                self._cut(queue, results)
                return
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
            # The gold's parse timed out or crashed: gold_parseable stays None unless another piece of it parsed.
            results[unit.index].gold_failed = True
            return
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

    def _cut(self, queue: deque, results: list[_UnitResult]) -> None:
        """The batch deadline passed: mark every answer not verified yet (queued, or in a busy worker's unit from
        its position on) as unverified, and kill the executors still busy; their supervisors fork fresh ones."""
        left = [(unit, 0) for unit in queue]
        queue.clear()
        now = time.monotonic()
        for worker in self._pool:
            if worker.state == "busy":
                left.append((worker.unit, max(0, worker.position)))
                worker.kill_executor()
                worker.unit, worker.state, worker.deadline = None, "restarting", now + STARTUP_TIMEOUT_S
        for unit, start in left:
            cut = range(unit.offset + start, unit.offset + len(unit.answers))
            results[unit.index].unverified.extend(cut)
            self.unverified += len(cut)

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
    global _default_pools_lock, _spawner
    _default_pools_lock = threading.Lock()
    _spawner = _Spawner()  # the parent's spawner thread does not exist here
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
