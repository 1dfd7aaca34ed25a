"""The `nft-trl` command (nft_trl.cli): dispatch, train / check / eval / vllm-serve, bad input, the shipped recipes and
accelerate configs, offline on CPU."""

import ast
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import max_abs_diff

import nft_trl
from nft_trl.algorithm.config import NFTConfig
from nft_trl.cli import main
from nft_trl.cli.batch import arithmetic
from nft_trl.cli.environment import missing_model_folder
from nft_trl.cli.launch import (
    _train_in_this_process,
    _without_launch_options,
    check_main,
    parse_run,
    train_main,
    vllm_serve_main,
)
from nft_trl.cli.memory import KNOWN_MODELS, model_shape
from nft_trl.cli.preflight import RECIPES_DIR, launch_from, shipped_recipes
from nft_trl.cli.train import parse_args


PACKAGE_ROOT = Path(nft_trl.__file__).resolve().parents[1]
RECIPE_7B = "Qwen2.5-Math-7B/nft/config_paper"
RECIPE_32B = "Qwen2.5-32B/nft/config_paper"


CPU_RECIPE = "embedded/nft/config_cpu"
CACHED_MODEL = "Qwen/Qwen2.5-Math-1.5B"


@pytest.fixture(autouse=True)
def hub_cache(tmp_path_factory, monkeypatch):
    """The Hub cache of these tests: offline, holding `CACHED_MODEL` (as a download leaves it: refs/main and a
    snapshot with its config.json), and nothing else."""
    from huggingface_hub import constants

    cache = tmp_path_factory.mktemp("hub-cache")
    repo = cache / f"models--{CACHED_MODEL.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    (repo / "snapshots" / ("0" * 40)).mkdir(parents=True)
    (repo / "snapshots" / ("0" * 40) / "config.json").write_text("{}")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def write_recipe(tmp_path, **values) -> str:
    """A small recipe on a known (cached) model and a local dataset: valid for 2 processes unless `values` say
    otherwise."""
    data = tmp_path / "train.jsonl"
    data.write_text(json.dumps({"prompt": "What is 1 + 1?", "solution": "2"}) + "\n")
    recipe = dict(
        model_name_or_path=CACHED_MODEL,
        dataset_name=str(data),
        max_prompt_length=512,
        num_generations=16,
        per_device_train_batch_size=1,
        gradient_accumulation_steps=8,
        steps_per_generation=8,
        max_completion_length=1024,
        num_processes=2,
    )
    recipe.update(values)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({k: v for k, v in recipe.items() if v is not None}))
    return str(path)


def run_check(capsys, *argv) -> tuple[int, str]:
    code = check_main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out + captured.err


# --------------------------------------------------------------------------------------------------------------------
# Shipped recipes and configs


def test_recipes_are_shipped():
    names = shipped_recipes()
    for expected in (RECIPE_7B, RECIPE_32B, "Qwen2.5-Math-7B/rft/config_paper", "Qwen2.5-Math-7B/grpo/config_paper"):
        assert expected in names
    assert "Qwen2.5-Math-7B/dapo/config_paper" in names and "Qwen2.5-Math-1.5B/nft/config_1gpu_lora" in names


@pytest.mark.parametrize("recipe", shipped_recipes())
def test_every_recipe_passes_check_for_its_gpu_count(capsys, recipe):
    # --recipe_only: the cluster recipes name Hub ids and vLLM, which this offline CPU machine lacks.
    documented = yaml.safe_load((RECIPES_DIR / f"{recipe}.yaml").read_text())["num_processes"]
    code, out = run_check(capsys, "--config", recipe, "--recipe_only")
    assert code == 0, out
    assert f"{documented} process" in out and "Result: OK" in out and "fits in 80 GB" in out
    assert "WARNING: the learning-rate warm-up" not in out


def test_cpu_recipe_passes_the_whole_check_offline(capsys):
    code, out = run_check(capsys, "--config", CPU_RECIPE)
    assert code == 0, out
    assert "Result: OK\n" in out + "\n" and "WARNING" not in out  # nothing to download, no vLLM, no warm-up
    assert "embedded/pretrained" in out  # model_name_or_path: embedded is the shipped folder


