"""The embedded tasks, as TRL conversational datasets: two-digit addition (the default) and countdown.

Addition: `Compute a + b. Put the final answer in \\boxed{}.` (operands 10..99), answered with the bare box, e.g.
`\\boxed{57}`. `EmbeddedConfig(num_operands=3)` gives the harder `a + b - c` (with `c <= a + b`) and
`worked_answer=True` a worked line before the box. The gold answer is in the `solution` column, as TRL's accuracy
rewards and `math_verifier` expect. A wrong answer is mostly a near miss (a digit or a carry off).

Countdown (`EmbeddedConfig.countdown()`): `Make 22 from 12, 7, 3 with + -, each number once. Put the final answer in
\\boxed{}.`, answered with an expression, e.g. `\\boxed{12+7+3}`; the target is the value of a random expression of
the numbers (a random order and operators from `countdown_operators`, standard precedence, targets 1..99). Every
expression that uses each number once and reaches the target is right (`nft_trl.rewards.countdown.countdown_reward`,
reading the `numbers` and `target` columns), so a wrong answer is a different plan, not a near miss. `task_reward`
gives each task's verdict.

Prompts are TRL conversational prompts (`[{"role": "user", ...}]`). Every problem belongs to exactly one of
"train" and "test" (decided by a hash of the problem), so train and held-out sets are disjoint for any seed. A third
split, "validation", is carved out of the train region by a second, independent hash (for choosing hyper-parameters
without touching the held-out set); "train" keeps those problems unless `exclude_validation=True`, so the train and
test problems, and the embedded builds, are the same as without it.

>>> from nft_trl.embedded.task import make_dataset
>>> held_out = make_dataset("test", 256, seed=0)
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from datasets import Dataset

from nft_trl.rewards.countdown import countdown_reward, evaluate_expression

from .config import DEFAULT_CONFIG, EmbeddedConfig


SPLITS = ("train", "validation", "test")
# Every problem is assigned to one split by a hash of its operands: this many percent go to "test".
HELD_OUT_PERCENT = 10
# A second hash (salted, so independent of the first) puts this many percent of the train region in "validation".
VALIDATION_PERCENT = 10
VALIDATION_SALT = "validation:"
PERCENT = 100
# `make_dataset` gives up after this many draws per requested row (the problem space has ~600k problems).
MAX_DRAWS_PER_ROW = 50

INSTRUCTION = "Put the final answer in \\boxed{}."
# Countdown: the range of targets kept (the operators are `EmbeddedConfig.countdown_operators`).
COUNTDOWN_TARGETS = (1, 99)


class _SplitByHash:
    """Split membership fixed by hashes of a problem's `key` (independent of any seed)."""

    key: str

    @property
    def split(self) -> str:
        """The split this problem belongs to: "test" or "train"."""
        digest = hashlib.sha256(self.key.encode()).digest()
        return "test" if int.from_bytes(digest[:4], "big") % PERCENT < HELD_OUT_PERCENT else "train"

    @property
    def in_validation(self) -> bool:
        """Whether this problem is a validation problem: a train-region problem picked by a second, salted hash."""
        digest = hashlib.sha256((VALIDATION_SALT + self.key).encode()).digest()
        return self.split == "train" and int.from_bytes(digest[:4], "big") % PERCENT < VALIDATION_PERCENT

    def in_split(self, split: str, exclude_validation: bool = False) -> bool:
        """Membership of `split`; "train" includes the validation problems unless `exclude_validation`."""
        if split == "validation":
            return self.in_validation
        return self.split == split and not (exclude_validation and self.in_validation)


@dataclass(frozen=True)
class Problem(_SplitByHash):
    """One `a + b` problem, or `a + b - c` when `c` is given."""

    a: int
    b: int
    c: int | None = None

    @property
    def answer(self) -> int:
        return self.a + self.b - (self.c or 0)

    @property
    def expression(self) -> str:
        return f"{self.a} + {self.b}" if self.c is None else f"{self.a} + {self.b} - {self.c}"

    @property
    def key(self) -> str:
        return self.expression

    def columns(self) -> dict:
        """The problem's dataset columns besides the prompt."""
        return {"solution": str(self.answer)}

    def prompt(self) -> list[dict[str, str]]:
        return [{"role": "user", "content": f"Compute {self.expression}. {INSTRUCTION}"}]

    def completion(self, worked: bool = False) -> str:
        """The reference answer of the warm-up: the boxed result, after one worked line if `worked`."""
        boxed = f"\\boxed{{{self.answer}}}"
        if not worked:
            return boxed
        if self.c is None:
            return f"{self.expression} = {self.answer}. {boxed}"
        total = self.a + self.b
        return f"{self.a} + {self.b} = {total}, {total} - {self.c} = {self.answer}. {boxed}"


