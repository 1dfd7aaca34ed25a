"""Tests of `nft_trl.embedded` and of `nft_trl.evaluation.evaluate_accuracy`: the task, the shipped model, the cached
build.

The fast tests build a reduced model (tiny architecture, a few warm-up steps) into a temporary cache and check the
shipped model; the test marked `slow` runs the real default build (into the user's cache, or `$NFT_TRL_CACHE`) and
checks that it reproduces a model of the shipped one's shape and quality. That build takes about 15 minutes on 2 CPU
cores, so it runs only when asked: `NFT_TRL_FULL_BUILD=1 python -m pytest tests/test_embedded.py -k reproduces`.
"""

import dataclasses
import json
import math
import os
import re
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from nft_trl.embedded import (
    CACHE_ENV_VAR,
    DEFAULT_CONFIG,
    MANIFEST_NAME,
    SHIPPED_DIR,
    EmbeddedConfig,
    embedded_path,
    load_embedded_model,
    load_manifest,
    make_dataset,
    make_problems,
)
from nft_trl.embedded import model as embedded
from nft_trl.evaluation import evaluate_accuracy


# A build that takes a few seconds: tiny model, a handful of warm-up steps, one validation check.
TINY = EmbeddedConfig(
    vocab_size=300,
    tokenizer_corpus_size=200,
    hidden_size=32,
    num_hidden_layers=1,
    num_attention_heads=2,
    num_key_value_heads=1,
    intermediate_size=64,
    batch_size=8,
    max_steps=4,
    eval_every=4,
    num_validation_prompts=4,
    num_validation_samples=1,
    max_new_tokens=4,
)
PROMPT_RE = re.compile(r"Compute (\d+) \+ (\d+)(?: - (\d+))?\. Put the final answer in \\boxed\{\}\.")
# The embedded default must leave RL room to learn: neither all-wrong nor solved at temperature 1.0.
ACCURACY_BAND = (0.30, 0.60)


def exact_match_reward(completions, solution, **kwargs):
    """Stand-in verifier for these tests: the text after the last `\\boxed{` up to its `}` equals the gold answer."""
    rewards = []
    for completion, gold in zip(completions, solution, strict=True):
        text = completion if isinstance(completion, str) else completion[-1]["content"]
        boxed = re.findall(r"\\boxed\{([^{}]*)\}", text)
        rewards.append(float(bool(boxed) and boxed[-1].strip() == gold))
    return rewards


@pytest.fixture(scope="module")
def tiny_cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("cache")
    path = embedded_path(cache_dir=root, config=TINY)
    return root, path


def test_dataset_is_deterministic_and_conversational():
    first, second = make_dataset("train", 50, seed=3), make_dataset("train", 50, seed=3)
    assert first.column_names == ["prompt", "solution"]
    assert first["prompt"] == second["prompt"] and first["solution"] == second["solution"]
    assert make_dataset("train", 50, seed=4)["prompt"] != first["prompt"]
    prompt = first[0]["prompt"]
    assert isinstance(prompt, list) and prompt[0]["role"] == "user" and len(prompt) == 1


@pytest.mark.parametrize("num_operands", [2, 3])
def test_gold_answers_are_correct(num_operands):
    config = EmbeddedConfig(num_operands=num_operands)
    dataset = make_dataset("test", 200, seed=0, config=config)
    for row in dataset:
        operands = [int(x) for x in PROMPT_RE.fullmatch(row["prompt"][0]["content"]).groups() if x is not None]
        assert len(operands) == num_operands
        assert min(operands) >= 10 and max(operands) <= 99
        answer = operands[0] + operands[1] - sum(operands[2:])
        assert row["solution"] == str(answer) and answer >= 0
    for problem in make_problems("train", 20, config=config):
        for worked in (False, True):
            completion = problem.completion(worked)
            assert completion.endswith(f"\\boxed{{{problem.answer}}}")
            assert exact_match_reward([completion], [str(problem.answer)]) == [1.0]


def test_splits_are_disjoint_for_any_seeds():
    train = {row["prompt"][0]["content"] for seed in (0, 1) for row in make_dataset("train", 3_000, seed=seed)}
    test = {row["prompt"][0]["content"] for seed in (0, 1) for row in make_dataset("test", 500, seed=seed)}
    assert not train & test
    contents = [row["prompt"][0]["content"] for row in make_dataset("test", 500, seed=0)]
    assert len(set(contents)) == len(contents)
    # The held-out split of `a + b` has about 810 problems: asking for more fails loudly.
    with pytest.raises(ValueError, match="distinct"):
        make_dataset("test", 2_000)
    with pytest.raises(ValueError, match="split"):
        make_dataset("dev", 1)