def test_no_shipped_recipe_warns_about_activation_checkpointing():
    """The training script parses every shipped recipe without a checkpointing warning, issued or logged (transformers
    5 deprecates the `gradient_checkpointing*` names for `activation_checkpointing*`; a recipe a user runs as shipped
    must not raise a warning only an edit of the shipped file would silence). Through the launched script's parser:
    the launcher's own parse filters that warning out, for TRL's GRPOConfig default."""
    import logging
    import warnings

    class Records(logging.Handler):
        def __init__(self):
            super().__init__(logging.WARNING)
            self.messages = []

        def emit(self, record):
            self.messages.append(f"{record.name}: {record.getMessage()}")

    records = Records()
    loggers = [logging.getLogger(), logging.getLogger("transformers")]  # transformers' logger does not propagate
    for logger in loggers:
        logger.addHandler(records)
    found = []
    try:
        for recipe in shipped_recipes():
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                parse_args(["--config", str(RECIPES_DIR / f"{recipe}.yaml"), "--use_cpu", "true"])
            found += [f"{recipe}: {w.category.__name__}: {w.message}" for w in caught]
            found += [f"{recipe}: {message}" for message in records.messages]
            records.messages.clear()
    finally:
        for logger in loggers:
            logger.removeHandler(records)
    assert not [line for line in found if "checkpointing" in line.lower()], "\n".join(found)


def test_recipes_new_checkpointing_names_reach_an_old_transformers(tmp_path):
    """Under transformers 4 (only `gradient_checkpointing*`), the recipes' `activation_checkpointing*` keys and flags
    set the old fields; where both names exist (transformers 5) nothing is renamed."""
    import dataclasses

    from nft_trl.cli.arguments import RecipeParser

    @dataclasses.dataclass
    class OldArguments:  # the two fields as transformers 4's TrainingArguments has them
        gradient_checkpointing: bool = False
        gradient_checkpointing_kwargs: str | None = None

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        "activation_checkpointing: true\nactivation_checkpointing_kwargs: '{\"use_reentrant\": false}'\n"
    )
    parser = RecipeParser((OldArguments,))
    (args,) = parser.parse_args_and_config(["--config", str(recipe)])
    assert args.gradient_checkpointing is True and args.gradient_checkpointing_kwargs == '{"use_reentrant": false}'
    (args,) = parser.parse_args_and_config(["--config", str(recipe), "--activation_checkpointing=false"])
    assert args.gradient_checkpointing is False
    (args,) = RecipeParser((OldArguments,)).parse_args_and_config(["--activation_checkpointing", "true"])
    assert args.gradient_checkpointing is True
    # transformers 5: both names are fields, each is read as itself.
    _, config, _ = parse_args(["--config", str(RECIPES_DIR / f"{RECIPE_7B}.yaml"), "--use_cpu", "true"])
    assert config.activation_checkpointing is True and config.gradient_checkpointing is True


@pytest.mark.parametrize(("recipe", "gpus"), [(RECIPE_7B, 32), (RECIPE_32B, 128)])
def test_paper_recipes_reproduce_the_papers_arithmetic(recipe, gpus):
    run = parse_run(["--config", recipe], prog="test")
    assert not run.errors and run.launch.num_processes == gpus and run.launch.zero_stage == 3
    arith = arithmetic(run.training_args, gpus, run.script_args.max_prompt_length)
    assert arith.questions_per_generation == 512 and arith.num_generations == 16
    assert arith.answers_per_optimizer_step == 512  # 32 questions x 16 answers
    assert arith.optimizer_steps_per_generation == 16 and not arith.on_policy
    args = run.training_args
    assert isinstance(args, NFTConfig) and args.learning_rate == 1e-6 and args.weight_decay == 0.1
    assert args.negative_weight == 1.0 and args.negative_clip == 1.0 and args.prompt_weighting == "incorrect_rate"
    assert args.beta == 0.0 and args.temperature == 1.0 and args.top_p == 1.0 and args.use_vllm
    assert run.script_args.dataset_format == "dapo" and run.model_args.dtype == "bfloat16"
    assert arith.max_steps / arith.optimizer_steps_per_generation == 320


def test_baselines_differ_from_nft_only_in_the_method():
    base = yaml.safe_load((RECIPES_DIR / f"{RECIPE_7B}.yaml").read_text())
    base.pop("output_dir")
    # NFT's own fields; TRL's GRPOTrainer has none of them (nor dynamic sampling).
    nft_only = {
        "negative_weight",
        "negative_clip",
        "prompt_weighting",
        "importance_sampling_level",
        "max_log_ratio",
        "correct_rate_margin",
        "loss_type",
        "token_sum_divisor",
        "dynamic_sampling",
        "dynamic_sampling_multiplier",
        "max_sampling_rounds",
    }
    expected_diffs = {
        "rft": {"negative_weight": 0.0, "prompt_weighting": "none"},
        "grpo": {"method": "grpo", "loss_type": "grpo", "scale_rewards": "group", "epsilon": 0.2},
        "dapo": {
            "method": "grpo",
            "loss_type": "dapo",
            "scale_rewards": "group",
            "epsilon": 0.2,
            "epsilon_high": 0.28,
        },
    }
    for method, diffs in expected_diffs.items():
        recipe = yaml.safe_load((RECIPES_DIR / f"Qwen2.5-Math-7B/{method}/config_paper.yaml").read_text())
        recipe.pop("output_dir")
        expected = base if method == "rft" else {k: v for k, v in base.items() if k not in nft_only}
        assert recipe == {**expected, **diffs}, method


