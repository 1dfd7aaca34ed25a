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

With ``--pathological``, it measures instead what pathological answers cost a batch, with and without the batch
deadline: one batch of the same inputs clean, then with 1% and 3% of its completions replaced by boxed power towers
(SymPy never finishes one: each holds a worker for the whole per-answer timeout), each graded with no deadline
(``batch_timeout=math.inf``), the default deadline, and ``--batch-timeout`` seconds. It prints answers per second,
the ratio to the clean batch, the answers the deadline left unverified and the right answers that cost (graded 0.0).

    python benchmarks/verifier_throughput.py --pathological [--fractions 0.01 0.03] [--batch-timeout 7]
"""

import argparse
import json
import logging
import math
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


def power_tower(index: int) -> str:
    """A completion whose boxed answer SymPy never finishes evaluating; a different one for each ``index``."""
    base = 3 + index % 97
    return f"{REASONING}Therefore the result is $\\boxed{{{base}^{{{base}^{{{base}^{{{base}}}}}}}}}$."


def with_pathological(completions: list[str], fraction: float, seed: int) -> tuple[list[str], set[int]]:
    """``completions`` with ``round(fraction * len)`` of them, at seeded random rows, replaced by power towers."""
    rows = set(random.Random(seed).sample(range(len(completions)), round(fraction * len(completions))))
    return [power_tower(row) if row in rows else text for row, text in enumerate(completions)], rows


def pathological_comparison(args: argparse.Namespace) -> int:
    """Batches clean and with `args.fractions` of pathological answers, each with and without a batch deadline.

    Every timed batch has golds of its own (as in training, where each batch brings new questions): the workers'
    parse caches carry nothing from one batch to the next. After each timed batch, its clean version is graded with no
    deadline (untimed) to tell the right answers a deadline graded 0.0 ("right lost").
    """
    settings = {"none": math.inf, "default": None, f"{args.batch_timeout:g} s": args.batch_timeout}
    verifiers = {
        label: make_math_verifier(workers=args.workers, batch_timeout=value) for label, value in settings.items()
    }
    reference = verifiers["none"]
    start = time.perf_counter()
    warm_golds, source = load_golds(args.golds, start=0)
    warm_completions, warm_solutions = make_completions(warm_golds, args.k, args.seed, args.distractors)
    reference(warm_completions, solution=warm_solutions)  # starts the workers; SymPy and ANTLR warm up
    workers = get_default_pool(args.workers).workers
    n = len(warm_completions)
    print(
        f"inputs: {args.golds} golds per batch from {source}, K={args.k}: {n} completions per batch; {workers} workers, "
        f"timeout {reference.timeout:g} s per verification; warm-up {time.perf_counter() - start:.1f} s"
    )
    header = f"{'batch':<24}{'deadline':<18}{'seconds':>8}{'answers/s':>11}{'vs clean':>10}{'unverified':>12}{'right lost':>12}"
    print(header)
    clean_rates, batch_index = [], 0
    for fraction in [0.0, *args.fractions]:
        for label, verifier in verifiers.items():
            batch_index += 1
            golds, _ = load_golds(args.golds, start=batch_index * args.golds)
            completions, solutions = make_completions(golds, args.k, args.seed + batch_index, args.distractors)
            batch, rows = with_pathological(completions, fraction, args.seed + batch_index)
            start = time.perf_counter()
            rewards = verifier(batch, solution=solutions)
            seconds = time.perf_counter() - start
            deadline = verifier.counts.last_deadline
            unverified = verifier.counts.last_unverified
            lost = 0
            if unverified:
                clean = reference(completions, solution=solutions)
                lost = sum(1 for row, reward in enumerate(rewards) if row not in rows and clean[row] == 1.0 != reward)
            rate = len(batch) / seconds
            if not fraction:
                clean_rates.append(rate)
            name = "clean" if not fraction else f"{fraction:.0%} pathological ({len(rows)})"
            shown = label if deadline == math.inf else f"{label} ({deadline:.1f} s)"
            versus = rate / (sum(clean_rates) / len(clean_rates))
            print(f"{name:<24}{shown:<18}{seconds:8.2f}{rate:11.1f}{versus:9.3f}x{unverified:12d}{lost:12d}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--golds", type=int, default=64, help="distinct gold answers (questions) per round")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds, each on new golds")
    parser.add_argument("--k", type=int, default=16, help="completions per gold (num_generations)")
    parser.add_argument("--distractors", type=int, default=3, help="distinct wrong answers per question")
    parser.add_argument("--workers", type=int, default=None, help="verifier worker processes (default: CPUs)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pathological", action="store_true", help="measure pathological answers and the deadline")
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.01, 0.03], help="pathological shares")
    parser.add_argument("--batch-timeout", type=float, default=7.0, help="the explicit deadline compared (seconds)")
    args = parser.parse_args()
    logging.getLogger("math_verify").setLevel(logging.ERROR)  # "timeout disabled" notices: deliberate here
    if args.pathological:
        logging.getLogger("nft_trl.rewards").setLevel(logging.ERROR)  # the timeouts and deadlines are the point here
        return pathological_comparison(args)

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