def test_validation_split_is_carved_from_train_and_leaves_train_and_test_unchanged():
    def contents(split, n, seed=0, **kwargs):
        return [row["prompt"][0]["content"] for row in make_dataset(split, n, seed=seed, **kwargs)]

    validation = set(contents("validation", 300)) | set(contents("validation", 300, seed=1))
    assert not validation & set(contents("test", 500))
    assert not validation & set(contents("train", 3_000, exclude_validation=True))
    assert validation & set(contents("train", 3_000))  # "train" keeps them unless asked not to
    # The train and test rows are those of the two-split task (and of the embedded builds).
    assert [row["solution"] for row in make_dataset("test", 3)] == ["104", "136", "124"]
    assert [row["solution"] for row in make_dataset("train", 3)] == ["99", "185", "96"]
    # Excluding them keeps the same draws, minus the validation problems.
    kept = [p for p in make_problems("train", 400) if not p.in_validation]
    assert make_problems("train", 200, exclude_validation=True) == kept[:200]


def test_version_hash_tracks_settings():
    assert TINY.version_hash() == dataclasses.replace(TINY).version_hash()
    assert TINY.version_hash() != dataclasses.replace(TINY, seed=TINY.seed + 1).version_hash()


def test_cache_round_trip(tiny_cache, monkeypatch):
    root, path = tiny_cache
    assert path == root / "embedded" / TINY.version_hash()
    manifest = json.loads((path / MANIFEST_NAME).read_text())
    assert manifest["version"] == TINY.version_hash() and manifest["steps"] == TINY.max_steps
    assert load_manifest(cache_dir=root, config=TINY)["num_parameters"] == manifest["num_parameters"]
    # No temporary directories are left behind.
    assert sorted(p.name for p in path.parent.iterdir() if p.is_dir()) == [path.name]

    # A second call loads from disk: building again would fail loudly.
    def no_build(*args, **kwargs):
        raise AssertionError("the cached model was rebuilt")

    monkeypatch.setattr(embedded, "build_embedded", no_build)
    model, tokenizer = load_embedded_model(cache_dir=root, config=TINY)
    assert not model.training and tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.chat_template is not None
    # `AutoTokenizer` reloads the saved tokenizer (as a Qwen2 tokenizer) with the tokenization it was trained with.
    built = embedded.build_tokenizer(TINY)
    text = built.apply_chat_template(make_dataset("test", 1)[0]["prompt"], add_generation_prompt=True, tokenize=False)
    assert tokenizer(text)["input_ids"] == built(text)["input_ids"]
    assert sum(p.numel() for p in model.parameters()) == manifest["num_parameters"]
    # The directory is a plain `model_name_or_path`.
    assert isinstance(AutoModelForCausalLM.from_pretrained(path), torch.nn.Module)
    # The environment variable selects the cache root.
    monkeypatch.setenv(CACHE_ENV_VAR, str(root))
    assert embedded_path(config=TINY) == path


def test_interrupted_build_leaves_no_cache(tmp_path, monkeypatch):
    def interrupted(path, config=None):
        (Path(path) / "config.json").write_text("{}")
        raise KeyboardInterrupt

    monkeypatch.setattr(embedded, "build_embedded", interrupted)
    with pytest.raises(KeyboardInterrupt):
        embedded_path(cache_dir=tmp_path, config=TINY)
    parent = tmp_path / "embedded"
    assert not [p for p in parent.iterdir() if p.is_dir()]


def test_rebuild_replaces_the_cache(tiny_cache, tmp_path):
    _, path = tiny_cache
    first = embedded_path(cache_dir=tmp_path, config=TINY)
    marker = first / "marker"
    marker.write_text("old build")
    assert embedded_path(cache_dir=tmp_path, config=TINY, rebuild=True) == first
    assert not marker.exists() and (first / MANIFEST_NAME).is_file()
    # Same settings, same weights: the build is deterministic.
    weights = [AutoModelForCausalLM.from_pretrained(p).state_dict() for p in (path, first)]
    for name, tensor in weights[0].items():
        torch.testing.assert_close(tensor, weights[1][name])


def test_evaluate_accuracy(tiny_cache):
    root, _ = tiny_cache
    model, tokenizer = load_embedded_model(cache_dir=root, config=TINY)
    model.train()
    dataset = make_dataset("test", 6, seed=0)
    kwargs = {"num_samples": 3, "max_new_tokens": 6, "batch_size": 4, "reward_fn": exact_match_reward}
    result = evaluate_accuracy(model, tokenizer, dataset, **kwargs)
    assert model.training  # the training mode is restored
    assert result.num_prompts == 6 and result.num_samples == 3 and result.num_ungraded == 0
    assert len(result.per_prompt_accuracy) == 6 and 0.0 <= result.accuracy <= 1.0
    assert 0.0 <= result.mixed_fraction <= 1.0
    assert len(result.examples) == 4 and {"prompt", "completion", "reward", "solution"} <= set(result.examples[0])
    assert result.examples[0]["prompt"].endswith("<|im_start|>assistant\n")
    # Seeded sampling is reproducible.
    assert evaluate_accuracy(model, tokenizer, dataset, **kwargs).examples == result.examples

    # A policy that always answers correctly scores 1.0; `None` rewards are left out of the mean.
    always_right = evaluate_accuracy(
        model, tokenizer, dataset, temperature=0.0, reward_fn=lambda completions, **kw: [1.0] * len(completions)
    )
    assert always_right.accuracy == 1.0 and always_right.mixed_fraction == 0.0
    ungraded = evaluate_accuracy(
        model, tokenizer, dataset, temperature=0.0, reward_fn=lambda completions, **kw: [None] * len(completions)
    )
    assert math.isnan(ungraded.accuracy) and ungraded.num_ungraded == 6
    with pytest.raises(ValueError, match="Greedy"):
        evaluate_accuracy(model, tokenizer, dataset, temperature=0.0, num_samples=2, reward_fn=exact_match_reward)


