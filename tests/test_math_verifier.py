r"""Tests for `nft_trl.math_verifier`: verdicts, the hard timeout, worker failures, and real benchmark golds.

Offline, CPU only. The real-data test reads the benchmark files from `NFT_TRL_BENCHMARKS_DIR` or from the `shared`
folder beside the repository checkout, and is skipped when neither exists. Run with `-s` to see the measured
worst-case latencies.
"""

import asyncio
import importlib
import json
import logging
import multiprocessing
import os
import pickle
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from nft_trl import make_math_verifier, math_verifier
from nft_trl.rewards.answers import extract_last_boxed, normalize_answer
from nft_trl.rewards.pool import get_default_pool


# `nft_trl.math_verifier` as an attribute is the reward function (the package re-exports it); this is the module.
mv = importlib.import_module("nft_trl.rewards.verifier")


REPO_ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS_DIR = Path(os.environ.get("NFT_TRL_BENCHMARKS_DIR", REPO_ROOT.parent / "shared/data/benchmarks"))
WORKERS = 2
# Per-verification timeout in these tests, and the scheduling slack allowed on top of it on a busy shared host.
TIMEOUT_S = 1.0
LATENCY_SLACK_S = 2.0
POWER_TOWER = r"\boxed{9^{9^{9^{9}}}}"  # SymPy tries to evaluate it: never returns
FACTORIAL = r"\boxed{1000000!}"  # SymPy compares it with the gold for about 12 s


@pytest.fixture(scope="module")
def verify():
    """A math-mode verifier with the test timeout, its two workers started."""
    verifier = make_math_verifier(timeout=TIMEOUT_S, workers=WORKERS)
    assert verifier([r"\boxed{1}", r"\boxed{x+1}"], solution=["1", "x+1"]) == [1.0, 1.0]
    return verifier


@pytest.fixture(scope="module")
def verify_slow():
    """The same verifier without the fast path: every answer goes through math-verify (SymPy)."""
    return make_math_verifier(timeout=TIMEOUT_S, workers=WORKERS, fast_path=False)


def grade(verifier, gold, completion):
    return verifier([completion], solution=[gold])[0]


# ---------------------------------------------------------------------------------------------------------------
# Verdicts
# ---------------------------------------------------------------------------------------------------------------

EQUIVALENT = [
    # fractions vs decimals
    ("0.5", r"so the result is $\boxed{\frac{1}{2}}$."),
    (r"\frac{1}{2}", r"\boxed{0.5}"),
    (r"\frac{3}{8}", r"\boxed{0.375}"),
    (r"\frac12", r"\boxed{1/2}"),
    # \dfrac, \tfrac
    (r"\frac{3}{4}", r"\boxed{\dfrac{3}{4}}"),
    (r"\frac{3}{4}", r"\boxed{\tfrac34}"),
    # spacing
    ("12", r"\boxed{ 12 }"),
    (r"\frac{\sqrt{3}}{2}", r"\boxed{\frac{\sqrt 3}{2}}"),
    (r"3\pi", r"\boxed{3 \pi}"),
    # thousands separators
    ("1000", r"\boxed{1,000}"),
    ("1000", r"\boxed{1{,}000}"),
    ("1,000", r"\boxed{1000}"),
    ("1234567", r"\boxed{1,234,567}"),
    # intervals
    ("[1,3)", r"\boxed{[1, 3)}"),
    (r"(-\infty, 2]", r"\boxed{(-\infty,2]}"),
    (r"(-\infty,0)\cup(1,\infty)", r"\boxed{(-\infty, 0) \cup (1, \infty)}"),
    # sets and tuples
    (r"\{1,2,3\}", r"\boxed{\{3,2,1\}}"),
    ("(1,2)", r"\boxed{(1, 2)}"),
    (r"\left( 3, \frac{\pi}{2} \right)", r"\boxed{(3, \frac{\pi}{2})}"),
    # degrees
    (r"30^\circ", r"\boxed{30}"),
    ("30", r"\boxed{30^{\circ}}"),
    # units inside \text{}
    ("5", r"\boxed{5\text{ cm}}"),
    (r"12\text{ dollars}", r"\boxed{12}"),
    ("18", r"\boxed{\$18}"),
    # a leading "x ="
    ("5", r"\boxed{x = 5}"),
    ("x=5", r"\boxed{5}"),
    (r"\frac{1}{2}", r"\boxed{k=\frac12}"),
    (r"\left( 3, \frac{\pi}{2} \right)", r"\boxed{x = \left(3, \dfrac{\pi}{2}\right)}"),
    # LaTeX vs plain text
    (r"\sqrt{2}", r"\boxed{sqrt(2)}"),
    (r"\frac{1}{2}", r"\boxed{1/2}"),
    ("2", r"\boxed{\sqrt{4}}"),
    (r"\text{(B)}", r"\boxed{B}"),
    # several boxed answers: the last one counts
    ("7", r"First \boxed{3}. Wait, that is wrong: \boxed{7}"),
    # box variants
    ("5", r"the result is \boxed 5"),
    ("5", r"\fbox{5}"),
    (r"\frac{a}{b+c}", r"\boxed{\frac{a}{b+c}}"),
    # percentages (math-verify's rule): a percentage equals its number and its fraction
    (r"50\%", r"\boxed{50}"),
    ("50", r"\boxed{50\%}"),
    ("0.5", r"\boxed{50\%}"),
    (r"50\%", r"\boxed{0.5}"),
    (r"8.5\%", r"\boxed{0.085}"),
    # no box: an explicit final-answer statement near the end
    ("5", "We add them up. The final answer is $5$."),
    ("5", "Final Answer: 5"),
    (r"\frac{1}{2}", r"So the answer is $\frac{1}{2}$"),
]

