"""Math benchmark evaluation the paper's way: avg@k, pass@k, maj@k with bootstrap intervals, resumable.

`benchmarks` loads the benchmark files, `generation` samples (vLLM or transformers), `metrics` holds the estimators,
`runner` ties them into `evaluate` (resumable, one JSON of every setting and result), `callback` evaluates during
training, and `accuracy` gives the held-out accuracy of a policy on any prompt dataset graded by a TRL reward (the
embedded demo's measure). Grading always goes through the training verifier, `math_verifier`.

Command line: `nft-trl eval --model PATH --benchmarks aime24,aime25,amc23,math500,minerva,olympiadbench`
(see `nft_trl.cli`). Python:

>>> from nft_trl.evaluation import evaluate
>>> results = evaluate("path/to/checkpoint", ["aime24", "math500"], preset="paper", output_dir="outputs/eval")  # doctest: +SKIP
>>> results["benchmarks"]["aime24"]["metrics"]["avg@32"]  # doctest: +SKIP
{'value': 0.32, 'ci_low': 0.2, 'ci_high': 0.45}
"""

from nft_trl.data import BOXED_INSTRUCTION

from .accuracy import EvalResult, evaluate_accuracy
from .benchmarks import BENCHMARKS_DIR_ENV, KNOWN_BENCHMARKS, PAPER_BENCHMARKS, Benchmark, Problem, load_benchmark
from .generation import SamplingSettings, TransformersGenerator, VLLMGenerator, build_prompt
from .metrics import bootstrap_interval, maj_at_k, majority_answer, mean_at_k, pass_at_k, voting_key
from .runner import PRESETS, evaluate, make_generator, markdown_table, resolve_sampling


__all__ = [
    "BENCHMARKS_DIR_ENV",
    "BOXED_INSTRUCTION",
    "KNOWN_BENCHMARKS",
    "PAPER_BENCHMARKS",
    "PRESETS",
    "Benchmark",
    "BenchmarkEvalCallback",
    "EvalResult",
    "Problem",
    "SamplingSettings",
    "TransformersGenerator",
    "VLLMGenerator",
    "bootstrap_interval",
    "build_prompt",
    "evaluate",
    "evaluate_accuracy",
    "load_benchmark",
    "maj_at_k",
    "majority_answer",
    "make_generator",
    "markdown_table",
    "mean_at_k",
    "pass_at_k",
    "resolve_sampling",
    "voting_key",
]


def __getattr__(name: str):
    # The callback pulls in transformers' Trainer stack (and peft when installed): seconds of import time that
    # `nft-trl eval` does not need, so it is imported on first use.
    if name == "BenchmarkEvalCallback":
        from .callback import BenchmarkEvalCallback

        return BenchmarkEvalCallback
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
