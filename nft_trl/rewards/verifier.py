r"""Binary math-answer reward for NFT/GRPO: right, fast, and never able to hang a run.

NFT splits every group of answers into positives and negatives with a binary verifier, so each wrong verdict flips
the sign of a gradient. This module grades with math-verify (SymPy, latex2sympy2_extended) and makes it safe at
training scale:

- **Hard timeout, no signals.** math-verify's own timeouts use ``SIGALRM``, which only works on the main thread. Here
  they are disabled and every SymPy step runs in a worker process that is killed when one verification exceeds
  ``timeout`` seconds; that answer is graded 0.0 (see :mod:`nft_trl.rewards.pool`). No worker outlives the training
  process, however it ends.
- **A deadline per batch** (``batch_timeout``). Each answer that hits the timeout holds a worker for ``timeout``
  seconds, so a handful of pathological answers could stall a whole batch (16 of them: 40 s for 256 answers on 2
  workers). When a batch's deadline passes, the answers still unverified are graded 0.0, counted in
  :attr:`MathVerifier.counts` and reported in one warning, and their workers are killed and replaced.
- **Throughput.** A batch is graded in parallel. Each distinct gold is parsed once per batch (once per worker when
  the answers of a small batch are split across workers for balance), identical (gold, answer) pairs are graded
  once, and plain numbers, identical spellings and completions with no answer at all are settled before SymPy,
  with the same verdicts math-verify gives (tested). The pool is created on first use and reused until exit.
- **Answer extraction** (:mod:`nft_trl.rewards.answers`). The last ``\boxed{...}`` (nested braces, ``\boxed 5``, ``\fbox{...}``) is the answer; an
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

    >>> from nft_trl import make_math_verifier, math_verifier
    >>> math_verifier([r"so \boxed{\dfrac{1}{2}}", r"\boxed{0.4}"], solution=["0.5", "0.5"])
    [1.0, 0.0]
    >>> strict = make_math_verifier(mode="strict")  # last box, normalised string match
    >>> authors = make_math_verifier(mode="dapo_strict_box")  # the NFT authors' training verdict (verl math_dapo)

Rewards: 1.0 correct, 0.0 wrong (no extractable answer and truncated answers included), ``None`` when the gold
cannot be parsed (TRL turns it into NaN and ignores it). An answer the batch deadline cut is 0.0 too: wrong, not
unscored (see ``batch_timeout`` in :class:`MathVerifier`). POSIX only (workers fork).
"""

import logging
import os
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, ClassVar, Literal

from .answers import (
    _FRAC_VARIANT,
    _SIZING,
    _THOUSANDS,
    completion_text,
    extract_dapo_strict_box,
    extract_last_boxed,
    find_last_box,
    gold_text,
    normalize_answer,
)
from .columns import TRL_REWARD_KWARGS
from .pool import get_default_pool


logger = logging.getLogger(__name__)

__all__ = ["MathVerifier", "VerifierCounts", "dapo_strict_box", "make_math_verifier", "math_verifier"]

# Seconds one verification (parse + compare of one answer, or the parse of one gold) may take before its worker is
# killed and the answer graded 0.0. math-verify's own default is 5 s; typical verifications take milliseconds.
DEFAULT_TIMEOUT_S = 5.0
# The default batch deadline (batch_timeout=None): timeout + BATCH_TIMEOUT_BASE_S, plus BATCH_TIMEOUT_PER_ANSWER_S
# for each verification the batch sends to the workers, divided by the number of workers. A verification takes 5 to
# 25 ms on one busy core (MATH500 / GSM8K answers), so honest batches of any size finish well within it.
BATCH_TIMEOUT_BASE_S = 5.0
BATCH_TIMEOUT_PER_ANSWER_S = 0.05
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

Mode = Literal["math", "strict", "dapo_strict_box"]
_MODES = ("math", "strict", "dapo_strict_box")

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


_warned_golds: set[str] = set()
_warned_golds_lock = threading.Lock()


def _reset_lock_after_fork() -> None:
    global _warned_golds_lock
    _warned_golds_lock = threading.Lock()  # another thread may have held it at the fork


os.register_at_fork(after_in_child=_reset_lock_after_fork)


