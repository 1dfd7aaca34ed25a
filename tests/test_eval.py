"""Tests for `nft_trl.evaluation` and `nft-trl eval`: estimators, loaders, pipeline, resume, training callback.

Offline and CPU only. The real benchmark files are read from `shared/data/benchmarks` beside the repository checkout
(or `$NFT_TRL_BENCHMARKS_DIR`); the tests that need them skip when the folder is absent.
"""

import os


os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import benchmarks_dir, cpu_training_args

from nft_trl.data import BOXED_INSTRUCTION
from nft_trl.embedded.model import build_tiny_model
from nft_trl.evaluation import (
    BenchmarkEvalCallback,
    SamplingSettings,
    TransformersGenerator,
    bootstrap_interval,
    build_prompt,
    evaluate,
    load_benchmark,
    maj_at_k,
    majority_answer,
    mean_at_k,
    pass_at_k,
    resolve_sampling,
)
from nft_trl.evaluation.benchmarks import olympiad_gold
from nft_trl.evaluation.generation import Sample
from nft_trl.evaluation.metrics import t_interval


REPO_ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS_DIR = benchmarks_dir()
needs_benchmarks = pytest.mark.skipif(
    not BENCHMARKS_DIR.is_dir(), reason=f"benchmark files not found at {BENCHMARKS_DIR}"
)
SIX = ["aime24", "aime25", "amc23", "math500", "minerva", "olympiadbench"]


