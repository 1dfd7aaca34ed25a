"""Evaluate a checkpoint on math benchmarks the paper's way, resumably, with bootstrap intervals.

`evaluate(model, benchmarks, preset="paper")` samples `n` completions per problem, scores them with the training
verifier (`nft_trl.math_verifier`), and writes to `output_dir`:

- `samples/<benchmark>.jsonl`: append-only, one header line with the generation settings and their hash, then one
  line per finished problem (completions, verifier scores, extracted answers). A rerun reads it back and generates
  only the problems that are missing; a file written with other generation settings is refused rather than mixed.
  Finished lines are never rewritten in place: a line torn by a kill is dropped by writing the file anew to a
  temporary copy that is synced and renamed over it (`SampleStore`), so a kill at any moment loses no finished row.
  Scores are not part of those settings: stored completions whose gold answer or verifier (name, version) differ from
  the current ones are re-scored, not regenerated, so the reported numbers always come from the current verifier.
- `results.json`: every setting (model, benchmark hashes, verifier and version, prompt, sampling, seed, package
  versions), the metrics with 95% bootstrap intervals, and the per-problem results.
- `results.md`: the table.

Presets (explicit arguments override them):

- `paper` (NFT, 7B): avg@32 on AIME24, AIME25 and AMC23, avg@1 on MATH500, Minerva and OlympiadBench; temperature 0.6,
  top_p 0.7, 4096 new tokens.
- `paper-32b`: the same with temperature 1.0 and 7168 new tokens (the authors' 32B script: an 8192-token context with
  1024 tokens reserved for the prompt).
- `standard`: 16 samples everywhere, temperature 0.6, top_p 0.95, 4096 new tokens.

Problems whose gold answer the verifier cannot parse (it returns `None`) are left out of the metrics and counted as
`num_unscorable`.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import json
import logging
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nft_trl.data import BOXED_INSTRUCTION
from nft_trl.rewards.answers import extract_last_boxed

from . import metrics
from .benchmarks import PAPER_BENCHMARKS, Benchmark, Problem, load_benchmark
from .generation import SamplingSettings, TransformersGenerator, VLLMGenerator, build_prompt, is_vllm_available
from .store import SampleStore, settings_hash


logger = logging.getLogger(__name__)

VERIFIER_MODULE = "nft_trl.rewards.verifier"
VERIFIER_FUNCTION = "math_verifier"
SEED_MODULUS = 2**31 - 1
PERCENT = 100.0
REPORTED_PACKAGES = ("nft-trl", "torch", "transformers", "trl", "datasets", "math-verify", "vllm", "numpy")


@dataclass(frozen=True)
class Preset:
    """Sampling defaults of a named evaluation protocol; `n_per_benchmark` overrides `n` for the named benchmarks."""

    temperature: float
    top_p: float
    max_tokens: int
    n: int
    n_per_benchmark: dict[str, int] = field(default_factory=dict)


PAPER_AVG_AT_32 = {"aime24": 32, "aime25": 32, "amc23": 32}
PRESETS: dict[str, Preset] = {
    "paper": Preset(temperature=0.6, top_p=0.7, max_tokens=4096, n=1, n_per_benchmark=PAPER_AVG_AT_32),
    "paper-32b": Preset(temperature=1.0, top_p=0.7, max_tokens=7168, n=1, n_per_benchmark=PAPER_AVG_AT_32),
    "standard": Preset(temperature=0.6, top_p=0.95, max_tokens=4096, n=16),
}


def resolve_sampling(
    preset: str,
    benchmark: str,
    *,
    n: int | None = None,
    temperature: float | None = None,
    top_p: float | None = None,
    max_tokens: int | None = None,
    seed: int = 0,
) -> SamplingSettings:
    """The preset's settings for `benchmark`, with every argument that is not `None` taking precedence."""
    if preset not in PRESETS:
        raise ValueError(f"Unknown preset {preset!r}; use one of {sorted(PRESETS)}.")
    p = PRESETS[preset]
    return SamplingSettings(
        n=n if n is not None else p.n_per_benchmark.get(benchmark, p.n),
        temperature=temperature if temperature is not None else p.temperature,
        top_p=top_p if top_p is not None else p.top_p,
        max_tokens=max_tokens if max_tokens is not None else p.max_tokens,
        seed=seed,
    )