NOT_EQUIVALENT = [
    ("1/3", r"\boxed{0.333}"),  # rounded too early
    ("2", r"\boxed{2.000001}"),
    ("5", r"\boxed{-5}"),
    ("5", r"\boxed{5.}"),
    ("12", r"\boxed{21}"),
    ("1000", r"\boxed{1001}"),
    ("2,125", r"\boxed{2, 125}"),  # two numbers, not 2125
    ("[1,3)", r"\boxed{[1,3]}"),
    ("(1,2)", r"\boxed{(2,1)}"),
    (r"\{1,2\}", r"\boxed{\{1,2,3\}}"),
    (r"2\sqrt{3}", r"\boxed{3\sqrt{2}}"),
    (r"\frac{\pi}{2}", r"\boxed{\frac{\pi}{3}}"),
    ("x=5", r"\boxed{x=-5}"),
    (r"50\%", r"\boxed{0.05}"),
    ("3", r"First \boxed{3}. Wait, that is wrong: \boxed{7}"),  # only the last box counts
    # no extractable answer
    ("5", "so we get 5."),  # no box and no final-answer statement: we never grade "the last number"
    ("5", r"The final answer is $5$, as computed. " + "More checking. " * 40),  # statement not near the end
    ("5", r"\boxed{}"),
    # truncated answers
    ("5", r"so the result is \boxed{5"),
    ("5", r"\boxed{5} is wrong, we get \boxed{\frac{"),  # the last box was cut off
    ("5", "We compute step by step: first 2 + 3 = 5, then"),
]


@pytest.mark.parametrize(("gold", "completion"), EQUIVALENT)
def test_equivalent_forms_are_correct(verify, gold, completion):
    assert grade(verify, gold, completion) == 1.0


@pytest.mark.parametrize(("gold", "completion"), NOT_EQUIVALENT)
def test_wrong_and_missing_answers_are_wrong(verify, gold, completion):
    assert grade(verify, gold, completion) == 0.0


FAST_PATH_GOLDS = ["42", "1,000", "0.5", "-7", r"\frac{3}{4}", r"\left( 3, \frac{\pi}{2} \right)", "[1, 3)", "2,125"]
FAST_PATH_GOLDS += ["x=5", r"10,\!080", r"\text{(C)}", r"y = 2x + 1", r"50\%", "1000000"]
# Every 20th MATH500 answer too, when the benchmark files are there.
MATH500 = BENCHMARKS_DIR / "math500.jsonl"
if MATH500.is_file():
    with MATH500.open() as f:
        FAST_PATH_GOLDS += [json.loads(line)["answer"] for line in f][::20]


