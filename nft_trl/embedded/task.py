"""The embedded task: two-digit addition with the answer in `\\boxed{}`, as a TRL conversational dataset.

`Compute a + b. Put the final answer in \\boxed{}.` (operands 10..99), answered with the bare box, e.g. `\\boxed{57}`.
`EmbeddedConfig(num_operands=3)` gives the harder `a + b - c` (with `c <= a + b`) and `worked_answer=True` a worked
line before the box. Prompts are TRL conversational prompts (`[{"role": "user", ...}]`) and the gold answer is in the
`solution` column, as TRL's accuracy rewards and `math_verifier` expect. Every problem belongs to exactly one of
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
from collections.abc import Iterator
from dataclasses import dataclass

from datasets import Dataset

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


@dataclass(frozen=True)
class Problem:
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
    def split(self) -> str:
        """The split this problem belongs to, fixed by a hash of its operands (independent of any seed)."""
        digest = hashlib.sha256(self.expression.encode()).digest()
        return "test" if int.from_bytes(digest[:4], "big") % PERCENT < HELD_OUT_PERCENT else "train"

    @property
    def in_validation(self) -> bool:
        """Whether this problem is a validation problem: a train-region problem picked by a second, salted hash."""
        digest = hashlib.sha256((VALIDATION_SALT + self.expression).encode()).digest()
        return self.split == "train" and int.from_bytes(digest[:4], "big") % PERCENT < VALIDATION_PERCENT

    def in_split(self, split: str, exclude_validation: bool = False) -> bool:
        """Membership of `split`; "train" includes the validation problems unless `exclude_validation`."""
        if split == "validation":
            return self.in_validation
        return self.split == split and not (exclude_validation and self.in_validation)

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


def _random_problem(rng: random.Random, config: EmbeddedConfig) -> Problem:
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


def iter_problems(split: str, seed: int, config: EmbeddedConfig) -> Iterator[Problem]:
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
) -> list[Problem]:
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
    """The task as a `datasets.Dataset` with TRL's columns: `prompt` (conversational) and `solution` (gold answer).

    Args:
        split: "train", "validation" or "test". "test" is disjoint from the other two whatever the seeds;
            "validation" is a part of the train region, disjoint from "train" only with `exclude_validation`.
        n: number of rows (distinct problems).
        seed: selects which problems are drawn; the same `(split, n, seed)` always gives the same rows.
        config: operand range; defaults to the embedded default.
        exclude_validation: with split "train", leave out the validation problems.
    """
    problems = make_problems(split, n, seed, config, exclude_validation)
    return Dataset.from_dict({"prompt": [p.prompt() for p in problems], "solution": [str(p.answer) for p in problems]})
