r"""Throughput of `nft_trl.math_verifier` against plain sequential math-verify, on the same inputs, same verdicts.

Inputs: gold answers from the shared benchmark folder (MATH500 `answer` and GSM8K test `#### n`; a small synthetic
set when the folder is absent), K completions per gold as a policy would write them: the right answer boxed (as
written, or an equivalent form), a wrong answer boxed, an unboxed "The final answer is $...$", and a truncated
completion with no answer.

Baseline: for every completion, `math_verify.parse(r"\boxed{gold}")`, `math_verify.parse(completion)` and
`math_verify.verify(...)`, one after the other in this process, with math-verify's signal timeouts off and the same
extraction config as the verifier's workers. The verifier is timed with its pool already started, as in a training
run that reuses it; the worker start-up time is printed separately.

    python benchmarks/verifier_throughput.py [--golds 64] [--rounds 3] [--k 16] [--distractors 3] [--workers N] [--seed 0]

Prints both rates (verifications per second) and their ratio, and exits with status 1 if any verdict differs.
"""

import argparse
import json
import logging
import os
import random
import sys
import time
from pathlib import Path


REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from nft_trl import make_math_verifier  # noqa: E402
from nft_trl.rewards.pool import get_default_pool  # noqa: E402


BENCHMARKS_DIR = Path(os.environ.get("NFT_TRL_BENCHMARKS_DIR", REPO_ROOT.parent / "shared/data/benchmarks"))
SYNTHETIC_GOLDS = [
    "42",
    "1000",
    "-7",
    "\\frac{3}{4}",
    "0.25",
    "2\\sqrt{3}",
    "\\frac{\\pi}{6}",
    "(1, 2)",
    "[0, 5)",
    "\\{1, 2, 3\\}",
    "x^2 + 1",
    "3\\sqrt{2} - 1",
    "\\frac{1 + \\sqrt{5}}{2}",
    "12\\pi",
    "(-\\infty, 3]",
    "\\text{(B)}",
]
REASONING = (
    "Let us set up the problem. We write the quantity as $f(n) = n^2 + 3n$ and evaluate step by step. "
    "Substituting $n = 4$ gives $16 + 12 = 28$, and simplifying $\\frac{28}{4} = 7$ leads us forward. "
)