def test_fast_path_never_changes_a_verdict(verify, verify_slow):
    """Numbers, exact spellings and answer-less tails are settled without SymPy: same verdicts as with SymPy."""
    golds = FAST_PATH_GOLDS
    variants = [
        "{g}",
        " {g} ",
        "x = {g}",
        "{g}.0",
        "{g}0",
        "-{g}",
        "{g} + 1",
        "{nospace}",
        "{spaced}",
        "{dfrac}",
    ]
    completions, solutions = [], []
    for gold in golds:
        forms = {
            "g": gold,
            "nospace": gold.replace(" ", ""),
            "spaced": gold.replace(",", ", "),
            "dfrac": gold.replace(r"\frac", r"\dfrac"),
        }
        for variant in variants:
            answer = variant.format(**forms)
            completions += [rf"We find $\boxed{{{answer}}}$.", f"The final answer is ${answer}$.", f"So {answer}"]
            solutions += [gold] * 3
    fast = verify(completions, solution=solutions)
    slow = verify_slow(completions, solution=solutions)
    differ = [(s, c, f, w) for s, c, f, w in zip(solutions, completions, fast, slow, strict=True) if f != w]
    assert not differ


def test_conversational_completions_use_the_last_assistant_message(verify):
    completions = [
        [{"role": "assistant", "content": r"The result is \boxed{4}."}],
        [
            {"role": "assistant", "content": r"\boxed{4}"},
            {"role": "user", "content": "Are you sure?"},
            {"role": "assistant", "content": r"Sorry: \boxed{5}"},
        ],
        [{"role": "assistant", "content": [{"type": "text", "text": r"\boxed{4}"}]}],
        [],
    ]
    assert verify(completions, solution=["4", "4", "4", "4"]) == [1.0, 0.0, 1.0, 0.0]


def test_trl_signature_name_and_pickling(verify):
    rewards = verify(
        prompts=["p1", "p2"],
        completions=[r"\boxed{2}", r"\boxed{3}"],
        completion_ids=[[1], [2]],
        solution=["2", "2"],
        trainer_state=None,
        log_extra=lambda *a, **k: None,
        log_metric=lambda *a, **k: None,
        problem=["q1", "q2"],
    )
    assert rewards == [1.0, 0.0]
    assert math_verifier.__name__ == "math_verifier"  # TRL logs rewards/math_verifier/mean
    assert make_math_verifier("strict", name="dapo").__name__ == "dapo"
    restored = pickle.loads(pickle.dumps(verify))  # TRL's picklable reward forms include callable instances
    assert restored.__name__ == "math_verifier" and restored([r"\boxed{2}"], solution=["2"]) == [1.0]
    with pytest.raises(ValueError, match="gold answer"):
        verify([r"\boxed{2}"], solution=["2", "2"])
    with pytest.raises(ValueError, match="column named `solution`"):
        verify(prompts=["p"], completions=[r"\boxed{2}"], answer=["2"])
    with pytest.raises(ValueError, match="mode"):
        make_math_verifier("fuzzy")


def test_unparseable_gold_gives_none_and_warns_once_per_gold(verify, caplog, monkeypatch):
    monkeypatch.setattr(mv, "_warned_golds", set())
    golds = ["}{", "}{", r"\text{}", None, "7", "}{"]
    completions = [r"\boxed{1}", r"\boxed{}{}", r"\boxed{2}", r"\boxed{3}", r"\boxed{7}", "no answer"]
    with caplog.at_level(logging.WARNING, logger="nft_trl.rewards.verifier"):
        assert verify(completions, solution=golds) == [None, None, None, None, 1.0, None]
        assert verify(completions[:2], solution=golds[:2]) == [None, None]
    warnings = [record.getMessage() for record in caplog.records if "gold answer" in record.getMessage()]
    assert len(warnings) == 3  # "}{", "\text{}" and the empty gold, once each


def test_strict_mode_is_a_normalised_string_match():
    strict = make_math_verifier("strict")
    golds = ["42", "1000", "42", "0.5", "5", "5", "5", "5"]
    completions = [
        r"so $\boxed{42}$.",
        r"\boxed{1,000}",
        "The final answer is 42",  # strict: no box, no answer
        r"\boxed{\frac12}",  # strict: a string match, not an equivalence
        r"\boxed{x = 5}",
        r"\boxed{5 \text{ cm}}",
        r"\boxed{5^\circ}",
        r"\boxed{5} then \boxed{6}",
    ]
    assert strict(completions, solution=golds) == [1.0, 1.0, 0.0, 0.0, 1.0, 0.0, 1.0, 0.0]
    assert strict([r"\boxed{1}"], solution=[""]) == [None]
    assert normalize_answer(r" x = 1{,}000 \text{ cm}. ") == "1000cm"