# ----------------------------------------------------------------------------------------------------- fixtures
@pytest.fixture
def toy_benchmark(tmp_path):
    """Four problems with integer answers, in the generic (problem, answer) format."""
    path = tmp_path / "toy.jsonl"
    rows = [{"id": i, "problem": f"What is {i} + {i}?", "answer": str(2 * i)} for i in range(4)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


class ScriptedGenerator:
    """Answers every problem with `\\boxed{<gold>}` on even samples and `\\boxed{-1}` on odd ones; counts prompts."""

    name = "scripted"
    batch_size = 1

    def __init__(self, golds: dict[str, str], fail_after: int | None = None):
        self.golds = golds
        self.fail_after = fail_after
        self.prompts: list[str] = []

    def generate(self, prompts, sampling, seeds, **kwargs):
        if self.fail_after is not None and len(self.prompts) >= self.fail_after:
            raise KeyboardInterrupt("simulated interruption")
        self.prompts.extend(prompts)
        out = []
        for prompt in prompts:
            gold = next(g for q, g in self.golds.items() if q in prompt)
            texts = [f"\\boxed{{{gold if j % 2 == 0 else -1}}}" for j in range(sampling.n)]
            out.append([Sample(t, num_tokens=3, truncated=False) for t in texts])
        return out


class CountingGenerator(TransformersGenerator):
    """The real transformers generator, counting prompts and optionally failing after `fail_after` of them."""

    def __init__(self, *args, fail_after: int | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.fail_after = fail_after
        self.prompts: list[str] = []

    def generate(self, prompts, sampling, seeds, **kwargs):
        if self.fail_after is not None and len(self.prompts) >= self.fail_after:
            raise KeyboardInterrupt("simulated interruption")
        self.prompts.extend(prompts)
        return super().generate(prompts, sampling, seeds, **kwargs)


# --------------------------------------------------------------------------------------------------- estimators
def test_pass_at_k_hand_computed():
    assert pass_at_k(n=4, c=1, k=2) == pytest.approx(0.5)  # 1 - C(3,2)/C(4,2) = 1 - 3/6
    assert pass_at_k(n=5, c=2, k=2) == pytest.approx(0.7)  # 1 - C(3,2)/C(5,2) = 1 - 3/10
    assert pass_at_k(n=10, c=3, k=5) == pytest.approx(1 - 21 / 252)  # C(7,5)=21, C(10,5)=252
    assert pass_at_k(n=8, c=0, k=4) == 0.0
    assert pass_at_k(n=8, c=8, k=1) == 1.0
    assert pass_at_k(n=4, c=2, k=3) == 1.0  # fewer wrong samples than k: a hit is certain
    for n in range(1, 9):
        for c in range(n + 1):
            assert pass_at_k(n, c, 1) == pytest.approx(c / n)
            for k in range(1, n + 1):
                assert pass_at_k(n, c, k) == pytest.approx(1 - math.comb(n - c, k) / math.comb(n, k))
    with pytest.raises(ValueError):
        pass_at_k(n=4, c=1, k=5)


def test_pass_at_k_large_n_is_finite():
    assert 0.0 < pass_at_k(n=1024, c=3, k=512) < 1.0


def test_mean_and_majority():
    assert mean_at_k([1.0, 0.0, 1.0, 1.0]) == 0.75
    # Most votes wins; None does not vote.
    assert majority_answer(["3", None, "5", "3", None, None]) == "3"
    # Ties: the answer seen first wins, whatever its text.
    assert majority_answer(["b", "a", "a", "b"]) == "b"
    assert majority_answer(["a", "b", "b", "a"]) == "a"
    assert majority_answer([None, None]) is None
    # maj@k is the verifier score of the winning answer.
    assert maj_at_k(["7", "8", "8"], [1.0, 0.0, 0.0]) == 0.0
    assert maj_at_k(["7", "8", "7"], [1.0, 0.0, 1.0]) == 1.0
    assert maj_at_k([None, None], [0.0, 0.0]) == 0.0


def test_bootstrap_interval():
    assert bootstrap_interval([0.5] * 10) == (0.5, 0.5)
    values = [1.0] * 10 + [0.0] * 20
    low, high = bootstrap_interval(values, seed=3)
    assert (low, high) == bootstrap_interval(values, seed=3)  # seeded
    assert low < 1 / 3 < high
    # Binomial standard error at p=1/3, 30 problems: 0.086; a 95% interval spans about 4 of them.
    assert 0.25 < high - low < 0.45
    # Stratified: the average of two benchmarks, each resampled on its own.
    low2, high2 = bootstrap_interval([[1.0] * 5, [0.0, 1.0] * 5])
    assert low2 <= 0.75 <= high2 and high2 <= 1.0
    assert all(math.isnan(x) for x in bootstrap_interval([]))


def test_t_interval():
    # 4 values, sd 1.29: t(0.975, 3) = 3.182 times sd / sqrt(4).
    mean, half = t_interval([1.0, 2.0, 3.0, 4.0])
    assert mean == 2.5 and half == pytest.approx(3.182 * 1.2910 / 2, rel=1e-4)
    # Beyond 30 degrees of freedom the normal quantile.
    mean, half = t_interval([0.0, 1.0] * 20)
    assert half == pytest.approx(1.960 * 0.50637 / math.sqrt(40), rel=1e-4)
    assert t_interval([0.7]) == (0.7, pytest.approx(math.nan, nan_ok=True))


def test_presets_and_overrides():
    paper = resolve_sampling("paper", "aime24")
    assert (paper.n, paper.temperature, paper.top_p, paper.max_tokens) == (32, 0.6, 0.7, 4096)
    assert resolve_sampling("paper", "math500").n == 1
    assert resolve_sampling("paper-32b", "amc23").temperature == 1.0
    standard = resolve_sampling("standard", "minerva")
    assert (standard.n, standard.temperature, standard.top_p) == (16, 0.6, 0.95)
    overridden = resolve_sampling("paper", "aime24", n=4, temperature=0.0, max_tokens=64)
    assert (overridden.n, overridden.temperature, overridden.top_p, overridden.max_tokens) == (4, 0.0, 0.7, 64)
    with pytest.raises(ValueError, match="preset"):
        resolve_sampling("nope", "aime24")


# ------------------------------------------------------------------------------------------------------ loaders
@needs_benchmarks
def test_real_benchmarks_load():
    expected = {"aime24": 30, "aime25": 30, "amc23": 40, "math500": 500, "minerva": 272, "olympiadbench": 675}
    for name, size in expected.items():
        bench = load_benchmark(name, data_dir=BENCHMARKS_DIR)
        assert len(bench.problems) == size, name
        assert all(p.answer for p in bench.problems), name
        assert len({p.id for p in bench.problems}) == size, name
        assert all(not p.problem.endswith(BOXED_INSTRUCTION) for p in bench.problems), name
        assert bench.file_sha256 and len(bench.file_sha256) == 64
    assert load_benchmark("aime24", data_dir=BENCHMARKS_DIR).problems[0].answer == "204"
    assert load_benchmark("amc23", data_dir=BENCHMARKS_DIR).problems[0].answer == "27"  # 27.0 in the file
    assert load_benchmark("minerva", data_dir=BENCHMARKS_DIR).problems[0].answer == "1.6"  # last \boxed of solution
    assert load_benchmark("gsm8k", data_dir=BENCHMARKS_DIR).problems[0].answer == "18"  # after '#### '
    olympiad = load_benchmark("olympiadbench", data_dir=BENCHMARKS_DIR).problems
    assert all(not p.answer.startswith("$") for p in olympiad)
    assert "(1,8,19), (2,7,13), (4,5,7)" in {p.answer for p in olympiad}  # a multiple-answer item
    limited = load_benchmark("math500", data_dir=BENCHMARKS_DIR, limit=5)
    assert len(limited.problems) == 5
    assert limited.content_sha256 == load_benchmark("math500", data_dir=BENCHMARKS_DIR).content_sha256


@needs_benchmarks
def test_env_var_names_the_benchmarks_dir(monkeypatch):
    monkeypatch.setenv("NFT_TRL_BENCHMARKS_DIR", str(BENCHMARKS_DIR))
    assert load_benchmark("aime25", limit=2).source.endswith("aime25.jsonl")


def test_olympiad_gold_joins_multiple_answers(caplog):
    assert olympiad_gold(["$1$", "$-2$"], True) == "1, -2"
    assert olympiad_gold(["$\\frac{1}{2}$"], False) == "\\frac{1}{2}"
    assert olympiad_gold(["$3$", "$3.0$"], False) == "3"
    assert "is_multiple_answer is false" in caplog.text


def test_unknown_format_names_the_missing_column(tmp_path):
    path = tmp_path / "odd.jsonl"
    path.write_text(json.dumps({"question": "1+1?", "target": "2"}) + "\n")
    with pytest.raises(ValueError, match=r"no answer column; expected one of \['solution', 'answer'\]"):
        load_benchmark(f"odd={path}")
    path.write_text(json.dumps({"text": "1+1?", "answer": "2"}) + "\n")
    with pytest.raises(ValueError, match="no problem column"):
        load_benchmark(f"odd={path}")
    with pytest.raises(ValueError, match="Unknown benchmark"):
        load_benchmark("not_a_benchmark")


def test_parquet_and_hub_ids(tmp_path, monkeypatch):
    import datasets

    rows = [{"question": "q1", "final_answer": ["$1$", "$2$"], "is_multiple_answer": True}]
    datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "ob.parquet"))
    assert load_benchmark(f"ob={tmp_path / 'ob.parquet'}").problems[0].answer == "1, 2"

    calls = []

    def fake_load_dataset(path, name=None, split=None, **kwargs):
        calls.append((path, name, split))
        return [{"problem": "p", "answer": 3.0}]

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    bench = load_benchmark("mine=someone/some-math:validation")
    assert calls == [("someone/some-math", None, "validation")]
    assert bench.source == "hub:someone/some-math:validation" and bench.problems[0].answer == "3"
    load_benchmark("math500", data_dir=tmp_path)  # not in this folder: falls back to its Hub id
    assert calls[-1] == ("HuggingFaceH4/MATH-500", None, "test")

    def offline(*args, **kwargs):
        raise ConnectionError("offline")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(FileNotFoundError, match="no aime24.jsonl in data_dir=.*NFT_TRL_BENCHMARKS_DIR"):
        load_benchmark("aime24", data_dir=tmp_path)