@pytest.mark.parametrize("method", ["grpo", "dapo"])
def test_baselines_are_parsed_as_plain_grpo_configs(method):
    from trl import GRPOConfig

    recipe = f"Qwen2.5-Math-7B/{method}/config_paper"
    run = parse_run(["--config", recipe, "--num_processes", "1"], prog="test")
    assert not run.errors and isinstance(run.training_args, GRPOConfig)
    assert not isinstance(run.training_args, NFTConfig)  # NFT's validation never sees the baselines
    # The launched script builds exactly TRL's GRPOConfig, for TRL's GRPOTrainer (use_cpu: GRPOConfig's bf16 default
    # needs a GPU, and this test runs without one).
    _, config, _ = parse_args(["--config", str(RECIPES_DIR / f"{recipe}.yaml"), "--use_cpu", "true"])
    assert type(config) is GRPOConfig and config.steps_per_generation == 64 and config.weight_decay == 0.1
    assert config.loss_type == method and config.lr_scheduler_type == "constant_with_warmup"
    assert config.epsilon_high == (0.28 if method == "dapo" else None)


@pytest.mark.parametrize(
    ("name", "stage", "offload"),
    [
        ("single_gpu", 0, False),
        ("multi_gpu", 0, False),
        ("zero2", 2, False),
        ("zero3", 3, False),
        ("zero3_offload", 3, True),
    ],
)
def test_accelerate_configs_by_name(name, stage, offload):
    launch = launch_from(name, None)
    assert launch.zero_stage == stage and launch.offload_optimizer == offload and launch.offload_params == offload
    assert launch_from(name, 16).num_processes == 16


def test_unknown_accelerate_config_lists_the_shipped_ones(capsys):
    code, out = run_check(capsys, "--config", RECIPE_7B, "--accelerate_config", "zero4")
    assert code == 1 and "zero3_offload" in out


def test_model_sizes():
    # The built-in table gives the parameter counts of the models' published checkpoints.
    assert KNOWN_MODELS["Qwen/Qwen2.5-Math-1.5B"].num_params() == 1_543_714_304
    assert KNOWN_MODELS["Qwen/Qwen2.5-Math-7B"].num_params() == 7_615_616_512
    assert KNOWN_MODELS["Qwen/Qwen2.5-32B"].num_params() == 32_763_876_352
    assert model_shape("/no/such/org/model")[0] is None


def test_model_size_from_local_config(tiny_model_path, tiny_model):
    shape, source = model_shape(tiny_model_path)
    assert source.endswith("config.json")
    assert shape.num_params() == sum(p.numel() for p in tiny_model.parameters())


# --------------------------------------------------------------------------------------------------------------------
# Parsing: flags over YAML, world size, launcher options


def test_flags_override_yaml_and_set_world_size(capsys):
    run = parse_run(
        ["--config", RECIPE_7B, "--learning_rate", "2e-6", "--num_processes", "64", "--max_steps", "10"], prog="test"
    )
    assert not run.errors
    assert run.training_args.learning_rate == 2e-6 and run.training_args.max_steps == 10
    assert run.launch.num_processes == 64 and run.training_args.generation_batch_size == 4 * 64 * 64
    code, out = run_check(capsys, "--config", RECIPE_7B, "--num_processes", "64", "--recipe_only")
    assert code == 0 and "16,384   (= per_device_train_batch_size 4 x 64 processes" in out


def test_config_valid_only_for_the_real_world_size(tmp_path, capsys):
    # 1 x 2 processes x 8 = 16 answers: one question. With one process (what TRL's launcher assumes) it is 8 answers,
    # which NFTConfig rejects.
    recipe = write_recipe(tmp_path)
    assert run_check(capsys, "--config", recipe)[0] == 0
    with pytest.raises(ValueError, match="divisible by num_generations"):
        NFTConfig(
            output_dir=str(tmp_path),
            num_generations=16,
            per_device_train_batch_size=1,
            gradient_accumulation_steps=8,
            steps_per_generation=8,
        )
    code, out = run_check(capsys, "--config", recipe, "--num_processes", "3")
    assert code == 1 and "Set steps_per_generation to a multiple of 16" in out