def test_dapo_strict_box_mode_is_the_authors_rule():
    """verl's math_dapo strict box, as the NFT authors train: last 100 characters, last \boxed{}, raw equality."""
    authors = make_math_verifier("dapo_strict_box")
    padding = " and so on" * 10  # 100 characters
    cases = [
        (r"so $\boxed{42}$.", "42", 1.0),
        (r"\boxed{42}" + padding, "42", 0.0),  # the box ends outside the last 100 characters
        (r"\boxed{42}" + padding[: -len(r"\boxed{42}")], "42", 1.0),  # the whole box inside the last 100
        ("x" * 500 + r"\boxed{42}", "42", 1.0),  # a long answer: only its tail is read
        (r"\boxed{ 42}", "42", 0.0),  # whitespace inside the box is kept
        (r"\boxed{42 }", "42", 0.0),
        (r"\boxed{0.5}", r"\frac{1}{2}", 0.0),  # equivalent but a different string
        (r"\boxed{\frac12}", r"\frac{1}{2}", 0.0),
        (r"\boxed{1,000}", "1000", 0.0),  # no normalisation (the strict mode would accept it)
        (r"\boxed{\frac{1}{2}}", r"\frac{1}{2}", 1.0),  # nested braces are matched
        (r"\boxed{\sqrt{\frac{1}{2}}}", r"\sqrt{\frac{1}{2}}", 1.0),
        (r"\boxed{\{1\}}", r"\{1\}", 1.0),  # escaped braces are counted like any brace
        ("The final answer is 42", "42", 0.0),  # no box
        (r"\boxed{42", "42", 0.0),  # an unclosed box (truncated answer)
        (r"\boxed 42", "42", 0.0),  # only the literal "\boxed{" counts
        (r"\fbox{42}", "42", 0.0),
        (r"\boxed{41} no, \boxed{42}", "42", 1.0),  # the last box counts
        (r"\boxed{42} no, \boxed{41}", "42", 0.0),
        (r"\boxed{$42$}", "42", 0.0),
    ]
    completions, golds, expected = zip(*cases, strict=True)
    assert authors(list(completions), solution=list(golds)) == list(expected)
    assert authors([r"\boxed{7}"], solution=[7]) == [1.0]  # a non-string gold is compared as its str()
    assert authors([r"\boxed{7}"], solution=[None]) == [None]
    conversational = [[{"role": "assistant", "content": r"\boxed{7}"}]]
    assert authors(conversational, solution=["7"]) == [1.0]
    assert mv.extract_dapo_strict_box(r"\boxed{\frac{1}{2}} tail") == r"\frac{1}{2}"
    assert mv.extract_dapo_strict_box("no box") is None
    # Where the two string modes differ, and where the equivalence mode differs from both.
    assert make_math_verifier("strict")([r"\boxed{1,000}"], solution=["1000"]) == [1.0]


def test_extract_last_boxed():
    assert extract_last_boxed(r"\boxed{1} and \boxed{\frac{a}{\sqrt{b}}}") == r"\frac{a}{\sqrt{b}}"
    assert extract_last_boxed(r"\boxed{\{1, 2\}}") == r"\{1, 2\}"
    assert extract_last_boxed(r"\boxed 12.") == "12"
    assert extract_last_boxed(r"\fbox{3}") == "3"
    assert extract_last_boxed(r"\boxed{1} then \boxed{2") is None
    assert extract_last_boxed("no box") is None


# ---------------------------------------------------------------------------------------------------------------
# Adversarial inputs and the hard timeout
# ---------------------------------------------------------------------------------------------------------------

_rng = random.Random(0)
ADVERSARIAL = {
    "unclosed braces": r"so \boxed{\frac{1}{2",
    "unclosed braces, no box": r"\frac{\sqrt{" * 50,
    "100,000 characters": "Let us think. " * 7_143 + r"\boxed{5}",
    "100,000 characters in the box": r"\boxed{" + "1+" * 50_000 + "1}",
    "5,000 nested braces": r"\boxed{" + "{" * 5_000 + "5" + "}" * 5_000 + "}",
    "5,000 unclosed braces": "{" * 5_000,
    "power tower": POWER_TOWER,
    "power tower, unboxed": r"The final answer is $9^{9^{9^{9}}}$.",
    "1000000!": FACTORIAL,
    "binary garbage": bytes(_rng.randrange(256) for _ in range(2_000)).decode("latin-1"),
    "binary garbage in a box": r"\boxed{" + bytes(_rng.randrange(256) for _ in range(200)).decode("latin-1") + "}",
    "None": None,
    "empty": "",
}
EXPECTED = dict.fromkeys(ADVERSARIAL, 0.0) | {"100,000 characters": 1.0}