def test_prompt_templates(tiny_tokenizer):
    chat = build_prompt("What is 2 + 2?", tiny_tokenizer)
    assert chat.startswith("<|im_start|>") and chat.endswith("<|im_start|>assistant\n")
    assert "What is 2 + 2?\n" + BOXED_INSTRUCTION in chat
    assert build_prompt("Q", template="raw") == "Q\n" + BOXED_INSTRUCTION + "\n"


# ------------------------------------------------------------------------------------------------ pipeline
def test_scripted_answers_give_exact_metrics(toy_benchmark, tiny_tokenizer, tmp_path):
    golds = {f"What is {i} + {i}?": str(2 * i) for i in range(4)}
    results = evaluate(
        "scripted",
        [f"toy={toy_benchmark}"],
        n=4,
        output_dir=tmp_path / "out",
        generator=ScriptedGenerator(golds),
        tokenizer=tiny_tokenizer,
    )
    m = results["benchmarks"]["toy"]["metrics"]
    assert m["avg@4"]["value"] == 0.5  # two of four samples right on every problem
    assert m["pass@1"]["value"] == 0.5 and m["pass@2"]["value"] == pytest.approx(5 / 6) and m["pass@4"]["value"] == 1
    assert m["maj@4"]["value"] == 1.0  # 2-2 tie, broken towards the first sample (right)
    assert m["avg@4"]["ci_low"] == m["avg@4"]["ci_high"] == 0.5
    assert results["average"]["value"] == 0.5 and not results["average"]["is_paper_six"]
    table = (tmp_path / "out" / "results.md").read_text()
    assert "| toy | avg@4 | 50.0 | [50.0, 50.0] | 100.0 | 100.0 | 4 | 4 |" in table


