r"""Binary math-answer reward for NFT/GRPO: right, fast, and never able to hang a run.

NFT splits every group of answers into positives and negatives with a binary verifier, so each wrong verdict flips
the sign of a gradient. This module grades with math-verify (SymPy, latex2sympy2_extended) and makes it safe at
training scale:

- **Hard timeout, no signals.** math-verify's own timeouts use ``SIGALRM``, which only works on the main thread. Here
  they are disabled and every SymPy step runs in a worker process that is killed (``SIGKILL``) when one verification
  exceeds ``timeout`` seconds; that answer is graded 0.0 and the worker is replaced in milliseconds (see
  :mod:`nft_trl._math_verify_worker`). This holds on any thread, inside an asyncio loop, in several processes, and
  in forked children (e.g. data-loader workers), which start their own workers. A worker that crashes costs only
  the answer it was on. Workers are fresh interpreters that import math-verify only (never torch or your script).
- **Throughput.** A batch is graded in parallel. Each distinct gold is parsed once per batch (once per worker when
  the answers of a small batch are split across workers for balance), identical (gold, answer) pairs are graded
  once, and plain numbers, identical spellings and completions with no answer at all are settled before SymPy,
  with the same verdicts math-verify gives (tested). The pool is created on first use and reused until exit.
- **Answer extraction.** The last ``\boxed{...}`` (nested braces, ``\boxed 5``, ``\fbox{...}``) is the answer; an
  earlier box never counts. **Fallback when there is no box:** only an explicit final-answer statement in the last
  ``FALLBACK_TAIL_CHARS`` (300) characters ("The final answer is $x$", "Answer: x"), found by math-verify's anchored
  patterns; otherwise the answer is wrong (0.0). We never grade "the last number in the text". A box opened but never
  closed is a truncated answer: 0.0, as is an empty box or one longer than ``MAX_ANSWER_CHARS`` (1,000) characters.
- **Percentages** (math mode, math-verify's rule): ``50\%`` equals both ``50`` and ``0.5``, in either direction. In
  strict mode ``\%`` is dropped before the string match, so ``50\%`` matches ``50`` but not ``0.5``.
- **Gold answers** (the ``solution`` column): a bare answer, ``$...$``, or a worked solution whose last box is taken.
  A gold is usable when math-verify extracts anything from ``\boxed{gold}``; otherwise (or when its parse exceeds
  the timeout) all its completions get ``None`` and one warning is logged for that gold.

Usage with TRL (logged as ``rewards/math_verifier/mean``)::

    >>> from nft_trl import math_verifier, make_math_verifier
    >>> math_verifier([r"so \boxed{\dfrac{1}{2}}", r"\boxed{0.4}"], solution=["0.5", "0.5"])
    [1.0, 0.0]
    >>> strict = make_math_verifier(mode="strict")  # last box, normalised string match
    >>> authors = make_math_verifier(mode="dapo_strict_box")  # the NFT authors' training verdict (verl math_dapo)

Rewards: 1.0 correct, 0.0 wrong (no extractable answer and truncated answers included), ``None`` when the gold
cannot be parsed (TRL turns it into NaN and ignores it). POSIX only (workers fork); Linux also ties each executor's
life to its supervisor (``PR_SET_PDEATHSIG``).
"""

import atexit
import contextlib
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any, Literal


logger = logging.getLogger(__name__)

__all__ = [
    "MathVerifier",
    "VerifierPool",
    "dapo_strict_box",
    "default_workers",
    "extract_dapo_strict_box",
    "extract_last_boxed",
    "get_default_pool",
    "make_math_verifier",
    "math_verifier",
    "normalize_answer",
    "shutdown_default_pools",
]

# Seconds one verification (parse + compare of one answer, or the parse of one gold) may take before its worker is
# killed and the answer graded 0.0. math-verify's own default is 5 s; typical verifications take milliseconds.
DEFAULT_TIMEOUT_S = 5.0
# Seconds a fresh worker process may take to import math-verify (SymPy, ANTLR) before we report a broken install.
STARTUP_TIMEOUT_S = 120.0
# Seconds to wait for a worker to exit on its own at shutdown before killing it.
SHUTDOWN_GRACE_S = 1.0
# A final answer longer than this is graded wrong without SymPy (the longest MATH answer is ~160 characters);
# this keeps pathological strings (huge nests of braces) out of the parser altogether.
MAX_ANSWER_CHARS = 1_000
# Without a box, only the tail of a completion is searched for "final answer is ..." / "Answer: ...".
FALLBACK_TAIL_CHARS = 300
# Numeric fast path: strings longer than this go to SymPy (also keeps int() far from its digit limit).
NUMERIC_FAST_PATH_MAX_CHARS = 30
# math-verify compares a float after rounding to 6 decimals, so values further apart than this are surely different.
NUMERIC_FAST_PATH_MARGIN = 1e-5
# Beyond this magnitude float rounding in SymPy is not trusted to match ours: leave such numbers to SymPy.
NUMERIC_FAST_PATH_MAX_MAGNITUDE = 10**9