def run_adversarial(verifier, label):
    """Grade each adversarial completion alone against gold 5; return {name: (reward, seconds)}."""
    results = {}
    for name, completion in ADVERSARIAL.items():
        start = time.perf_counter()
        reward = verifier([completion], solution=["5"])[0]
        results[name] = (reward, time.perf_counter() - start)
    worst = max(results, key=lambda name: results[name][1])
    print(f"\n[{label}] worst-case latency {results[worst][1]:.2f} s ({worst}); timeout {TIMEOUT_S} s")
    return results


def check_adversarial(results):
    assert {name: reward for name, (reward, _) in results.items()} == EXPECTED
    for name, (_, seconds) in results.items():
        assert seconds < TIMEOUT_S + LATENCY_SLACK_S, f"{name} took {seconds:.2f} s"


def test_adversarial_inputs_main_thread(verify):
    check_adversarial(run_adversarial(verify, "main thread"))


def test_adversarial_inputs_worker_thread(verify):
    box = {}
    thread = threading.Thread(target=lambda: box.update(results=run_adversarial(verify, "worker thread")))
    thread.start()
    thread.join()
    check_adversarial(box["results"])


def test_adversarial_inputs_inside_asyncio(verify):
    async def main():
        in_loop = run_adversarial(verify, "inside an asyncio event loop")
        via_to_thread = await asyncio.to_thread(verify, [POWER_TOWER, r"\boxed{5}"], solution=["5", "5"])
        return in_loop, via_to_thread

    in_loop, via_to_thread = asyncio.run(main())
    check_adversarial(in_loop)
    assert via_to_thread == [0.0, 1.0]


def test_batch_with_pathological_items_costs_about_their_timeouts(verify):
    completions = [POWER_TOWER, FACTORIAL, r"\boxed{5}", r"\boxed{4}", r"\boxed{\frac{10}{2}}"] * 2
    start = time.perf_counter()
    rewards = verify(completions, solution=["5"] * len(completions))
    seconds = time.perf_counter() - start
    assert rewards == [0.0, 0.0, 1.0, 0.0, 1.0] * 2
    # Identical pairs are graded once: two pathological verifications, one per worker.
    assert seconds < TIMEOUT_S + LATENCY_SLACK_S


def test_concurrent_callers_share_the_pool(verify):
    results = [None] * 4

    def call(i):
        results[i] = verify([POWER_TOWER if i % 2 else r"\boxed{\frac{6}{4}}", r"\boxed{1.5}"], solution=["1.5"] * 2)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [[1.0, 1.0], [0.0, 1.0]] * 2


def test_workers_import_neither_torch_nor_nft_trl(verify):
    if not Path("/proc/self/maps").exists():
        pytest.skip("needs /proc (Linux)")
    pool = get_default_pool(WORKERS)
    deadline = time.monotonic() + 30
    while not all(worker.state == "idle" for worker in pool._pool) and time.monotonic() < deadline:
        pool.run([(r"\boxed{x}", [r"\boxed{x}"])], timeout=TIMEOUT_S)  # let replaced executors report in
    for worker in pool._pool:
        for pid in (worker.process.pid, worker.executor_pid):
            maps = Path(f"/proc/{pid}/maps").read_text()
            assert "torch" not in maps
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            assert b"-P" in cmdline and cmdline[2].endswith(b"_worker.py")


def test_crashed_executor_is_replaced_without_waiting_for_the_timeout():
    """An executor that dies mid-verification (segfault, OOM kill) costs its answer, not the timeout."""
    verifier = make_math_verifier(timeout=30.0, workers=WORKERS)
    pool = get_default_pool(WORKERS)
    box = {}
    thread = threading.Thread(target=lambda: box.update(rewards=verifier([POWER_TOWER], solution=["5"])))
    start = time.perf_counter()
    thread.start()
    deadline = time.monotonic() + 10
    while not any(worker.state == "busy" for worker in pool._pool) and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.3)
    for worker in pool._pool:
        if worker.state == "busy":
            os.kill(worker.executor_pid, signal.SIGKILL)
    thread.join()
    assert box["rewards"] == [0.0]
    assert time.perf_counter() - start < 10
    assert verifier([r"\boxed{2}"], solution=["2"]) == [1.0]