def test_unknown_keys_go_to_accelerate(tmp_path):
    recipe = write_recipe(tmp_path, num_machines=1)
    argv = ["--config", recipe, "--machine_rank", "0", "--main_process_ip", "10.0.0.1", "--accelerate_config", "zero2"]
    argv += ["--learning_rate", "3e-6", "--gpu_memory_gb=40"]
    run = parse_run(argv, prog="test")
    assert not run.errors and run.launch.zero_stage == 2 and run.options["gpu_memory_gb"] == 40
    assert run.accelerate_args == ["--num_machines", "1", "--machine_rank", "0", "--main_process_ip", "10.0.0.1"]
    assert _without_launch_options(run.argv, run.cli_unknown) == ["--config", recipe, "--learning_rate", "3e-6"]


def test_help_all_lists_every_field(capsys):
    assert train_main(["--help-all"]) == 0
    out = capsys.readouterr().out
    for flag in ("--negative_weight", "--prompt_weighting", "--steps_per_generation", "--use_vllm", "--lora_r"):
        assert flag in out
    for flag in ("--dataset_format", "--reward_funcs", "--method", "--accelerate_config", "--num_processes"):
        assert flag in out
    assert "--config RECIPE" in out and "shipped recipe by name" in out
    assert "Weight of the loss on wrong answers" in out  # help texts come from the dataclass metadata


@pytest.mark.parametrize("command", ["train", "check"])
def test_help_is_short_and_names_real_options(capsys, command):
    assert main([command, "--help"]) == 0
    short = capsys.readouterr().out
    assert main([command, "--help-all"]) == 0
    full = capsys.readouterr().out
    lines = short.splitlines()
    assert len(lines) <= 70 and max(len(line) for line in lines) <= 119, short
    assert len(full.splitlines()) > 1000
    flags = [line.split()[0] for line in lines if line.startswith("  --")]
    for flag in (
        "--config",
        "--model_name_or_path",
        "--dataset_name",
        "--output_dir",
        "--per_device_train_batch_size",
    ):
        assert flag in flags
    for flag in ("--steps_per_generation", "--num_generations", "--learning_rate", "--max_steps", "--use_vllm"):
        assert flag in flags
    for flag in ("--negative_weight", "--logging_steps", "--save_steps", "--warmup_steps"):
        assert flag in flags
    assert all(f"  {flag} " in full for flag in flags), [f for f in flags if f"  {f} " not in full]
    assert ("--recipe_only" in flags) == (command == "check")
    assert f"nft-trl {command} --help-all" in short
    assert "--learning_rate LR" in short and "default: 1e-06" in short  # defaults come from NFTConfig


def test_vllm_serve_hands_over_to_trl(capsys):
    assert vllm_serve_main(["--help"]) == 0
    assert "--tensor_parallel_size" in capsys.readouterr().out


# --------------------------------------------------------------------------------------------------------------------
# check: each inconsistency it claims to catch


@pytest.mark.parametrize(
    ("values", "flags", "message"),
    [
        (dict(num_generations=1), [], "num_generations >= 2"),
        (dict(steps_per_generation=12), [], "Set steps_per_generation to a multiple of 8 (e.g. 16)"),
        (
            dict(gradient_accumulation_steps=3, steps_per_generation=16),
            [],
            "not a multiple of gradient_accumulation_steps (3)",
        ),
        (dict(generation_batch_size=32), [], "Remove generation_batch_size"),
        (dict(steps_per_generation=None, generation_batch_size=15), [], "Remove generation_batch_size and use"),
        (dict(do_eval=True, eval_strategy="steps", per_device_eval_batch_size=3), [], "per_device_eval_batch_size"),
        (dict(max_completion_length=4000), [], "exceeds the model's context"),
        (dict(use_vllm=True, vllm_max_model_length=1024), [], "Set vllm_max_model_length: 1536"),
        (dict(use_vllm=True, vllm_tensor_parallel_size=4), [], "must divide the number of processes (2)"),
        (dict(negative_weight=-1.0), [], "negative_weight must be >= 0"),
        (dict(dataset_format="gsm8k"), [], "dataset_format"),
        (dict(per_device_train_batch_size=16, steps_per_generation=8), ["--gpu_memory_gb", "24"], "DOES NOT FIT"),
    ],
)
def test_check_catches(tmp_path, capsys, values, flags, message):
    code, out = run_check(capsys, "--config", write_recipe(tmp_path, **values), *flags)
    assert code == 1, out
    assert message in out


def test_check_memory_needs_sharding_for_7b(capsys):
    code, out = run_check(capsys, "--config", RECIPE_7B, "--accelerate_config", "multi_gpu")
    assert code == 1 and "DOES NOT FIT" in out and "zero3" in out
    code, out = run_check(capsys, "--config", RECIPE_7B, "--accelerate_config", "zero3_offload", "--recipe_only")
    assert code == 0 and "offloaded" in out