# --------------------------------------------------------------------------------------------------------- verifier
def load_verifier() -> tuple[Callable[..., list[float | None]], dict[str, Any]]:
    """The training verifier, imported lazily, and a description of it (module, version) for the results JSON."""
    module = importlib.import_module(VERIFIER_MODULE)
    return getattr(module, VERIFIER_FUNCTION), {
        "name": f"{VERIFIER_MODULE}.{VERIFIER_FUNCTION}",
        "version": getattr(module, "__version__", None),
        "math_verify": _version("math-verify"),
    }


def describe_verifier(verifier: Callable) -> dict[str, Any]:
    """Name and version (its module's `__version__`, if any) of a user-supplied verifier."""
    module = sys.modules.get(getattr(verifier, "__module__", ""), None)
    return {
        "name": f"{getattr(verifier, '__module__', '?')}.{getattr(verifier, '__qualname__', repr(verifier))}",
        "version": getattr(module, "__version__", None),
        "math_verify": _version("math-verify"),
    }


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def package_versions() -> dict[str, str | None]:
    """Installed versions of the packages that shape the numbers (`None` when absent)."""
    return {"python": platform.python_version(), **{p: _version(p) for p in REPORTED_PACKAGES}}


# ------------------------------------------------------------------------------------------------------ sample store
def problem_seed(seed: int, benchmark: str, problem_id: str) -> int:
    """A per-problem seed that does not depend on which other problems are in the batch."""
    digest = hashlib.sha256(f"{seed}:{benchmark}:{problem_id}".encode()).hexdigest()
    return int(digest, 16) % SEED_MODULUS


def score_problem(
    problem: Problem, texts: list[str], verifier: Callable[..., list[float | None]]
) -> tuple[list[float] | None, list[str | None]]:
    """Verifier scores (or `None` when the gold answer is unusable) and normalised final answers of one problem."""
    raw = verifier(list(texts), [problem.answer] * len(texts)) if problem.answer else [None] * len(texts)
    scores = None if any(s is None for s in raw) else [float(s) for s in raw]
    return scores, [metrics.voting_key(extract_last_boxed(t)) for t in texts]


def problem_metrics(scores: list[float], answers: list[str | None]) -> dict[str, float]:
    """avg@n, pass@k (k = 1, 2, 4, ..., n) and maj@n of one problem from its n scores and final answers."""
    n = len(scores)
    correct = int(round(sum(scores)))
    out = {f"avg@{n}": metrics.mean_at_k(scores)}
    out.update({f"pass@{k}": metrics.pass_at_k(n, correct, k) for k in metrics.default_pass_ks(n)})
    out[f"maj@{n}"] = metrics.maj_at_k(answers, scores)
    return out


def summarize(
    name: str,
    records: list[dict[str, Any]],
    sampling: SamplingSettings,
    *,
    bootstrap_resamples: int = metrics.DEFAULT_BOOTSTRAP_RESAMPLES,
    bootstrap_seed: int = 0,
) -> dict[str, Any]:
    """Benchmark metrics (value and 95% bootstrap interval over problems) from per-problem records."""
    scored = [r for r in records if r["scores"] is not None]
    per_problem = [problem_metrics(r["scores"], r["answers"]) for r in scored]
    result: dict[str, Any] = {
        "headline": f"avg@{sampling.n}",
        "num_problems": len(records),
        "num_unscorable": len(records) - len(scored),
        "num_samples": sum(len(r["scores"]) for r in scored),
        "truncated_fraction": _mean([t for r in records for t in r["truncated"]]),
        "metrics": {},
        "per_problem": [],
    }
    for key in per_problem[0] if per_problem else []:
        values = [p[key] for p in per_problem]
        low, high = metrics.bootstrap_interval(values, num_resamples=bootstrap_resamples, seed=bootstrap_seed)
        result["metrics"][key] = {"value": _mean(values), "ci_low": low, "ci_high": high}
    values_by_id = {record["id"]: values for record, values in zip(scored, per_problem, strict=True)}
    for record in records:  # in benchmark order
        entry = {"id": record["id"], "gold": record["gold"]}
        if record["scores"] is None:
            entry["unscorable"] = True
        else:
            entry.update(values_by_id[record["id"]], scores=record["scores"], answers=record["answers"])
        result["per_problem"].append(entry)
    result["headline_values"] = [p[result["headline"]] for p in per_problem]
    logger.info("%s: %s = %s", name, result["headline"], result["metrics"].get(result["headline"]))
    return result