def load_golds(count: int, start: int = 0) -> tuple[list[str], str]:
    """Half MATH500 answers, half GSM8K answers (`count / 2` rows of each from row `start`), or a synthetic set."""
    math500, gsm8k = BENCHMARKS_DIR / "math500.jsonl", BENCHMARKS_DIR / "gsm8k_test.jsonl"
    half = count // 2
    if not (math500.is_file() and gsm8k.is_file()):
        rotated = SYNTHETIC_GOLDS[start % len(SYNTHETIC_GOLDS) :] + SYNTHETIC_GOLDS[: start % len(SYNTHETIC_GOLDS)]
        return (rotated * (count // len(rotated) + 1))[:count], "a synthetic set (benchmark folder absent)"
    with math500.open() as f:
        latex = [json.loads(line)["answer"] for line in f]
    with gsm8k.open() as f:
        numbers = [json.loads(line)["answer"].rsplit("####", 1)[1].strip() for line in f]
    picked = [latex[(start + i) % len(latex)] for i in range(half)]  # wraps around if asked for more than a file has
    picked += [numbers[(start + i) % len(numbers)] for i in range(count - half)]
    return picked, str(BENCHMARKS_DIR)


def equivalent_form(gold: str, rng: random.Random) -> str:
    """The gold as written, or an equivalent spelling a model might produce."""
    forms = [gold, gold.replace("\\frac", "\\dfrac"), gold.replace(",", ", "), f"x = {gold}"]
    if gold.isdigit() and len(gold) > 3:
        forms.append(f"{int(gold):,}")
    return rng.choice(forms)


def near_misses(gold: str, count: int, rng: random.Random) -> list[str]:
    """`count` wrong answers close to `gold`: an integer off by a little, or the gold with one digit changed."""
    misses = []
    for _ in range(count):
        if gold.lstrip("-").isdigit():
            misses.append(str(int(gold) + rng.choice([-2, -1, 1, 10])))
            continue
        digits = [i for i, char in enumerate(gold) if char.isdigit()]
        if not digits:
            misses.append(gold + " + 1")
            continue
        i = rng.choice(digits)
        misses.append(gold[:i] + str((int(gold[i]) + rng.randint(1, 8)) % 10) + gold[i + 1 :])
    return misses


def make_completions(golds: list[str], k: int, seed: int, distractors: int) -> tuple[list[str], list[str]]:
    """K completions per gold: ~40% right boxed, ~30% wrong boxed, ~20% unboxed final answer, ~10% truncated.

    Wrong answers are drawn from `distractors` near misses per question: a policy that errs tends to repeat the same
    few mistakes across its K samples.
    """
    rng = random.Random(seed)
    completions, solutions = [], []
    for gold in golds:
        wrong = near_misses(gold, distractors, rng)
        for _ in range(k):
            draw = rng.random()
            if draw < 0.4:
                text = f"{REASONING}Therefore the result is $\\boxed{{{equivalent_form(gold, rng)}}}$."
            elif draw < 0.7:
                text = f"{REASONING}Therefore the result is $\\boxed{{{rng.choice(wrong)}}}$."
            elif draw < 0.9:
                said = gold if rng.random() < 0.5 else rng.choice(wrong)
                text = f"{REASONING}The final answer is ${said}$."
            else:
                text = REASONING * 3  # truncated before any answer
            completions.append(text)
            solutions.append(gold)
    return completions, solutions


def baseline(completions: list[str], solutions: list[str]) -> list[float]:
    """Plain math-verify, one completion after the other."""
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

    # The extraction config the verifier's workers use (nft_trl/_worker.py).
    config = [
        LatexExtractionConfig(boxed_match_priority=0, try_extract_without_anchor=False),
        ExprExtractionConfig(try_extract_without_anchor=False),
    ]
    rewards = []
    for completion, gold in zip(completions, solutions, strict=True):
        gold_parsed = parse("\\boxed{" + gold + "}", extraction_config=config, parsing_timeout=None)
        answer_parsed = parse(completion, extraction_config=config, parsing_timeout=None)
        rewards.append(float(verify(gold_parsed, answer_parsed, timeout_seconds=None)))
    return rewards


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--golds", type=int, default=64, help="distinct gold answers (questions) per round")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds, each on new golds")
    parser.add_argument("--k", type=int, default=16, help="completions per gold (num_generations)")
    parser.add_argument("--distractors", type=int, default=3, help="distinct wrong answers per question")
    parser.add_argument("--workers", type=int, default=None, help="verifier worker processes (default: CPUs)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logging.getLogger("math_verify").setLevel(logging.ERROR)  # "timeout disabled" notices: deliberate here

    # Round 0 is a warm-up for both sides (not timed): SymPy builds parts of itself on first use and the LaTeX parser
    # (ANTLR) fills its prediction cache as it goes, so a process's first batch is slower than the steady state of a
    # training run; the verifier's workers also start only once per run. Each round uses new golds (no cache carries
    # a gold from one round to the next) and the two sides alternate which goes first, to even out load on the host.
    verifier = make_math_verifier(workers=args.workers)
    totals = {"ours": 0.0, "baseline": 0.0}
    n_total, disagreements = 0, []
    for round_index in range(args.rounds + 1):
        golds, source = load_golds(args.golds, start=round_index * args.golds)
        completions, solutions = make_completions(golds, args.k, args.seed + round_index, args.distractors)
        n = len(completions)
        timings = {}
        order = ("ours", "baseline") if round_index % 2 == 0 else ("baseline", "ours")
        for side in order:
            start = time.perf_counter()
            if side == "ours":
                ours = verifier(completions, solution=solutions)
            else:
                reference = baseline(completions, solutions)
            timings[side] = time.perf_counter() - start
        if round_index == 0:
            print(f"inputs per round: {len(golds)} golds from {source}, K={args.k}: {n} completions")
            print(f"round 0 (warm-up, worker start-up included): verifier {timings['ours']:.2f} s")
            continue
        for side, seconds in timings.items():
            totals[side] += seconds
        n_total += n
        disagreements += [
            (solutions[i], completions[i], ours[i], reference[i]) for i in range(n) if ours[i] != reference[i]
        ]
        print(
            f"round {round_index}: math-verify {timings['baseline']:.2f} s, verifier {timings['ours']:.2f} s "
            f"({timings['baseline'] / timings['ours']:.1f}x); correct {sum(r == 1.0 for r in ours)}/{n}"
        )

    ours_rate, base_rate = n_total / totals["ours"], n_total / totals["baseline"]
    workers = get_default_pool(args.workers).workers
    print(f"math-verify sequential      : {base_rate:8.1f} verifications/s ({totals['baseline']:.2f} s)")
    print(f"nft_trl.math_verifier ({workers} w): {ours_rate:8.1f} verifications/s ({totals['ours']:.2f} s)")
    print(f"speed-up: {ours_rate / base_rate:.1f}x over {n_total} completions")
    print(f"verdicts identical: {not disagreements} ({len(disagreements)} differ)")
    for gold, completion, ours_verdict, reference_verdict in disagreements[:10]:
        print(f"  gold {gold!r}: verifier {ours_verdict}, math-verify {reference_verdict}; {completion[-80:]!r}")
    return 1 if disagreements else 0


if __name__ == "__main__":
    sys.exit(main())