def test_check_unknown_model_size(tmp_path, capsys):
    recipe = write_recipe(tmp_path, model_name_or_path="some-org/some-model")
    code, out = run_check(capsys, "--config", recipe, "--recipe_only")
    assert code == 0 and "Pass --num_params" in out
    argv = ["--config", recipe, "--num_params", "7e9", "--accelerate_config", "zero3", "--recipe_only"]
    code, out = run_check(capsys, *argv)
    assert code == 0 and "7.00B params" in out and "activations, logits and KV cache not estimated" in out


def test_train_refuses_inconsistent_recipe_without_launching(tmp_path, capsys):
    code = train_main(["--config", write_recipe(tmp_path, steps_per_generation=12)])
    assert code == 1 and "not launched" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------------------------------
# check: what this machine lacks (the Hub, vLLM), the warm-up, batch values that work


def closed_port() -> int:
    """A local port that nothing listens on (a connection is refused at once)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def local_hub():
    """A local HTTP server standing for a reachable Hub endpoint (it answers 404 to everything)."""
    import http.server
    import threading

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_offline_hub_ids_are_caught_with_what_to_pass(tmp_path, capsys, monkeypatch):
    import accelerate.commands.launch

    def must_not_launch(*args, **kwargs):
        raise AssertionError("launched")

    monkeypatch.setattr(accelerate.commands.launch, "launch_command", must_not_launch)
    recipe = write_recipe(tmp_path, model_name_or_path="some-org/not-cached", dataset_name="some-org/some-data")
    code, out = run_check(capsys, "--config", recipe)
    errors = [line for line in out.splitlines() if line.startswith("ERROR")]
    assert code == 1 and len(errors) == 2, out
    assert (
        "'some-org/not-cached' is a Hub id, not in the local cache, and the Hub cannot be reached (HF_HUB_OFFLINE=1)"
        in errors[0]
    )
    assert "local model folder" in errors[0] and "'embedded'" in errors[0]
    assert "'some-org/some-data' is a Hub id" in errors[1] and ".jsonl" in errors[1] and "'embedded'" in errors[1]
    assert train_main(["--config", recipe]) == 1  # train runs the same check and does not launch
    out = capsys.readouterr()
    assert (
        "not launched" in out.err and out.out.count("cannot be reached") == 2 and "Traceback" not in out.out + out.err
    )
    # A cached id is fine offline, and so is a local dataset (write_recipe's defaults).
    assert run_check(capsys, "--config", write_recipe(tmp_path))[0] == 0


def test_unreachable_hub_is_one_short_probe(tmp_path, capsys, monkeypatch, local_hub):
    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # read from the environment when it was imported
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{closed_port()}")
    recipe = write_recipe(tmp_path, model_name_or_path="some-org/not-cached")
    code, out = run_check(capsys, "--config", recipe)
    assert code == 1 and "the Hub cannot be reached (http://127.0.0.1:" in out and "did not answer within 10 s" in out
    monkeypatch.setenv("HF_ENDPOINT", local_hub)  # a Hub that answers: the model is downloaded when training starts
    code, out = run_check(capsys, "--config", recipe)
    assert code == 0 and "Hub" not in out, out


def test_missing_local_dataset_is_named(tmp_path, capsys):
    code, out = run_check(capsys, "--config", write_recipe(tmp_path, dataset_name="data/no-such-file.jsonl"))
    assert code == 1 and "dataset_name: data/no-such-file.jsonl does not exist" in out
    code, out = run_check(capsys, "--config", write_recipe(tmp_path, dataset_name=None))
    assert code == 1 and "dataset_name is not set" in out


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed here")
def test_use_vllm_without_vllm_is_caught(tmp_path, capsys):
    code, out = run_check(capsys, "--config", write_recipe(tmp_path, use_vllm=True))
    assert code == 1 and "use_vllm is true but vLLM is not installed: pip install 'nft-trl[vllm]'" in out
    assert "--use_vllm false" in out
    assert run_check(capsys, "--config", write_recipe(tmp_path, use_vllm=True), "--recipe_only")[0] == 0


@pytest.mark.parametrize(
    ("values", "message"),
    [
        # The new user's run: the 1.5B recipe's 40 warm-up steps and --max_steps 2, learning rate 1e-6.
        (
            dict(max_steps=2, warmup_steps=40, lr_scheduler_type="constant_with_warmup", learning_rate=1e-6),
            "the learning rate will be ~0 for the run (0 at the first step, 2.5e-08 at the last",
        ),
        (dict(max_steps=100, warmup_steps=0.5, lr_scheduler_type="cosine"), "(50 steps, cosine) is 50% of the run"),
        # No max_steps: the run's length is computed (1 question per generation step and 1 optimizer step per 16
        # answers, so 10 optimizer steps per epoch of 10 questions; 2 epochs).
        (dict(max_train_samples=10, num_train_epochs=2, warmup_steps=30), "covers the whole run (20 optimizer steps)"),
        (dict(max_steps=2, warmup_steps=40, lr_scheduler_type="constant"), None),  # no warm-up in that schedule
        (dict(max_steps=200, warmup_steps=10), None),
    ],
)
def test_warmup_against_the_length_of_the_run(tmp_path, capsys, values, message):
    code, out = run_check(capsys, "--config", write_recipe(tmp_path, **values))
    assert code == 0, out  # a warning, not an error: a smoke test may still run
    if message is None:
        assert "warm-up" not in out
    else:
        assert message in out and "WARNING: the learning-rate warm-up" in out and "--warmup_steps" in out


@pytest.mark.parametrize(
    "values",
    [
        dict(steps_per_generation=12),
        dict(gradient_accumulation_steps=3, steps_per_generation=16),
        dict(per_device_train_batch_size=3, steps_per_generation=4, gradient_accumulation_steps=4),
        dict(steps_per_generation=None, generation_batch_size=15),
        dict(per_device_train_batch_size=2, gradient_accumulation_steps=32, steps_per_generation=1),
    ],
)
def test_batch_fix_names_flags_that_work(tmp_path, capsys, values):
    """Each fix the check names, applied as the flags it names, passes the check."""
    import re

    recipe = write_recipe(tmp_path, **values)
    code, out = run_check(capsys, "--config", recipe)
    assert code == 1, out
    (error,) = [line for line in out.splitlines() if line.startswith("ERROR")]
    fixes = re.findall(
        r"(?:Set steps_per_generation.*?: |Or keep steps_per_generation \d+ with )((?:--\w+ \d+ ?)+)", error
    )
    assert fixes, error
    if "generation_batch_size" in values:  # the message says to remove generation_batch_size: do so
        recipe = write_recipe(tmp_path, **{**values, "generation_batch_size": None})
    for fix in fixes:
        code, out = run_check(capsys, "--config", recipe, *fix.split())
        assert code == 0, f"{fix}\n{out}"


# --------------------------------------------------------------------------------------------------------------------
# Bad input stops before anything launches, with the fix


def test_unknown_recipe_key_names_the_field_it_meant(tmp_path, capsys, monkeypatch):
    import accelerate.commands.launch

    def must_not_launch(*args, **kwargs):
        raise AssertionError("launched")

    monkeypatch.setattr(accelerate.commands.launch, "launch_command", must_not_launch)
    recipe = write_recipe(tmp_path, negative_wieght=0.5)
    code = train_main(["--config", recipe])
    out = capsys.readouterr()
    assert code == 1 and "not launched" in out.err
    assert f"unknown key 'negative_wieght' (in {recipe})" in out.out and "did you mean 'negative_weight'?" in out.out


def test_unknown_flag_names_the_field_it_meant(tmp_path, capsys):
    code, out = run_check(capsys, "--config", write_recipe(tmp_path), "--lerning_rate", "1e-6")
    assert code == 1 and "unknown key 'lerning_rate' (flag --lerning_rate)" in out
    assert "did you mean 'learning_rate'?" in out
    # accelerate's own flags, in either spelling, are not unknown.
    code, out = run_check(capsys, "--config", write_recipe(tmp_path, num_machines=1), "--main-process-port", "29500")
    assert code == 0, out


def test_launched_script_rejects_unknown_keys(tmp_path):
    with pytest.raises(SystemExit, match="unknown key 'negative_wieght'.*did you mean 'negative_weight'"):
        parse_args(["--config", write_recipe(tmp_path, negative_wieght=0.5, steps_per_generation=16)])


def test_nft_field_in_a_grpo_recipe_is_named(tmp_path, capsys):
    code, out = run_check(capsys, "--config", write_recipe(tmp_path, method="grpo", negative_weight=0.5))
    assert code == 1 and "'negative_weight'" in out and "method 'grpo' trains with TRL's GRPOConfig" in out


def test_malformed_yaml_gives_file_line_and_column(tmp_path, capsys):
    recipe = tmp_path / "broken.yaml"
    recipe.write_text("model_name_or_path: Qwen/Qwen2.5-Math-1.5B\nnum_generations: [16\nlearning_rate: 1e-6\n")
    for command in (check_main, train_main):
        code = command(["--config", str(recipe)])
        out = capsys.readouterr()
        assert code == 1, out
        assert f"{recipe}:3:" in out.err and "malformed YAML" in out.err and "Traceback" not in out.err + out.out
    recipe.write_text("- a list\n- not a mapping\n")
    assert check_main(["--config", str(recipe)]) == 1 and "YAML mapping" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="broken.yaml: expected a YAML mapping"):
        parse_args(["--config", str(recipe)])


def test_unknown_method_is_named(tmp_path, capsys):
    code, out = run_check(capsys, "--config", write_recipe(tmp_path, method="ppo"))
    assert code == 1 and "method='ppo' is not supported" in out


@pytest.mark.parametrize(
    ("value", "missing"),
    [
        ("Qwen/Qwen2.5-Math-7B", False),  # a Hub id
        ("gpt2", False),
        ("./outputs/ckpt", True),
        ("/no/such/checkpoint", True),
        ("~/no-such-checkpoint", True),
        ("runs/exp1/checkpoint-100", True),  # more than one slash
        ("TMP/checkpoint-100", True),  # its first part is an existing folder
    ],
)
def test_model_folder_rule(tmp_path, monkeypatch, value, missing):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "TMP").mkdir()
    assert (missing_model_folder(value) is not None) == missing
    (tmp_path / "present").mkdir()
    assert missing_model_folder("present") is None and missing_model_folder(str(tmp_path / "present")) is None


def test_eval_says_a_missing_model_folder_does_not_exist(tmp_path, capsys):
    code = main(["eval", "--model", str(tmp_path / "no-such-checkpoint")])
    err = capsys.readouterr().err
    assert code == 1 and "no-such-checkpoint does not exist" in err
    code, out = run_check(capsys, "--config", write_recipe(tmp_path, model_name_or_path=str(tmp_path / "missing")))
    assert code == 1 and "missing does not exist" in out


def test_the_package_the_rewards_and_the_dispatcher_import_no_training_stack():
    """`import nft_trl` resolves its public names on first use, so a process that only verifies answers (a grading job,
    a verifier worker's parent) or runs `nft-trl eval` / `generate` does not pay for torch, TRL and PEFT at start-up."""
    script = (
        "import sys, nft_trl, nft_trl.rewards, nft_trl.cli.main; "
        "print(sorted(m for m in ('torch', 'trl', 'transformers', 'peft') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
    assert sorted(nft_trl._EXPORTS) == nft_trl.__all__
    assert all(callable(getattr(nft_trl, name)) for name in nft_trl.__all__)
    with pytest.raises(AttributeError, match="no attribute 'NFTTrainerr'"):
        nft_trl.NFTTrainerr  # noqa: B018


def test_dispatcher(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(f"  {name} " in out for name in ("train", "check", "eval", "vllm-serve"))
    assert main(["chek"]) == 2 and "Did you mean 'check'?" in capsys.readouterr().err
    assert main(["eval", "--help"]) == 0 and "--preset" in capsys.readouterr().out


# --------------------------------------------------------------------------------------------------------------------
# train: end to end through accelerate launch


REWARD_MODULE = """
import re


def boxed_match(completions, solution, **kwargs):
    answers = [re.findall(r"\\\\boxed\\{([^{}]*)\\}", c[-1]["content"]) for c in completions]
    return [float(bool(a) and a[-1] == s) for a, s in zip(answers, solution, strict=True)]
"""


def test_train_end_to_end(tmp_path, tiny_model_path):
    data = tmp_path / "train.jsonl"
    rows = [{"prompt": [{"role": "user", "content": f"What is {i} + 1?"}], "solution": str(i + 1)} for i in range(8)]
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    (tmp_path / "tiny_rewards.py").write_text(REWARD_MODULE)
    output_dir = tmp_path / "out"
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(
        yaml.safe_dump(
            dict(
                model_name_or_path=tiny_model_path,
                dataset_name=str(data),
                reward_funcs=["tiny_rewards.boxed_match"],
                output_dir=str(output_dir),
                num_generations=4,
                per_device_train_batch_size=4,
                gradient_accumulation_steps=1,
                steps_per_generation=2,
                max_completion_length=8,
                max_prompt_length=64,
                max_steps=2,
                report_to="none",
                save_strategy="no",
                gradient_checkpointing=False,
                accelerate_config="single_gpu",
            )
        )
    )
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1", CI="true", TOKENIZERS_PARALLELISM="false")
    env["PYTHONPATH"] = os.pathsep.join([str(PACKAGE_ROOT), env.get("PYTHONPATH", "")])
    argv = ["--config", str(recipe), "--cpu", "--mixed_precision", "no", "--learning_rate", "1e-5"]
    result = subprocess.run(
        [sys.executable, "-m", "nft_trl.cli", "train", *argv],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Result: OK" in result.stdout
    assert (output_dir / "model.safetensors").exists()
    trained = json.loads((output_dir / "config.json").read_text())
    assert trained["model_type"] == "qwen2"
    # The flag overrode the recipe in the launched process too.
    import torch

    args = torch.load(output_dir / "training_args.bin", weights_only=False)
    assert type(args).__name__ == "NFTConfig" and args.learning_rate == 1e-5 and args.max_steps == 2


@pytest.mark.slow
def test_cpu_recipe_trains_as_a_user_types_it(tmp_path):
    """`nft-trl train --config embedded/nft/config_cpu --max_steps 2`, typed in an empty folder: offline, CPU only."""
    from safetensors.torch import load_file

    from nft_trl.embedded import embedded_path

    command = [shutil.which("nft-trl")] if shutil.which("nft-trl") else [sys.executable, "-m", "nft_trl.cli"]
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1", TOKENIZERS_PARALLELISM="false")
    env["PYTHONPATH"] = os.pathsep.join([str(PACKAGE_ROOT), env.get("PYTHONPATH", "")])  # this checkout's code
    result = subprocess.run(
        [*command, "train", "--config", CPU_RECIPE, "--max_steps", "2"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Result: OK" in result.stdout and "\nWARNING: " not in result.stdout  # the check had nothing to say
    assert "Held-out accuracy (256 problems" in result.stdout
    output_dir = tmp_path / "outputs" / "embedded-nft-cpu"
    assert (output_dir / "learning_curve.png").exists()
    trained = load_file(output_dir / "model.safetensors")
    shipped = load_file(embedded_path() / "model.safetensors")
    assert trained.keys() == shipped.keys()
    # AdamW moves a weight by up to ~learning_rate (2e-4) per step: 2 steps moved some by more than half a step (a
    # learning rate ~0, as under a warm-up longer than the run, would move none by more than 1e-7).
    assert max_abs_diff(trained, shipped) > 1e-4


def _accelerate_args(*launch: str):
    from accelerate.commands.launch import launch_command_parser

    script = str(PACKAGE_ROOT / "nft_trl" / "cli" / "train.py")
    return launch_command_parser().parse_args([*launch, "--main_process_port", "29533", script, "--seed", "3"])


ZERO3 = str(PACKAGE_ROOT / "nft_trl" / "accelerate_configs" / "zero3.yaml")


@pytest.mark.parametrize(
    "launch", [["--num_processes", "2"], ["--config_file", ZERO3, "--num_processes", "1"]], ids=["two", "deepspeed"]
)
def test_other_launches_go_to_accelerate_launch(launch, monkeypatch):
    """Only a plain single-process launch trains in the CLI process; the check returns False having done nothing."""
    import nft_trl.cli.train as train_module

    monkeypatch.setattr(train_module, "main", lambda *a: pytest.fail("trained in the CLI process"))
    environment = dict(os.environ)
    assert _train_in_this_process(_accelerate_args(*launch)) is False
    assert dict(os.environ) == environment  # nor changed this process's environment


def test_a_single_process_launch_trains_in_the_cli_process_with_accelerates_environment(monkeypatch):
    import torch

    import nft_trl.cli.train as train_module

    calls = []
    monkeypatch.setattr(os, "environ", {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())})
    monkeypatch.setattr(train_module, "parse_args", lambda argv: (argv,))
    monkeypatch.setattr(train_module, "main", lambda argv: calls.append((argv, dict(os.environ))))
    assert _train_in_this_process(_accelerate_args("--num_processes", "1", "--mixed_precision", "no", "--cpu"))
    ((argv, environment),) = calls
    assert argv == ["--seed", "3"]
    assert environment["ACCELERATE_USE_CPU"] == "True" and environment["ACCELERATE_MIXED_PRECISION"] == "no"


def test_cli_modules_import_without_circles():
    """No import circle between the modules of nft_trl/cli (every import statement, in functions too)."""
    cli = PACKAGE_ROOT / "nft_trl" / "cli"
    modules = {path.stem for path in cli.glob("*.py")}
    imports = {}
    for path in cli.glob("*.py"):
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.level == 1 or (node.module or "").startswith("nft_trl.cli")):
                module = (node.module or "").removeprefix("nft_trl.cli").lstrip(".")
                names = [module] if module else [alias.name for alias in node.names]
                targets |= {name.split(".")[0] for name in names} & modules
        imports[path.stem] = targets - {path.stem}

    def reaches(start, goal, seen=()):
        return any(nxt == goal or (nxt not in seen and reaches(nxt, goal, (*seen, nxt))) for nxt in imports[start])

    assert imports["arguments"] == set() and "launch" not in imports["train"] | imports["preflight"]
    assert not [module for module in imports if reaches(module, module)], imports