def held_out_accuracy(model, tokenizer):
    return evaluate_accuracy(
        model, tokenizer, make_dataset("test", 200, seed=0), num_samples=4, reward_fn=exact_match_reward
    )


def test_shipped_model_is_the_default_build():
    from safetensors import safe_open

    assert embedded.shipped_version() == DEFAULT_CONFIG.version_hash()
    assert embedded_path() == SHIPPED_DIR
    manifest = json.loads((SHIPPED_DIR / MANIFEST_NAME).read_text())
    assert manifest["config"] == DEFAULT_CONFIG.settings() and manifest["stored_dtype"] == "float16"
    with safe_open(SHIPPED_DIR / "model.safetensors", framework="pt") as weights:
        assert {weights.get_tensor(name).dtype for name in weights.keys()} == {torch.float16}  # noqa: SIM118
    model, tokenizer = load_embedded_model()
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert sum(p.numel() for p in model.parameters()) == manifest["num_parameters"]
    # Any `from_pretrained` (TRL's too) loads it in float32, the dtype it trains in.
    assert AutoModelForCausalLM.from_pretrained(SHIPPED_DIR).dtype == torch.float32
    assert tokenizer.get_vocab() == embedded.build_tokenizer().get_vocab()


@pytest.mark.slow
@pytest.mark.skipif(
    os.environ.get("NFT_TRL_FULL_BUILD") != "1",
    reason="the full default build takes ~15 min on 2 cores: run it with NFT_TRL_FULL_BUILD=1 (the fast tests above "
    "check the same build pipeline on a tiny configuration)",
)
def test_build_reproduces_the_shipped_model():
    # The build is deterministic for a given machine, not bitwise across machines (thread counts change the sums):
    # the check is the shape, the tokenizer and the accuracy band RL needs, for the build and the shipped copy alike.
    built, tokenizer = load_embedded_model(shipped=False)  # built once per machine into the user's cache
    shipped, _ = load_embedded_model()
    assert {n: p.shape for n, p in built.named_parameters()} == {n: p.shape for n, p in shipped.named_parameters()}
    assert tokenizer.get_vocab() == embedded.build_tokenizer().get_vocab()
    for model in (built, shipped):
        result = held_out_accuracy(model, tokenizer)
        assert ACCURACY_BAND[0] <= result.accuracy <= ACCURACY_BAND[1]
        assert result.mixed_fraction > 0.5


def test_demo_trains_and_writes_the_learning_curve(tmp_path, monkeypatch, capsys):
    from nft_trl.cli.train import main, parse_args
    from nft_trl.embedded import demo

    monkeypatch.setattr(demo, "DEMO_EVAL_PROMPTS", 8)
    script_args, training_args, model_args = parse_args(
        ["--output_dir", str(tmp_path), "--max_steps", "2", "--per_device_train_batch_size", "16"]
    )
    assert training_args.learning_rate == demo.DEMO_DEFAULTS["learning_rate"]  # the demo's values fill the defaults
    main(script_args, training_args, model_args)
    out = capsys.readouterr().out
    assert "Before training: held-out accuracy" in out and "(8 problems, 4 samples per problem)" in out
    counts = re.search(r"Per held-out question \(8, 4 answers each\): (\d+) got more right answers after training, "
                       r"(\d+) fewer, (\d+) the same\.", out)  # fmt: skip
    assert counts and sum(int(n) for n in counts.groups()) == 8, out
    if int(counts.group(1)) > 0:  # the example shown is a question whose count rose, and says it is one question
        assert "The question whose right answers rose the most (one question is noise" in out
        before, after = (int(n) for n in re.findall(r"(?:before|after ): (\d) of 4 right", out))
        assert after > before
    assert "Held-out accuracy (8 problems, 4 samples at T=1.0):" in out and "before ->" in out
    assert (tmp_path / demo.CURVE_FILE).stat().st_size > 0 and (tmp_path / "model.safetensors").exists()