def _mean(values: Sequence[float]) -> float | None:
    return float(sum(values)) / len(values) if values else None


# ---------------------------------------------------------------------------------------------------------- running
def evaluate_benchmark(
    generator,
    tokenizer,
    benchmark: Benchmark,
    sampling: SamplingSettings,
    *,
    verifier: Callable[..., list[float | None]],
    verifier_info: dict[str, Any] | None = None,
    store: SampleStore | None = None,
    prompt_template: str = "chat",
    instruction: str = BOXED_INSTRUCTION,
    batch_size: int | None = None,
) -> list[dict[str, Any]]:
    """Generate and score the problems `store` does not hold yet; return the records of all problems, in order.

    Stored records scored against another gold answer or verifier (`verifier_info`) are re-scored from their
    completions and the new scores appended to the store.
    """
    done = store.records if store is not None else {}
    by_id = {p.id: p for p in benchmark.problems}
    stale = [
        r
        for i, r in done.items()
        if i in by_id and (r["gold"] != by_id[i].answer or r.get("verifier") != verifier_info)
    ]
    if stale:
        logger.info(
            "%s: re-scoring %d stored problem(s) with the current gold answers and verifier.",
            benchmark.name,
            len(stale),
        )
        for record in stale:
            problem = by_id[record["id"]]
            scores, answers = score_problem(problem, record["completions"], verifier)
            record.update(gold=problem.answer, scores=scores, answers=answers, verifier=verifier_info)
        store.add(stale)
    todo = [p for p in benchmark.problems if p.id not in done]
    if len(todo) < len(benchmark.problems):
        logger.info(
            "%s: %d of %d problems already done.",
            benchmark.name,
            len(benchmark.problems) - len(todo),
            len(benchmark.problems),
        )
    fresh: dict[str, dict[str, Any]] = {}
    step = batch_size or generator.batch_size
    for start in range(0, len(todo), step):
        chunk = todo[start : start + step]
        prompts = [
            build_prompt(p.problem, tokenizer, template=prompt_template, instruction=instruction) for p in chunk
        ]
        seeds = [problem_seed(sampling.seed, benchmark.name, p.id) for p in chunk]
        outputs = generator.generate(prompts, sampling, seeds, add_special_tokens=prompt_template == "raw")
        records = []
        for problem, samples in zip(chunk, outputs, strict=True):
            texts = [s.text for s in samples]
            scores, answers = score_problem(problem, texts, verifier)
            records.append(
                {
                    "id": problem.id,
                    "gold": problem.answer,
                    "scores": scores,
                    "answers": answers,
                    "truncated": [s.truncated for s in samples],
                    "num_tokens": [s.num_tokens for s in samples],
                    "completions": texts,
                    "verifier": verifier_info,
                }
            )
        if store is not None:
            store.add(records)
        fresh.update({r["id"]: r for r in records})
        logger.info("%s: %d/%d problems generated.", benchmark.name, start + len(chunk), len(todo))
    return [done.get(p.id) or fresh[p.id] for p in benchmark.problems]


def make_generator(model: str, backend: str = "auto", **kwargs):
    """`VLLMGenerator` for `backend="vllm"` (or `"auto"` with vLLM installed), else `TransformersGenerator`."""
    if backend not in ("auto", "vllm", "transformers"):
        raise ValueError(f"Unknown backend {backend!r}; use auto, vllm or transformers.")
    use_vllm = backend == "vllm" or (backend == "auto" and is_vllm_available())
    if use_vllm:
        if not is_vllm_available():
            raise ImportError("backend='vllm' needs vLLM: pip install 'nft-trl[vllm]'.")
        vllm_keys = {"batch_size", "seed", "tensor_parallel_size", "gpu_memory_utilization", "dtype", "max_model_len"}
        return VLLMGenerator(model, **{k: v for k, v in kwargs.items() if k in vllm_keys and v is not None})
    hf_keys = {"batch_size", "dtype", "device"}
    return TransformersGenerator.from_pretrained(
        model, **{k: v for k, v in kwargs.items() if k in hf_keys and v is not None}
    )