# Load balancing: a gold's answers are split into pieces of at least MIN_CHUNK_ANSWERS, and at most about
# 1 / CHUNKS_PER_WORKER of one worker's share of the batch.
MIN_CHUNK_ANSWERS = 4
CHUNKS_PER_WORKER = 4

Mode = Literal["math", "strict", "dapo_strict_box"]
_MODES = ("math", "strict", "dapo_strict_box")
# verl's `math_dapo` rule, which the NFT authors train with: it keeps the answer's last 300 characters, and its strict
# box check then looks only at the last 100 of those (so in effect the last 100 characters).
DAPO_TAIL_CHARS = 300
DAPO_STRICT_BOX_TAIL_CHARS = 100
_DAPO_BOX_OPEN = "\\boxed{"
_WORKER_SCRIPT = Path(__file__).with_name("_math_verify_worker.py")

# ---------------------------------------------------------------------------------------------------------------
# Extraction and normalisation (plain string operations, linear time: safe in the trainer process)
# ---------------------------------------------------------------------------------------------------------------

_BOX_COMMANDS = ("\\boxed", "\\fbox")


@dataclass(frozen=True)
class _Boxed:
    """Result of looking for the last box: ``found`` is False when there is none; ``content`` None if unclosed."""

    found: bool
    content: str | None = None


def _find_last_box(text: str) -> _Boxed:
    start = -1
    command = ""
    for name in _BOX_COMMANDS:
        position = text.rfind(name)
        while position >= 0 and text[position + len(name) : position + len(name) + 1].isalpha():
            position = text.rfind(name, 0, position)  # e.g. "\boxedtext" is another command
        if position > start:
            start, command = position, name
    if start < 0:
        return _Boxed(found=False)
    i = start + len(command)
    while i < len(text) and text[i].isspace():
        i += 1
    if i >= len(text):
        return _Boxed(found=True)
    if text[i] != "{":  # "\boxed 5": the box holds the next token
        end = i
        while end < len(text) and not text[end].isspace() and text[end] not in "$}":
            end += 1
        token = text[i:end].rstrip(".,;")
        return _Boxed(found=True, content=token or None)
    depth = 0
    j = i
    while j < len(text):
        char = text[j]
        if char == "\\":
            j += 2  # an escaped character, e.g. the set braces "\{" and "\}", never closes the box
            continue
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return _Boxed(found=True, content=text[i + 1 : j])
        j += 1
    return _Boxed(found=True)  # unclosed: the completion was truncated inside its answer


def extract_last_boxed(text: str) -> str | None:
    r"""Return the content of the last ``\boxed{...}`` / ``\boxed x`` / ``\fbox{...}`` in ``text``, or None.

    Nested braces are matched; escaped braces (``\{``) do not count. An unclosed last box gives None.

    >>> extract_last_boxed(r"first \boxed{1}, then \boxed{\frac{a}{b}}")
    '\\frac{a}{b}'
    """
    return _find_last_box(text).content


def extract_dapo_strict_box(text: str) -> str | None:
    r"""The answer verl's ``math_dapo`` strict-box rule reads: the content of the last ``\boxed{`` in the last 100 characters.

    The rule, as the NFT authors train with it: keep the last ``DAPO_TAIL_CHARS`` (300) characters, then the last
    ``DAPO_STRICT_BOX_TAIL_CHARS`` (100) of those; find the last literal ``\boxed{`` there and match braces by plain
    counting (every ``{`` opens, every ``}`` closes; no escapes). No box there, or a box that does not close before
    the end, gives None. Nothing is stripped or normalised.

    >>> extract_dapo_strict_box(r"so the answer is \boxed{\frac{1}{2}}.")
    '\\frac{1}{2}'
    >>> extract_dapo_strict_box(r"\boxed{7}" + " " * 100) is None  # the box lies outside the last 100 characters
    True
    """
    tail = text[-DAPO_TAIL_CHARS:][-DAPO_STRICT_BOX_TAIL_CHARS:]
    start = tail.rfind(_DAPO_BOX_OPEN)
    if start < 0:
        return None
    depth = 0
    for end in range(start + len(_DAPO_BOX_OPEN) - 1, len(tail)):
        if tail[end] == "{":
            depth += 1
        elif tail[end] == "}":
            depth -= 1
            if depth == 0:
                return tail[start + len(_DAPO_BOX_OPEN) : end]
    return None