def test_dead_worker_process_is_replaced(verify):
    pool = get_default_pool(WORKERS)
    pool._pool[0].process.kill()
    pool._pool[0].process.wait()
    assert verify([r"\boxed{x^2}", r"\boxed{y}", r"\boxed{2x}"], solution=["x^2", "y", "x+x"]) == [1.0, 1.0, 1.0]
    assert len(pool._pool) == WORKERS and all(worker.process.poll() is None for worker in pool._pool)


def _grade_in_forked_child(queue):
    verifier = make_math_verifier(timeout=TIMEOUT_S, workers=1)
    queue.put(verifier([POWER_TOWER, r"\boxed{\frac{3}{6}}"], solution=["0.5", "0.5"]))


def test_forked_child_starts_its_own_workers(verify):
    """A data-loader worker forked from the trainer must not share (or break) the trainer's workers."""
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_grade_in_forked_child, args=(queue,))
    child.start()
    assert queue.get(timeout=60) == [0.0, 1.0]
    child.join(timeout=10)
    assert verify([r"\boxed{0.5}"], solution=[r"\frac12"]) == [1.0]


CHILD_SCRIPT = """
import json, sys, time
sys.path.insert(0, sys.argv[1])
from nft_trl import make_math_verifier
verifier = make_math_verifier(timeout=float(sys.argv[2]), workers=int(sys.argv[3]))
verifier([r"\\boxed{x}"], solution=["x"])  # start the worker (a number would not need it)
start = time.perf_counter()
rewards = verifier([r"\\boxed{9^{9^{9^{9}}}}", r"\\boxed{\\frac{10}{2}}"], solution=["5", "5"])
print(json.dumps({"rewards": rewards, "seconds": time.perf_counter() - start}))
"""


def test_several_processes_each_keep_the_timeout():
    """Two trainer-like processes at once, one with workers=1 and one with workers=0 (serial, one helper process)."""
    children = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD_SCRIPT, str(REPO_ROOT), str(TIMEOUT_S), str(workers)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for workers in (1, 0)
    ]
    outputs = [json.loads(child.communicate(timeout=120)[0]) for child in children]
    print(f"\n[2 processes] latencies {[round(output['seconds'], 2) for output in outputs]} s")
    for output in outputs:
        assert output["rewards"] == [0.0, 1.0]
        assert output["seconds"] < TIMEOUT_S + LATENCY_SLACK_S


# ---------------------------------------------------------------------------------------------------------------
# Real data: every gold answer of the shared benchmark files, boxed, is graded correct against itself
# ---------------------------------------------------------------------------------------------------------------


def _benchmark_golds(path: Path) -> list[str]:
    """The gold answers of one benchmark file (see the folder's README for the fields)."""
    with path.open() as f:
        rows = [json.loads(line) for line in f]
    name = path.stem
    if name.startswith("gsm8k"):
        return [row["answer"].rsplit("####", 1)[1].strip() for row in rows]
    if name == "minerva_math":
        return [row["solution"] for row in rows]  # the verifier takes the last box of a worked solution
    if name == "olympiadbench":
        return [", ".join(answer.strip().strip("$") for answer in row["final_answer"]) for row in rows]
    return [str(row["answer"]) for row in rows]


BENCHMARK_FILES = sorted(BENCHMARKS_DIR.glob("*.jsonl")) if BENCHMARKS_DIR.is_dir() else []


@pytest.mark.skipif(not BENCHMARK_FILES, reason=f"benchmark files not found in {BENCHMARKS_DIR}")
@pytest.mark.parametrize("path", BENCHMARK_FILES, ids=lambda path: path.stem)
def test_real_gold_answers_are_graded_correct_against_themselves(path):
    # The verifier as users run it: every gold that is not a plain number is parsed by math-verify in a worker (the
    # fast path's agreement with math-verify's own comparison is tested above). A generous timeout: this is about
    # parsing, not about speed on a busy host.
    verifier = make_math_verifier(timeout=10.0, workers=WORKERS)
    golds = _benchmark_golds(path)
    answers = [extract_last_boxed(gold) or gold for gold in golds]
    completions = [f"Putting everything together, we get $\\boxed{{{answer}}}$." for answer in answers]
    rewards = verifier(completions, solution=golds)
    failing = {answer for answer, reward in zip(answers, rewards, strict=True) if reward != 1.0}
    print(f"\n[{path.stem}] {len(golds) - sum(r != 1.0 for r in rewards)}/{len(golds)} golds graded correct")
    assert not failing, f"golds not graded correct against themselves: {sorted(failing)}"