def evaluate(
    model: str,
    benchmarks: Sequence[str] = tuple(PAPER_BENCHMARKS),
    *,
    preset: str = "paper",
    n: int | None = None,
    temperature: float | None = None,
    top_p: float | None = None,
    max_tokens: int | None = None,
    seed: int = 0,
    backend: str = "auto",
    prompt_template: str = "chat",
    instruction: str = BOXED_INSTRUCTION,
    output_dir: str | Path | None = None,
    data_dir: str | Path | None = None,
    limit: int | None = None,
    batch_size: int | None = None,
    bootstrap_resamples: int = metrics.DEFAULT_BOOTSTRAP_RESAMPLES,
    verifier: Callable[..., list[float | None]] | None = None,
    generator=None,
    tokenizer=None,
    **generator_kwargs,
) -> dict[str, Any]:
    """Evaluate `model` (a local path or Hub id) on `benchmarks` and write the results to `output_dir`.

    Args:
        model: checkpoint to load (also recorded in the results).
        benchmarks: names or `name=path` / `name=owner/dataset[:split]` specs, see `load_benchmark`.
        preset: `"paper"`, `"paper-32b"` or `"standard"`; `n`, `temperature`, `top_p`, `max_tokens` override it.
        seed: sampling seed (per-problem seeds derive from it) and bootstrap seed.
        backend: `"vllm"`, `"transformers"` or `"auto"` (vLLM when installed).
        prompt_template: `"chat"` (the tokenizer's chat template) or `"raw"`; `instruction` is appended to each problem.
        output_dir: where samples and results go; `None` keeps nothing on disk (no resume).
        limit: evaluate only the first `limit` problems of each benchmark (for smoke tests).
        verifier: defaults to the training verifier `nft_trl.rewards.verifier.math_verifier`.
        generator, tokenizer: an already built generator (and the tokenizer for prompts), e.g. in tests.
        generator_kwargs: `dtype`, `device`, `tensor_parallel_size`, `gpu_memory_utilization`, `max_model_len`.

    Returns:
        The results dictionary that is also written to `output_dir/results.json`.
    """
    started = time.time()
    verifier_info = describe_verifier(verifier) if verifier is not None else None
    if verifier is None:
        verifier, verifier_info = load_verifier()
    loaded = [load_benchmark(spec, data_dir=data_dir, limit=limit) for spec in benchmarks]
    names = [b.name for b in loaded]
    if len(set(names)) != len(names):
        raise ValueError(f"Benchmark names must be unique, got {names}.")
    if generator is None:
        generator = make_generator(model, backend, batch_size=batch_size, seed=seed, **generator_kwargs)
    if tokenizer is None:
        from transformers import AutoTokenizer

        tokenizer = getattr(generator, "tokenizer", None) or AutoTokenizer.from_pretrained(model)
    chat_template = getattr(tokenizer, "chat_template", None) if prompt_template == "chat" else None
    common = {
        "model": str(model),
        "backend": generator.name,
        "prompt_template": prompt_template,
        "instruction": instruction,
        "chat_template_sha256": hashlib.sha256(chat_template.encode()).hexdigest() if chat_template else None,
    }
    out_dir = Path(output_dir) if output_dir is not None else None
    results: dict[str, Any] = {
        "settings": {
            **common,
            "verifier": verifier_info,
            "preset": preset,
            "seed": seed,
            "limit": limit,
            "bootstrap": {"resamples": bootstrap_resamples, "confidence": metrics.DEFAULT_CONFIDENCE, "seed": seed},
            "package_versions": package_versions(),
        },
        "benchmarks": {},
    }
    headline_values = {}
    for benchmark in loaded:
        sampling = resolve_sampling(
            preset, benchmark.name, n=n, temperature=temperature, top_p=top_p, max_tokens=max_tokens, seed=seed
        )
        sample_settings = {
            **common,
            "benchmark": benchmark.name,
            "benchmark_problems_sha256": benchmark.problems_sha256,
            "sampling": sampling.to_dict(),
        }
        store = SampleStore(out_dir / "samples" / f"{benchmark.name}.jsonl", sample_settings) if out_dir else None
        records = evaluate_benchmark(
            generator,
            tokenizer,
            benchmark,
            sampling,
            verifier=verifier,
            verifier_info=verifier_info,
            store=store,
            prompt_template=prompt_template,
            instruction=instruction,
            batch_size=batch_size,
        )
        summary = summarize(
            benchmark.name, records, sampling, bootstrap_resamples=bootstrap_resamples, bootstrap_seed=seed
        )
        headline_values[benchmark.name] = summary.pop("headline_values")
        results["benchmarks"][benchmark.name] = {
            **benchmark.provenance(),
            "sampling": sampling.to_dict(),
            "settings_hash": store.hash if store else settings_hash(sample_settings),
            "samples_file": str(store.path) if store else None,
            "example_prompt": build_prompt(
                benchmark.problems[0].problem, tokenizer, template=prompt_template, instruction=instruction
            )
            if benchmark.problems
            else None,
            **summary,
        }
    results["average"] = average_of(headline_values, bootstrap_resamples=bootstrap_resamples, seed=seed)
    results["elapsed_s"] = time.time() - started
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "results.json").write_text(json.dumps(results, indent=2, ensure_ascii=False), encoding="utf-8")
        (out_dir / "results.md").write_text(markdown_table(results), encoding="utf-8")
    return results