def _completion_text(completion: Any) -> str:
    """Text of a standard (str) or conversational (list of messages) completion; the last assistant message counts."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        completion = [completion]
    if isinstance(completion, (list, tuple)):
        for message in reversed(completion):
            if isinstance(message, dict) and message.get("role", "assistant") == "assistant":
                content = message.get("content")
                if isinstance(content, list):  # multimodal parts: [{"type": "text", "text": ...}, ...]
                    content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
                return content if isinstance(content, str) else ""
    return ""


_TEXT_COMMAND = re.compile(r"\\(?:text|textbf|textrm|mathrm|mbox|mathbf)\s*\{([^{}]*)\}")
_DEGREE = re.compile(r"\^\s*\{?\\circ\}?")
_THOUSANDS = re.compile(r"(?<=\d)(?:,|\{,\})(?=\d{3}(?!\d))")
_SPACING = re.compile(r"\\[,;:! ]|~|\s+")
_FRAC_VARIANT = re.compile(r"\\[dt]frac")
_SIZING = re.compile(r"\\(?:left|right)(?![a-zA-Z])")


def normalize_answer(answer: str) -> str:
    r"""Normalise a final answer for the strict (string-match) mode.

    Keeps the part after the last ``=``, unwraps ``\text{}``-like commands, drops ``$``, spacing commands, whitespace,
    ``\left``/``\right``, degree marks, ``\%``, thousands separators and a trailing period, and writes
    ``\dfrac``/``\tfrac`` as ``\frac``. Two answers match in strict mode when their normal forms are equal.

    >>> normalize_answer(r" x = 1{,}000 \text{ cm}. ")
    '1000cm'
    """
    text = answer.strip().strip("$")
    if "=" in text:
        text = text.rsplit("=", 1)[1]
    text = _TEXT_COMMAND.sub(r"\1", text)
    text = _DEGREE.sub("", text)
    text = text.replace("\\%", "").replace("%", "").replace("$", "")
    text = _FRAC_VARIANT.sub(r"\\frac", text)
    text = _SIZING.sub("", text)
    text = _SPACING.sub("", text)
    text = _THOUSANDS.sub("", text)
    return text.rstrip(".")


_INTEGER = re.compile(r"-?\d+")
_DECIMAL = re.compile(r"-?\d*\.\d+")
_FRACTION = re.compile(r"(-?)(?:\\[dt]?frac\{(\d+)\}\{(\d+)\}|(\d+)/(\d+))")
# "... The final answer is $12$." ending a completion with no box and no other "answer" in its tail: math-verify's
# anchored patterns extract exactly that value, so it can be settled by the fast path like a boxed answer.
_FINAL_ANSWER_AT_END = re.compile(r"final answer is\s*\$([^$]+)\$\s*\.?\s*\Z", re.IGNORECASE)
# "x = 3": math-verify compares the right-hand side of a one-letter assignment with a gold number.
_ASSIGNMENT = re.compile(r"[a-zA-Z]\s*=\s*(.*)")


def _as_number(text: str) -> tuple[Fraction, bool] | None:
    """Parse a plain number (integer, decimal, ``a/b``, ``\\frac{a}{b}``; thousands separators allowed).

    Returns ``(value, is_integer_literal)`` or None when ``text`` is anything else (left to SymPy).
    """
    text = _THOUSANDS.sub("", text.strip())
    if len(text) > NUMERIC_FAST_PATH_MAX_CHARS:
        return None
    if _INTEGER.fullmatch(text):
        return Fraction(int(text)), True
    if _DECIMAL.fullmatch(text):
        return Fraction(text), False
    match = _FRACTION.fullmatch(text)
    if match:
        sign, num_a, den_a, num_b, den_b = match.groups()
        numerator, denominator = int(num_a or num_b), int(den_a or den_b)
        if denominator == 0:
            return None
        value = Fraction(numerator, denominator)
        return (-value if sign else value), False
    return None


def _numeric_verdict(gold: tuple[Fraction, bool], answer: tuple[Fraction, bool]) -> bool | None:
    """Settle a number-vs-number comparison exactly as math-verify would, or return None if not sure."""
    (gold_value, gold_is_int), (answer_value, answer_is_int) = gold, answer
    if gold_value == answer_value:
        return True
    if gold_is_int and answer_is_int:
        return False  # math-verify compares two integers exactly
    if max(abs(gold_value), abs(answer_value)) > NUMERIC_FAST_PATH_MAX_MAGNITUDE:
        return None
    if abs(gold_value - answer_value) > NUMERIC_FAST_PATH_MARGIN:
        return False  # apart by more than any 6-decimal rounding can close
    return None


# Spelling differences LaTeX (hence math-verify) ignores. Text-like commands are excluded: spaces count inside them.
_TEXTUAL = re.compile(r"\\(?:text|mbox|mathrm|operatorname|textbf|mathbf|textit)(?![a-zA-Z])")
_RELATION = re.compile(r"[=<>]|\\(?:le|ge|leq|geq|ne|neq|approx|equiv|sim|in|to|mid)(?![a-zA-Z])")
_SPACES = re.compile(r"\s+")


def _canonical_spelling(text: str) -> str:
    r"""``\dfrac``/``\tfrac`` as ``\frac``, no ``\left``/``\right``, no whitespace between symbols.

    Whitespace next to a letter, digit or comma is kept: math-verify reads "2,125" as a number but "2, 125" as two,
    and "\pi r" is not "\pir".
    """
    text = _SIZING.sub("", _FRAC_VARIANT.sub(r"\\frac", text.strip()))

    def space(match: re.Match) -> str:
        start, end = match.start(), match.end()
        before = text[start - 1] if start > 0 else ""
        after = text[end] if end < len(text) else ""
        meaningful = before.isalnum() or before == "," or after.isalnum() or after == ","
        return " " if meaningful and before and after else ""

    return _SPACES.sub(space, text)


def _strip_assignment(answer: str, gold: str) -> str:
    """``x = 3`` -> ``3`` when math-verify would compare the right-hand side alone with ``gold``.

    Only for a gold that is not itself a relation, and a right-hand side without commas ("x = 2,125" is not 2125).
    """
    assignment = _ASSIGNMENT.fullmatch(answer)
    if assignment is None or "," in assignment.group(1) or _RELATION.search(gold):
        return answer
    return assignment.group(1)


def _same_spelling(gold: str, answer: str) -> bool:
    r"""True when ``answer`` writes ``gold`` up to spelling that cannot change math-verify's verdict.

    Covers spacing, ``\dfrac``, ``\left(``, and a leading one-letter assignment (``x = ...``) when the gold is not
    itself a relation (math-verify then compares the right-hand side). Anything else is left to SymPy.
    """
    if _TEXTUAL.search(gold) or _TEXTUAL.search(answer):
        return False
    answer = _strip_assignment(answer, gold)
    return _canonical_spelling(answer) == _canonical_spelling(gold)


def _settle(gold: str, gold_number: tuple[Fraction, bool] | None, answer: str) -> str | None:
    """Fast path: "right"/"wrong" for number pairs, "same_spelling" for identical spellings, None: ask SymPy."""
    if gold_number is not None:
        answer_number = _as_number(_strip_assignment(answer, gold))
        if answer_number is not None:
            verdict = _numeric_verdict(gold_number, answer_number)
            if verdict is not None:
                return "right" if verdict else "wrong"
    if answer == gold or _same_spelling(gold, answer):
        return "right" if gold_number is not None else "same_spelling"
    return None


def _gold_text(solution: Any) -> str:
    """The gold answer to grade against: the last box of a worked solution, else the column value itself."""
    if solution is None:
        return ""
    text = str(solution).strip()
    boxed = _find_last_box(text)
    if boxed.found and boxed.content is not None:
        text = boxed.content.strip()
    if len(text) >= 2 and text[0] == text[-1] == "$":
        text = text.strip("$").strip()
    return text


# ---------------------------------------------------------------------------------------------------------------
# Worker pool
# ---------------------------------------------------------------------------------------------------------------


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
    global _default_pools_lock, _warned_golds_lock
    _default_pools_lock, _warned_golds_lock = threading.Lock(), threading.Lock()
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


# ---------------------------------------------------------------------------------------------------------------
# The reward function
# ---------------------------------------------------------------------------------------------------------------

_warned_golds: set[str] = set()
_warned_golds_lock = threading.Lock()


def _warn_unparseable_gold(gold: str, reason: str) -> None:
    with _warned_golds_lock:
        if gold in _warned_golds:
            return
        _warned_golds.add(gold)
    logger.warning("math_verifier: gold answer %r %s; its completions get reward None.", gold[:200], reason)


@dataclass(frozen=True)
class MathVerifier:
    r"""Binary math-answer reward with TRL's reward signature; build one with :func:`make_math_verifier`.

    Parameters:
        mode (`str`, *optional*, defaults to `"math"`):
            `"math"`: math-verify equivalence (fractions vs decimals, intervals, sets, units, ``x =``, ...).
            `"strict"`: the last box anywhere in the text, :func:`normalize_answer` on both sides, string equality.
            Plain string operations, no SymPy, no worker processes. Not the authors' rule (it normalises and reads
            the whole text).
            `"dapo_strict_box"`: the NFT authors' training verdict, verl's ``math_dapo`` strict-box rule (see
            :func:`extract_dapo_strict_box`): the last ``\boxed{}`` within the answer's last 100 characters,
            compared to the gold by raw string equality, with no normalisation on either side. Use it to reproduce
            the paper's training runs on DAPO-Math-17k; it grades equivalent spellings (``0.5`` vs ``\frac12``) and
            answers boxed earlier in the text as wrong.
        timeout (`float`, *optional*, defaults to `5.0`):
            Hard limit in seconds for one verification (math mode). An answer that exceeds it is graded 0.0.
        workers (`int` or `None`, *optional*, defaults to `None`):
            Worker processes (math mode): None uses :func:`default_workers`. 0 means serial grading; as SymPy cannot
            be interrupted inside a thread without signals, serial grading still runs on one helper process
            (exactly like 1), so that the hard timeout holds.
        fast_path (`bool`, *optional*, defaults to `True`):
            Settle plain numbers and identical strings without SymPy (verdicts are the same as math-verify's).
        name (`str`, *optional*, defaults to `"math_verifier"`):
            The ``__name__`` TRL logs the reward under (``rewards/<name>/mean``).
    """

    mode: Mode = "math"
    timeout: float = DEFAULT_TIMEOUT_S
    workers: int | None = None
    fast_path: bool = True
    name: str = "math_verifier"

    def __post_init__(self) -> None:
        if self.mode not in _MODES:
            raise ValueError(f"mode must be one of {_MODES}, got {self.mode!r}.")
        if not self.timeout > 0:
            raise ValueError(f"timeout must be a positive number of seconds, got {self.timeout!r}.")
        if self.workers is not None and self.workers < 0:
            raise ValueError(f"workers must be None or >= 0, got {self.workers}.")
        object.__setattr__(self, "__name__", self.name)  # TRL names a reward function by its __name__

    def __call__(
        self, completions: Sequence[Any], solution: Sequence[Any] | None = None, **kwargs: Any
    ) -> list[float | None]:
        """Grade ``completions`` against the gold answers in ``solution`` (one per completion); ignore ``kwargs``."""
        if solution is None:
            columns = sorted(set(kwargs) - {"prompts", "completion_ids", "trainer_state", "log_extra", "log_metric"})
            raise ValueError(
                f"{self.name} needs the gold answers in a dataset column named `solution` (TRL passes dataset columns "
                f"by name); got the columns {columns}. Rename the gold-answer column to `solution`."
            )
        if len(completions) != len(solution):
            raise ValueError(
                f"Got {len(completions)} completions but {len(solution)} gold answers in `solution`; TRL passes one "
                "gold answer per completion (the dataset's `solution` column)."
            )
        texts = [_completion_text(completion) for completion in completions]
        if self.mode == "dapo_strict_box":
            return self._grade_dapo_strict_box(texts, solution)
        golds = [_gold_text(gold) for gold in solution]
        if self.mode == "strict":
            return self._grade_strict(texts, golds)
        return self._grade_math(texts, golds)

    def _grade_strict(self, texts: list[str], golds: list[str]) -> list[float | None]:
        rewards: list[float | None] = []
        for text, gold in zip(texts, golds, strict=True):
            gold_normal = normalize_answer(gold)
            if not gold_normal:
                _warn_unparseable_gold(gold, "is empty after normalisation")
                rewards.append(None)
                continue
            answer = extract_last_boxed(text)
            rewards.append(float(answer is not None and normalize_answer(answer) == gold_normal))
        return rewards

    def _grade_dapo_strict_box(self, texts: list[str], solution: Sequence[Any]) -> list[float | None]:
        rewards: list[float | None] = []
        for text, gold in zip(texts, solution, strict=True):
            if gold is None:
                _warn_unparseable_gold("None", "is missing")
                rewards.append(None)
                continue
            # The gold is compared as it is stored (a non-string gold, e.g. an integer column, as its str()).
            rewards.append(float(extract_dapo_strict_box(text) == str(gold)))
        return rewards

    def _grade_math(self, texts: list[str], golds: list[str]) -> list[float | None]:
        rewards: list[float | None] = [0.0] * len(texts)
        # gold -> {answer text sent to SymPy -> rows}; gold -> rows settled as exact matches (correct if the gold
        # parses); gold -> all its rows (None if it does not parse).
        pending: dict[str, dict[str, list[int]]] = {}
        exact: dict[str, list[int]] = {}
        rows_of_gold: dict[str, list[int]] = {}
        gold_numbers = {gold: _as_number(gold) if self.fast_path else None for gold in set(golds)}
        for row, (text, gold) in enumerate(zip(texts, golds, strict=True)):
            if not gold:
                _warn_unparseable_gold(gold, "is empty")
                rewards[row] = None
                continue
            rows_of_gold.setdefault(gold, []).append(row)
            boxed = _find_last_box(text)
            if boxed.found:
                if boxed.content is None or not boxed.content.strip() or len(boxed.content) > MAX_ANSWER_CHARS:
                    continue  # truncated inside the box, empty, or pathological: wrong
                candidate = boxed.content.strip()
                answer_text = "\\boxed{" + candidate + "}"
            else:
                # Fallback: an explicit final-answer statement near the end, found by math-verify's anchors.
                answer_text = text[-FALLBACK_TAIL_CHARS:]
                mentions = answer_text.lower().count("answer")
                if self.fast_path and mentions == 0:
                    continue  # every anchored pattern needs the word "answer": nothing to extract, wrong
                final = _FINAL_ANSWER_AT_END.search(answer_text) if mentions == 1 else None
                candidate = final.group(1).strip() if final else None
            if self.fast_path and candidate:
                settled = _settle(gold, gold_numbers[gold], candidate)
                if settled == "same_spelling":
                    exact.setdefault(gold, []).append(row)  # correct once the gold is known to parse
                    continue
                if settled is not None:
                    rewards[row] = float(settled == "right")
                    continue
            pending.setdefault(gold, {}).setdefault(answer_text, []).append(row)
        for gold in rows_of_gold:
            if gold_numbers[gold] is None:
                pending.setdefault(gold, {})  # a gold that is not a plain number must parse for any verdict to count

        if not pending:
            return rewards
        pool = get_default_pool(1 if self.workers == 0 else self.workers)  # 0: serial, on one helper process
        units = [("\\boxed{" + gold + "}", list(answers)) for gold, answers in pending.items()]
        for (gold, answers), result in zip(pending.items(), pool.run(units, self.timeout), strict=True):
            if not result.gold_parseable:
                reason = "could not be parsed" if result.gold_parseable is False else "timed out while parsing"
                _warn_unparseable_gold(gold, reason)
                for row in rows_of_gold[gold]:
                    rewards[row] = None
                continue
            for rows, verdict in zip(answers.values(), result.verdicts, strict=True):
                for row in rows:
                    rewards[row] = float(verdict)
            for row in exact.get(gold, []):
                rewards[row] = 1.0
        return rewards


def make_math_verifier(
    mode: Mode = "math",
    *,
    timeout: float = DEFAULT_TIMEOUT_S,
    workers: int | None = None,
    fast_path: bool = True,
    name: str = "math_verifier",
) -> MathVerifier:
    r"""Build a binary math reward function for TRL (see :class:`MathVerifier` for the arguments).

    >>> strict = make_math_verifier("strict")
    >>> strict([r"\boxed{1,000}", r"\boxed{1000.0}"], solution=["1000", "1000"])
    [1.0, 0.0]
    """
    return MathVerifier(mode=mode, timeout=timeout, workers=workers, fast_path=fast_path, name=name)


math_verifier = make_math_verifier()
"""The default verifier: math mode, 5 s hard timeout per verification, one worker per CPU."""

dapo_strict_box = make_math_verifier("dapo_strict_box", name="dapo_strict_box")
"""The NFT authors' training verdict (verl's ``math_dapo`` strict box); logged as ``rewards/dapo_strict_box/mean``."""
