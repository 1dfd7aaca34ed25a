"""The embedded task: two-digit addition with the answer in `\\boxed{}`, as a TRL conversational dataset.

`Compute a + b. Put the final answer in \\boxed{}.` (operands 10..99), answered with the bare box, e.g. `\\boxed{57}`.
`EmbeddedConfig(num_operands=3)` gives the harder `a + b - c` (with `c <= a + b`) and `worked_answer=True` a worked
line before the box. Prompts are TRL conversational prompts (`[{"role": "user", ...}]`) and the gold answer is in the
`solution` column, as TRL's accuracy rewards and `math_verifier` expect. Every problem belongs to exactly one split
(decided by a hash of the problem), so train and held-out sets are disjoint for any seed.

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


SPLITS = ("train", "test")
# Every problem is assigned to one split by a hash of its operands: this many percent go to "test".
HELD_OUT_PERCENT = 10
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
        if problem.split == split:
            yield problem


def make_problems(
    split: str = "train", n: int = 1_000, seed: int = 0, config: EmbeddedConfig | None = None
) -> list[Problem]:
    """`n` distinct problems of `split` ("train" or "test"), deterministic in `seed`."""
    config = config or DEFAULT_CONFIG
    rng = _split_rng(split, seed)
    problems: list[Problem] = []
    seen: set[Problem] = set()
    for _ in range(n * MAX_DRAWS_PER_ROW):
        if len(problems) == n:
            break
        problem = _random_problem(rng, config)
        if problem.split == split and problem not in seen:
            seen.add(problem)
            problems.append(problem)
    if len(problems) < n:
        raise ValueError(f"Could not draw {n} distinct {split!r} problems from the operand range; ask for fewer.")
    return problems


def make_dataset(split: str = "train", n: int = 1_000, seed: int = 0, config: EmbeddedConfig | None = None) -> Dataset:
    """The task as a `datasets.Dataset` with TRL's columns: `prompt` (conversational) and `solution` (gold answer).

    Args:
        split: "train" or "test". The two are disjoint whatever the seeds.
        n: number of rows (distinct problems).
        seed: selects which problems are drawn; the same `(split, n, seed)` always gives the same rows.
        config: operand range; defaults to the embedded default.
    """
    problems = make_problems(split, n, seed, config)
    return Dataset.from_dict({"prompt": [p.prompt() for p in problems], "solution": [str(p.answer) for p in problems]})