def average_of(
    headline_values: dict[str, list[float]],
    *,
    bootstrap_resamples: int = metrics.DEFAULT_BOOTSTRAP_RESAMPLES,
    seed: int = 0,
) -> dict[str, Any] | None:
    """Unweighted mean of the benchmarks' headline scores (the paper's "Avg"), with a stratified bootstrap interval."""
    groups = {name: v for name, v in headline_values.items() if v}
    if not groups:
        return None
    low, high = metrics.bootstrap_interval(list(groups.values()), num_resamples=bootstrap_resamples, seed=seed)
    return {
        "benchmarks": list(groups),
        "is_paper_six": sorted(groups) == sorted(PAPER_BENCHMARKS),
        "value": _mean([_mean(v) for v in groups.values()]),
        "ci_low": low,
        "ci_high": high,
    }


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{PERCENT * value:.1f}"


def markdown_table(results: dict[str, Any]) -> str:
    """One row per benchmark: headline avg@n with its 95% interval, pass@n and maj@n, sizes; then the average."""
    lines = [
        "| benchmark | metric | score | 95% CI | pass@n | maj@n | problems | n | truncated |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, bench in results["benchmarks"].items():
        n = bench["sampling"]["n"]
        head = bench["metrics"].get(bench["headline"], {})
        pass_n = bench["metrics"].get(f"pass@{n}", {}).get("value")
        maj_n = bench["metrics"].get(f"maj@{n}", {}).get("value")
        problems = str(bench["num_problems"]) + (
            f" ({bench['num_unscorable']} unscorable)" if bench["num_unscorable"] else ""
        )
        lines.append(
            f"| {name} | {bench['headline']} | {_pct(head.get('value'))} | "
            f"[{_pct(head.get('ci_low'))}, {_pct(head.get('ci_high'))}] | {_pct(pass_n)} | {_pct(maj_n)} | "
            f"{problems} | {n} | {_pct(bench['truncated_fraction'])}% |"
        )
    avg = results.get("average")
    if avg:
        label = "average (paper's six)" if avg["is_paper_six"] else f"average of {len(avg['benchmarks'])}"
        lines.append(
            f"| **{label}** | headline | {_pct(avg['value'])} | [{_pct(avg['ci_low'])}, {_pct(avg['ci_high'])}] "
            "| | | | | |"
        )
    s = results["settings"]
    samplings = {
        json.dumps({k: v for k, v in b["sampling"].items() if k != "n"}) for b in results["benchmarks"].values()
    }
    lines += [
        "",
        f"model `{s['model']}`, preset `{s['preset']}`, backend `{s['backend']}`, prompt `{s['prompt_template']}`, "
        f"verifier `{s['verifier']['name']}` {s['verifier']['version']}, sampling {'; '.join(sorted(samplings))}. "
        "Scores in %; intervals are 95% percentile bootstrap over problems.",
    ]
    return "\n".join(lines) + "\n"