def test_cli_help_and_flags(capsys):
    from nft_trl.cli.main import build_eval_parser

    with pytest.raises(SystemExit) as exit_info:
        build_eval_parser().parse_args(["--help"])
    assert exit_info.value.code == 0 and "--preset {paper,paper-32b,standard}" in capsys.readouterr().out
    args = build_eval_parser().parse_args(["--model", "m", "--temperature", "1.0"])
    assert (args.n, args.temperature, args.top_p, args.preset) == (None, 1.0, None, "paper")  # None: keep the preset's


@needs_benchmarks
def test_cli_end_to_end_on_real_files(tiny_model_path, tmp_path):
    out = tmp_path / "eval"
    cmd = [sys.executable, "-m", "nft_trl.cli", "eval", "--model", str(tiny_model_path), "--benchmarks", ",".join(SIX)]
    cmd += [
        "--data_dir",
        str(BENCHMARKS_DIR),
        "--n",
        "2",
        "--max_tokens",
        "4",
        "--limit",
        "2",
        "--output_dir",
        str(out),
    ]
    cmd += ["--backend", "transformers", "--bootstrap_resamples", "100"]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| **average (paper's six)** |" in proc.stdout
    results = json.loads((out / "results.json").read_text())
    settings = results["settings"]
    assert settings["model"] == str(tiny_model_path) and settings["backend"] == "transformers"
    assert settings["verifier"]["name"] == "nft_trl.rewards.verifier.math_verifier"
    assert settings["package_versions"]["torch"] == torch.__version__
    assert set(results["benchmarks"]) == set(SIX)
    for name in SIX:
        bench = results["benchmarks"][name]
        assert len(bench["file_sha256"]) == 64 and bench["num_problems"] == 2
        assert bench["sampling"] == {"n": 2, "temperature": 0.6, "top_p": 0.7, "max_tokens": 4, "seed": 0}
        assert len(bench["per_problem"]) == 2 and len(bench["per_problem"][0]["scores"]) == 2
        assert (out / "samples" / f"{name}.jsonl").is_file()
    assert results["average"]["is_paper_six"]


# -------------------------------------------------------------------------------------------------------- resume
def test_resume_does_not_regenerate_finished_problems(toy_benchmark, tiny_tokenizer, tmp_path):
    model = build_tiny_model(tiny_tokenizer)
    kwargs = {"n": 2, "max_tokens": 4, "output_dir": tmp_path / "out", "tokenizer": tiny_tokenizer, "batch_size": 1}
    first = CountingGenerator(model, tiny_tokenizer, fail_after=2)
    with pytest.raises(KeyboardInterrupt):
        evaluate("tiny", [f"toy={toy_benchmark}"], generator=first, **kwargs)
    assert len(first.prompts) == 2
    samples_file = tmp_path / "out" / "samples" / "toy.jsonl"
    before = [json.loads(line) for line in samples_file.read_text().splitlines()]
    assert len(before) == 1 + 2  # header + two finished problems
    with open(samples_file, "a") as f:
        f.write('{"id": "2", "scor')  # a write torn by the interruption

    second = CountingGenerator(model, tiny_tokenizer)
    results = evaluate("tiny", [f"toy={toy_benchmark}"], generator=second, **kwargs)
    assert len(second.prompts) == 2  # only problems 2 and 3
    assert "What is 2 + 2?" in second.prompts[0] and "What is 3 + 3?" in second.prompts[1]
    per_problem = results["benchmarks"]["toy"]["per_problem"]
    assert [p["id"] for p in per_problem] == ["0", "1", "2", "3"]
    assert per_problem[0]["answers"] == before[1]["answers"]

    third = CountingGenerator(model, tiny_tokenizer)
    evaluate("tiny", [f"toy={toy_benchmark}"], generator=third, **kwargs)
    assert third.prompts == []  # everything finished: nothing is regenerated

    with pytest.raises(ValueError, match=r"other settings \(differences in: sampling\)"):
        evaluate("tiny", [f"toy={toy_benchmark}"], generator=third, temperature=1.0, **kwargs)


def test_unscorable_problems_are_counted_not_scored(toy_benchmark, tiny_tokenizer, tmp_path):
    def no_gold_two(completions, solution, **kwargs):
        return [None if gold == "2" else 1.0 for gold in solution]

    golds = {f"What is {i} + {i}?": str(2 * i) for i in range(4)}
    results = evaluate(
        "m",
        [f"toy={toy_benchmark}"],
        n=2,
        output_dir=tmp_path / "out",
        generator=ScriptedGenerator(golds),
        tokenizer=tiny_tokenizer,
        verifier=no_gold_two,
    )
    bench = results["benchmarks"]["toy"]
    assert bench["num_unscorable"] == 1 and bench["metrics"]["avg@2"]["value"] == 1.0
    assert [p.get("unscorable", False) for p in bench["per_problem"]] == [False, True, False, False]
    assert "| 4 (1 unscorable) |" in (tmp_path / "out" / "results.md").read_text()


def test_stored_completions_are_rescored_not_regenerated(toy_benchmark, tiny_tokenizer, tmp_path):
    def always_wrong(completions, solution, **kwargs):
        return [0.0] * len(completions)

    golds = {f"What is {i} + {i}?": str(2 * i) for i in range(4)}
    kwargs = {"n": 2, "output_dir": tmp_path / "out", "tokenizer": tiny_tokenizer}
    first = evaluate(
        "m", [f"toy={toy_benchmark}"], generator=ScriptedGenerator(golds), verifier=always_wrong, **kwargs
    )
    assert first["benchmarks"]["toy"]["metrics"]["avg@2"]["value"] == 0.0
    no_generation = ScriptedGenerator(golds, fail_after=0)  # raises if asked to generate
    second = evaluate("m", [f"toy={toy_benchmark}"], generator=no_generation, **kwargs)  # the training verifier
    assert second["benchmarks"]["toy"]["metrics"]["avg@2"]["value"] == 0.5
    assert second["settings"]["verifier"]["name"] == "nft_trl.rewards.verifier.math_verifier"


# ------------------------------------------------------------------------------------------------------ generation
def test_transformers_generator_shapes_and_greedy(tiny_tokenizer):
    model = build_tiny_model(tiny_tokenizer)
    generator = TransformersGenerator(model, tiny_tokenizer, batch_size=2)
    prompts = [build_prompt(q, tiny_tokenizer) for q in ["What is 1 + 1?", "What is 12 + 30? Think.", "Hi"]]
    out = generator.generate(prompts, SamplingSettings(n=3, max_tokens=5), seeds=[0, 1, 2])
    assert [len(s) for s in out] == [3, 3, 3]
    assert all(s.num_tokens <= 5 for samples in out for s in samples)
    greedy = generator.generate(prompts[:1], SamplingSettings(n=2, temperature=0.0, max_tokens=5), seeds=[0])
    assert greedy[0][0] == greedy[0][1]
    assert model.training and tiny_tokenizer.padding_side == "right"  # both restored after generation


def test_samples_of_a_prompt_share_its_prefill_and_draw_what_generate_draws():
    """n samples per prompt read the prompt once (then copy the cache): the same tokens and logits as `generate` with
    `num_return_sequences=n`, which reads each prompt n times; left padding of prompts of different lengths. The
    trained embedded model, whose answers depend on the positions (a random one's barely do)."""
    from nft_trl.embedded import load_embedded_model
    from nft_trl.sampling import generate_per_prompt

    model, tokenizer = load_embedded_model()
    questions = ["Compute 25 + 79.", "Compute 3 + 4, then think about it.", "Compute 10 + 11."]
    tokenizer.padding_side = "left"
    inputs = tokenizer([build_prompt(q, tokenizer) for q in questions], return_tensors="pt", padding=True)
    assert inputs["attention_mask"].sum(1).unique().numel() == 2  # two lengths: padded rows
    settings = dict(do_sample=True, top_k=0, max_new_tokens=12, output_logits=True, return_dict_in_generate=True)
    runs = []
    for shared in (True, False):
        torch.manual_seed(5)
        if shared:
            runs.append(generate_per_prompt(model, inputs["input_ids"], inputs["attention_mask"], 8, **settings))
        else:
            runs.append(model.generate(**inputs, num_return_sequences=8, **settings))
    once, plain = runs
    assert torch.equal(once.sequences, plain.sequences)
    torch.testing.assert_close(torch.stack(once.logits), torch.stack(plain.logits), rtol=0, atol=1e-4)
    assert len({tuple(row.tolist()) for row in once.sequences}) > 3  # sampled, not one answer copied


def test_shared_prefill_with_a_generation_config_asks_for_n_there_and_warns_nothing(caplog):
    """With a `generation_config` (as the evaluation passes one), the number of answers goes into a copy of it:
    transformers 5 warns when generation arguments come beside a config, and the caller's config stays as it was."""
    from transformers import GenerationConfig
    from transformers.utils import logging as hf_logging

    from nft_trl.embedded import load_embedded_model
    from nft_trl.sampling import generate_per_prompt

    hf_logging.warning_once.cache_clear()  # a warning given once earlier in this process would hide a new one
    library_logger = hf_logging.get_logger("transformers")  # it does not propagate to the root logger
    library_logger.addHandler(caplog.handler)
    model, tokenizer = load_embedded_model()
    tokenizer.padding_side = "left"
    inputs = tokenizer(
        [build_prompt(q, tokenizer) for q in ("Compute 1 + 2.", "Compute 30 + 4.")], return_tensors="pt", padding=True
    )
    config = GenerationConfig(do_sample=True, top_k=0, max_new_tokens=4, pad_token_id=tokenizer.pad_token_id)
    asked = config.num_return_sequences
    try:
        for n in (1, 3):
            out = generate_per_prompt(
                model, inputs["input_ids"], inputs["attention_mask"], n, generation_config=config
            )
            assert out.shape[0] == 2 * n
    finally:
        library_logger.removeHandler(caplog.handler)
    assert config.num_return_sequences == asked
    assert "deprecated" not in caplog.text


def test_vllm_generator_against_a_stub_vllm(monkeypatch, tiny_tokenizer):
    """vLLM is not installed here: check the calls against a stub with vLLM's `LLM` / `SamplingParams` API."""
    import importlib.machinery
    import types

    calls = {}

    class SamplingParams:
        def __init__(self, **kwargs):
            self.kwargs = kwargs

    class LLM:
        def __init__(self, **kwargs):
            calls["llm"] = kwargs

        def get_tokenizer(self):
            return tiny_tokenizer

        def generate(self, inputs, params, use_tqdm=True):
            calls["inputs"], calls["params"] = inputs, params
            done = types.SimpleNamespace(text="\\boxed{2}", token_ids=[5, 6], finish_reason="stop")
            cut = types.SimpleNamespace(text="so", token_ids=[7] * 8, finish_reason="length")
            return [types.SimpleNamespace(outputs=[done, cut]) for _ in inputs]

    stub = types.ModuleType("vllm")
    stub.__spec__ = importlib.machinery.ModuleSpec("vllm", None)
    stub.LLM, stub.SamplingParams = LLM, SamplingParams
    monkeypatch.setitem(sys.modules, "vllm", stub)
    from nft_trl.evaluation import make_generator

    generator = make_generator("some/model", "vllm", seed=3, tensor_parallel_size=2, device="ignored")
    assert calls["llm"] == {"model": "some/model", "seed": 3, "tensor_parallel_size": 2}
    prompt = build_prompt("What is 1 + 1?", tiny_tokenizer)
    out = generator.generate([prompt], SamplingSettings(n=2, temperature=0.6, top_p=0.7, max_tokens=8), seeds=[11])
    assert calls["params"][0].kwargs == {"n": 2, "temperature": 0.6, "top_p": 0.7, "max_tokens": 8, "seed": 11}
    assert calls["inputs"][0]["prompt_token_ids"] == tiny_tokenizer(prompt, add_special_tokens=False)["input_ids"]
    assert [(s.text, s.num_tokens, s.truncated) for s in out[0]] == [("\\boxed{2}", 2, False), ("so", 8, True)]


# ------------------------------------------------------------------------------------------------------- callback
def test_callback_logs_next_to_nft_metrics(toy_benchmark, tiny_model_path, tmp_path):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from nft_trl import NFTConfig, NFTTrainer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    train = Dataset.from_list([{"prompt": [{"role": "user", "content": f"What is {i} + 1?"}]} for i in range(8)])
    settings = dict(per_device_train_batch_size=2, num_generations=2, max_completion_length=4, max_steps=3)
    # logging_steps: the callback must force its own log lines.
    config = NFTConfig(**cpu_training_args(tmp_path / "nft", **settings, logging_steps=100))
    callback = BenchmarkEvalCallback([f"toy={toy_benchmark}"], eval_steps=2, limit=2, n=2, max_tokens=4)
    trainer = NFTTrainer(
        model=model,
        reward_funcs=lambda completions, **kwargs: [float(len(c[0]["content"]) % 2) for c in completions],
        args=config,
        train_dataset=train,
        processing_class=tokenizer,
    )
    trainer.add_callback(callback)
    callback.attach(trainer)
    assert trainer.callback_handler.callbacks[0] is callback
    trainer.train()

    logged = [entry for entry in trainer.state.log_history if "bench/toy/avg@2" in entry]
    assert [entry["step"] for entry in logged] == [2]
    entry = logged[0]
    assert 0.0 <= entry["bench/toy/ci_low"] <= entry["bench/toy/avg@2"] <= entry["bench/toy/ci_high"] <= 1.0
    assert "bench/avg" in entry and "bench/avg_ci_high" in entry and "bench/toy/pass@2" in entry
    assert "nft/correct_rate" in entry and "loss" in entry  # the same line as the training metrics
    assert callback.history[0]["step"] == 2


def test_callback_skips_on_other_ranks_without_process_group():
    from transformers import TrainerControl, TrainerState

    callback = BenchmarkEvalCallback(["unused"], eval_steps=1)
    state = TrainerState(is_world_process_zero=False)
    state.global_step = 1
    control = callback.on_step_end(None, state, TrainerControl())
    assert control.should_log and callback._pending is None  # never touched the benchmarks


def _distributed_worker(rank: int, world_size: int, init_file: str, queue) -> None:
    from transformers import TrainerControl, TrainerState

    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)

    class StubCallback(BenchmarkEvalCallback):
        def evaluate(self, model, tokenizer, step):
            assert rank == 0, "only the main process evaluates"
            return {"bench/stub": 0.25 * step}

    callback = StubCallback(["unused"], eval_steps=2)
    state = TrainerState(is_world_process_zero=rank == 0)
    results = []
    for step in range(1, 5):
        state.global_step = step
        callback.on_step_end(None, state, TrainerControl())
        logs = {"loss": 1.0}
        callback.on_log(None, state, TrainerControl(), logs=logs)
        results.append(logs.get("bench/stub"))
    torch.distributed.destroy_process_group()
    queue.put((rank, results))


@pytest.mark.distributed
def test_callback_two_processes_log_the_same_values(tmp_path):
    ctx = torch.multiprocessing.get_context("fork")  # no re-import: the children only run the stub
    queue = ctx.SimpleQueue()
    init_file = str(tmp_path / "pg")
    procs = [ctx.Process(target=_distributed_worker, args=(r, 2, init_file, queue)) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert all(p.exitcode == 0 for p in procs)
    got = dict(queue.get() for _ in procs)
    assert got[0] == got[1] == [None, 0.5, None, 1.0]