@dataclass(frozen=True)
class CountdownProblem(_SplitByHash):
    """Reach `target` from `numbers` (each once) with `operators`; `plan` is the expression the target was made from.

    `plan` is one right answer (the warm-up's), not part of the problem's identity.
    """

    numbers: tuple[int, ...]
    target: int
    operators: str
    plan: str = field(default="", compare=False)

    @property
    def key(self) -> str:
        return f"countdown {','.join(map(str, self.numbers))} -> {self.target}"

    def columns(self) -> dict:
        return {"numbers": list(self.numbers), "target": self.target}

    def prompt(self) -> list[dict[str, str]]:
        numbers = ", ".join(map(str, self.numbers))
        operators = " ".join(self.operators)
        return [
            {
                "role": "user",
                "content": f"Make {self.target} from {numbers} with {operators}, each number once. {INSTRUCTION}",
            }
        ]

    def completion(self, worked: bool = False) -> str:
        """The warm-up's answer: the boxed plan."""
        if worked:
            raise ValueError("Countdown answers have no worked form.")
        return f"\\boxed{{{self.plan}}}"


def _random_countdown(rng: random.Random, config: EmbeddedConfig) -> CountdownProblem:
    """Numbers drawn at random; the target is a random expression of them (random order and operators)."""
    low, high = COUNTDOWN_TARGETS
    while True:
        numbers = tuple(rng.randint(config.min_operand, config.max_operand) for _ in range(config.num_operands))
        order = list(numbers)
        rng.shuffle(order)
        operators = [rng.choice(config.countdown_operators) for _ in range(len(order) - 1)]
        plan = "".join(f"{n}{op}" for n, op in zip(order, [*operators, ""], strict=True))
        value, _ = evaluate_expression(plan)
        if low <= value <= high:
            return CountdownProblem(numbers, int(value), config.countdown_operators, plan)


def _random_problem(rng: random.Random, config: EmbeddedConfig) -> Problem | CountdownProblem:
    if config.task == "countdown":
        return _random_countdown(rng, config)
    while True:
        a, b = rng.randint(config.min_operand, config.max_operand), rng.randint(config.min_operand, config.max_operand)
        if config.num_operands == 2:
            return Problem(a, b)
        c = rng.randint(config.min_operand, config.max_operand)
        if c <= a + b:  # keep answers non-negative
            return Problem(a, b, c)


def _split_rng(split: str, seed: int) -> random.Random:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}.")
    # A string seed is hashed deterministically by `random.Random` (unlike `hash()`, it is not salted per process).
    return random.Random(f"{split}-{seed}")


def iter_problems(split: str, seed: int, config: EmbeddedConfig) -> Iterator[Problem | CountdownProblem]:
    """Endless deterministic stream of problems of `split` (with repeats): the supervised warm-up data."""
    rng = _split_rng(split, seed)
    while True:
        problem = _random_problem(rng, config)
        if problem.in_split(split):
            yield problem


def make_problems(
    split: str = "train",
    n: int = 1_000,
    seed: int = 0,
    config: EmbeddedConfig | None = None,
    exclude_validation: bool = False,
) -> list[Problem | CountdownProblem]:
    """`n` distinct problems of `split` ("train", "validation" or "test"), deterministic in `seed`.

    With `exclude_validation`, "train" skips the validation problems (the same draws, minus those).
    """
    config = config or DEFAULT_CONFIG
    rng = _split_rng(split, seed)
    problems: list[Problem] = []
    seen: set[Problem] = set()
    for _ in range(n * MAX_DRAWS_PER_ROW):
        if len(problems) == n:
            break
        problem = _random_problem(rng, config)
        if problem.in_split(split, exclude_validation) and problem not in seen:
            seen.add(problem)
            problems.append(problem)
    if len(problems) < n:
        raise ValueError(f"Could not draw {n} distinct {split!r} problems from the operand range; ask for fewer.")
    return problems


def make_dataset(
    split: str = "train",
    n: int = 1_000,
    seed: int = 0,
    config: EmbeddedConfig | None = None,
    exclude_validation: bool = False,
) -> Dataset:
    """The task as a `datasets.Dataset` with TRL's columns: `prompt` (conversational) and the verdict's columns.

    Addition rows have `solution` (the gold answer, for `math_verifier`); countdown rows `numbers` and `target` (for
    `countdown_reward`).

    Args:
        split: "train", "validation" or "test". "test" is disjoint from the other two whatever the seeds;
            "validation" is a part of the train region, disjoint from "train" only with `exclude_validation`.
        n: number of rows (distinct problems).
        seed: selects which problems are drawn; the same `(split, n, seed)` always gives the same rows.
        config: the task and its ranges; defaults to the embedded default (addition).
        exclude_validation: with split "train", leave out the validation problems.
    """
    problems = make_problems(split, n, seed, config, exclude_validation)
    rows = [{"prompt": p.prompt(), **p.columns()} for p in problems]
    return Dataset.from_dict({name: [row[name] for row in rows] for name in rows[0]} if rows else {"prompt": []})


def task_reward(config: EmbeddedConfig | None = None) -> Callable[..., list[float | None]]:
    """The verdict of `config`'s task: `math_verifier` on `solution` (addition), `countdown_reward` (countdown)."""
    config = config or DEFAULT_CONFIG
    if config.task == "countdown":
        return countdown_reward
    from nft_trl.rewards.verifier import math_verifier

    return math_verifier