def _warn_unparseable_gold(gold: str, reason: str) -> None:
    with _warned_golds_lock:
        if gold in _warned_golds:
            return
        _warned_golds.add(gold)
    logger.warning("math_verifier: gold answer %r %s; its completions get reward None.", gold[:200], reason)


@dataclass
class VerifierCounts:
    """What the batch deadline did to one :class:`MathVerifier`'s batches, for a trainer to log.

    ``last_unverified`` is the number of answers (completions) of the most recent call graded 0.0 because its
    deadline passed before they were verified; ``unverified`` and ``cut_batches`` add up over the verifier's life.
    """

    batches: int = 0  # calls in math mode
    cut_batches: int = 0  # calls whose deadline passed with answers still unverified
    unverified: int = 0  # answers graded 0.0 because the deadline passed first
    last_unverified: int = 0  # the same, in the most recent call
    last_deadline: float = 0.0  # the most recent call's deadline in seconds (0.0: nothing went to the workers)


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
        batch_timeout (`float` or `None`, *optional*, defaults to `None`):
            Deadline in seconds for one call's SymPy work (math mode), counted from when its first answer reaches a
            worker (worker start-up and waiting for another thread's call are not counted). When it passes, the
            answers not verified yet are graded 0.0, counted in :attr:`counts`, and reported in one warning per
            call; the workers busy on them are killed and replaced. `None` picks ``timeout + 5 s + 0.05 s x
            (verifications sent to the workers) / workers`` (10 s for a small batch at the default timeout): a
            few seconds beyond one timeout, and far above what honest answers take however many there are.
            `math.inf` turns the deadline off.

            0.0 means *wrong*, not unscored: NFT counts such an answer in its group's correct rate and trains on it
            as a negative (``None`` would leave it out of both). That is right for what stalls a batch (answers
            SymPy cannot finish, such as power towers and huge factorials, are almost never correct, and a policy
            must not learn that unverifiable output escapes the loss), and wrong for a right answer that merely
            waited behind them; hence the generous default and the warning. Answers already settled without SymPy
            (plain numbers, an answer spelled as its gold) keep their verdict.
        workers (`int` or `None`, *optional*, defaults to `None`):
            Worker processes (math mode): None uses :func:`default_workers`. 0 means serial grading; as SymPy cannot
            be interrupted inside a thread without signals, serial grading still runs on one helper process
            (exactly like 1), so that the hard timeout holds.
        fast_path (`bool`, *optional*, defaults to `True`):
            Settle plain numbers and identical strings without SymPy (verdicts are the same as math-verify's).
        name (`str`, *optional*, defaults to `"math_verifier"`):
            The ``__name__`` TRL logs the reward under (``rewards/<name>/mean``).

    Attributes:
        counts (`VerifierCounts`):
            Batches and answers the deadline cut, for a trainer's logs (``counts.last_unverified`` after each call).
    """

    #: The dataset column it grades against, checked when the trainer is built (`rewards.columns`): the signature's
    #: default for `solution` only lets a direct call without it say what is missing.
    required_columns: ClassVar[tuple[str, ...]] = ("solution",)

    mode: Mode = "math"
    timeout: float = DEFAULT_TIMEOUT_S
    workers: int | None = None
    fast_path: bool = True
    name: str = "math_verifier"
    batch_timeout: float | None = None
    counts: VerifierCounts = field(default_factory=VerifierCounts, init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.mode not in _MODES:
            raise ValueError(f"mode must be one of {_MODES}, got {self.mode!r}.")
        if not self.timeout > 0:
            raise ValueError(f"timeout must be a positive number of seconds, got {self.timeout!r}.")
        if self.batch_timeout is not None and not self.batch_timeout > 0:
            raise ValueError(
                f"batch_timeout must be None (automatic), a positive number of seconds, or math.inf (no deadline); "
                f"got {self.batch_timeout!r}."
            )
        if self.workers is not None and self.workers < 0:
            raise ValueError(f"workers must be None or >= 0, got {self.workers}.")
        object.__setattr__(self, "__name__", self.name)  # TRL names a reward function by its __name__

    def __call__(
        self, completions: Sequence[Any], solution: Sequence[Any] | None = None, **kwargs: Any
    ) -> list[float | None]:
        """Grade ``completions`` against the gold answers in ``solution`` (one per completion); ignore ``kwargs``."""
        if solution is None:
            columns = sorted(set(kwargs) - TRL_REWARD_KWARGS)
            raise ValueError(
                f"{self.name} needs the gold answers in a dataset column named `solution` (TRL passes dataset columns "
                f"by name); got the columns {columns}. Rename the gold-answer column to `solution`."
            )
        if len(completions) != len(solution):
            raise ValueError(
                f"Got {len(completions)} completions but {len(solution)} gold answers in `solution`; TRL passes one "
                "gold answer per completion (the dataset's `solution` column)."
            )
        texts = [completion_text(completion) for completion in completions]
        if self.mode == "dapo_strict_box":
            return self._grade_dapo_strict_box(texts, solution)
        golds = [gold_text(gold) for gold in solution]
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

    def batch_deadline(self, verifications: int, workers: int) -> float:
        """The deadline in seconds for a call that sends ``verifications`` parses and comparisons to ``workers``."""
        if self.batch_timeout is not None:
            return self.batch_timeout
        return self.timeout + BATCH_TIMEOUT_BASE_S + BATCH_TIMEOUT_PER_ANSWER_S * verifications / max(1, workers)

    def _grade_math(self, texts: list[str], golds: list[str]) -> list[float | None]:
        self.counts.batches += 1
        self.counts.last_unverified, self.counts.last_deadline = 0, 0.0
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
            boxed = find_last_box(text)
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
        deadline = self.batch_deadline(len(units) + sum(len(answers) for _, answers in units), pool.workers)
        self.counts.last_deadline = deadline
        unverified = 0
        for (gold, answers), result in zip(pending.items(), pool.run(units, self.timeout, deadline), strict=True):
            if result.gold_parseable is False or (result.gold_failed and result.gold_parseable is None):
                reason = "could not be parsed" if result.gold_parseable is False else "timed out while parsing"
                _warn_unparseable_gold(gold, reason)
                for row in rows_of_gold[gold]:
                    rewards[row] = None
                continue
            # Parsed, or not reached before the deadline (then every answer of it is unverified, graded 0.0).
            rows_of_answer = list(answers.values())
            for rows, verdict in zip(rows_of_answer, result.verdicts, strict=True):
                for row in rows:
                    rewards[row] = float(verdict)
            unverified += sum(len(rows_of_answer[index]) for index in result.unverified)
            for row in exact.get(gold, []):
                rewards[row] = 1.0
        if unverified:
            self.counts.cut_batches += 1
            self.counts.unverified += unverified
            self.counts.last_unverified = unverified
            logger.warning(
                "%s: the batch deadline (%.1f s) passed with %d of %d answers not verified yet; they were graded 0.0 "
                "(wrong) and their worker processes killed and replaced. Set batch_timeout (make_math_verifier) "
                "higher if these answers were not pathological.",
                self.name,
                deadline,
                unverified,
                len(texts),
            )
        return rewards


def make_math_verifier(
    mode: Mode = "math",
    *,
    timeout: float = DEFAULT_TIMEOUT_S,
    workers: int | None = None,
    fast_path: bool = True,
    name: str = "math_verifier",
    batch_timeout: float | None = None,
) -> MathVerifier:
    r"""Build a binary math reward function for TRL (see :class:`MathVerifier` for the arguments).

    >>> strict = make_math_verifier("strict")
    >>> strict([r"\boxed{1,000}", r"\boxed{1000.0}"], solution=["1000", "1000"])
    [1.0, 0.0]
    """
    return MathVerifier(
        mode=mode, timeout=timeout, workers=workers, fast_path=fast_path, name=name, batch_timeout=batch_timeout
    )


math_verifier = make_math_verifier()
"""The default verifier: math mode, 5 s hard timeout per verification, the default batch deadline, one worker per
CPU."""

dapo_strict_box = make_math_verifier("dapo_strict_box", name="dapo_strict_box")
"""The NFT authors' training verdict (verl's ``math_dapo`` strict box); logged as ``rewards/dapo_strict_box/mean``."""
