"""DeepSpeed on CPU with two processes (gloo): ZeRO-3 trains as plain data parallelism does, dynamic sampling's extra
rounds finish on both ranks, a ZeRO-3 checkpoint resumes where it stopped and its consolidated model loads and
evaluates, ZeRO-2 trains, and `nft-trl train` rehearses a ZeRO-3 recipe on a machine without GPUs, also after a
rehearsal killed while DeepSpeed compiled its op left torch's build lock behind.

Every launch runs under a timeout in its own process group: a hang fails the test instead of blocking the suite.
"""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import max_abs_diff
from launching import LAUNCH_TIMEOUT_S, free_port, kill_launch, run


pytest.importorskip("deepspeed", reason="DeepSpeed is not installed (pip install 'nft-trl[deepspeed]')")
pytestmark = pytest.mark.distributed

SCRIPT = Path(__file__).parent / "scripts" / "train_scripted.py"
CONFIGS = Path(__file__).resolve().parents[1] / "nft_trl" / "accelerate_configs"
# ZeRO-3 runs every linear layer through DeepSpeed's own autograd function on all-gathered weights, reduce-scatters
# gradients into flat fp32 partitions and steps the optimizer on them: float32 rounding in another order. Measured
# here: at most 2e-6 apart from DDP after 3 Adam steps whose largest update is 3e-3 (1.5e-7 after the test's 4 steps
# with dynamic sampling); 1e-5 is 5x the former and 300x smaller than the update, so a wrong gradient (or a missing
# step) cannot pass.
ATOL = 1e-5


def accelerate_launch(config: str, *args: str, expect: Path | None = None) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(CONFIGS / f"{config}.yaml"),
        "--num_processes",
        "2",
        "--main_process_port",
        str(free_port()),
        "--mixed_precision",
        "no",
        *args,
    ]
    return run(cmd, expect=expect)


def train(launcher: str, out: Path, model: str, *args: str) -> dict:
    script = [str(SCRIPT), str(out), "--model", model, *args]
    if launcher == "ddp":
        run(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--nproc_per_node=2",
                "--master_addr=127.0.0.1",
                f"--master_port={free_port()}",
                *script,
                "--use_cpu",
            ],
            expect=out / "result.json",
        )
    else:
        # ddp_backend gloo: accelerate picks no backend on a CPU-only machine, and DeepSpeed then disagrees with the
        # Trainer about the world size (see nft_trl.cli.train.cpu_rehearsal_defaults).
        accelerate_launch(launcher, *script, "--ddp_backend", "gloo", expect=out / "result.json")
    return json.loads((out / "result.json").read_text())


def params(out: Path) -> dict[str, torch.Tensor]:
    return torch.load(out / "params.pt")


@pytest.mark.fills_cache  # DeepSpeed's CPU op, built on a fresh machine by its first launch
def test_zero3_moves_every_parameter_as_ddp_and_resumes_dynamic_sampling_exactly(tmp_path, tiny_model_path):
    """ZeRO-3 (two CPU processes, DeepSpeed over gloo) against plain data parallelism, with dynamic sampling on: the
    same parameter updates; a checkpoint per rank, an exact resume, and the consolidated model `nft-trl eval` reads."""
    initial = {n: p.float() for n, p in _load(tiny_model_path).named_parameters()}
    whole = train("zero3", tmp_path / "whole", tiny_model_path, "--dynamic", "--steps", "4", "--save_steps", "2")
    rounds = [h["nft/dynamic_sampling/rounds"] for h in whole["log_history"] if "nft/dynamic_sampling/rounds" in h]
    assert len(rounds) == 4 and min(rounds) >= 2, "every step needs an extra round; both ranks made them"

    ddp = train("ddp", tmp_path / "ddp", tiny_model_path, "--dynamic", "--steps", "4")
    assert whole["world_size"] == 2 and whole["zero_stage"] == 3 and ddp["zero_stage"] is None
    assert ddp["refill"] == whole["refill"]
    a, b = params(tmp_path / "whole"), params(tmp_path / "ddp")
    assert a.keys() == b.keys() == initial.keys()
    assert max((b[n] - initial[n]).abs().max().item() for n in b) > 100 * ATOL
    print(f"ZeRO-3 vs DDP, max parameter difference: {max((a[n] - b[n]).abs().max().item() for n in a):.2e}")
    for name in a:
        assert (a[name] - initial[name]).abs().max() > 0, f"{name} did not move under ZeRO-3"
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=ATOL, msg=lambda m, n=name: f"{n}: {m}")

    # The run's step-2 checkpoint, alone in a fresh output folder, resumed to step 4: the run's own weights.
    checkpoint = tmp_path / "whole" / "run" / "checkpoint-2"
    partitions = sorted(p.name for p in (checkpoint / "global_step2").iterdir())
    assert any("zero_pp_rank_0" in p and "optim" in p for p in partitions)
    assert any("zero_pp_rank_1" in p and "optim" in p for p in partitions), "one optimizer partition per rank"
    assert json.loads((checkpoint / "nft_dynamic_sampling_state.json").read_text())["position"] > 0
    split = tmp_path / "split"
    shutil.copytree(checkpoint, split / "run" / "checkpoint-2")
    resumed = train("zero3", split, tiny_model_path, "--dynamic", "--steps", "4", "--resume")
    assert resumed["global_step"] == 4 and resumed["refill"] == whole["refill"]
    a, b = params(split), params(tmp_path / "whole")
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=ATOL, msg=lambda m, n=name: f"{n}: {m}")

    # The consolidated 16-bit save (zero3_save_16bit_model in the shipped config) is a plain model folder.
    from transformers import AutoModelForCausalLM

    model, info = AutoModelForCausalLM.from_pretrained(checkpoint, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert all(p.numel() > 0 for p in model.parameters())

    problems = tmp_path / "problems.jsonl"
    problems.write_text(
        "".join(json.dumps({"problem": f"What is {i} + 1?", "answer": str(i + 1)}) + "\n" for i in range(2))
    )
    from nft_trl.cli.main import eval_main  # `nft-trl eval`, in this process (a new one would only add start-up)

    argv = ["--model", str(checkpoint), "--benchmarks", f"tiny={problems}", "--n", "1", "--max_tokens", "8"]
    argv += ["--backend", "transformers", "--device", "cpu", "--output_dir", str(tmp_path / "eval")]
    assert eval_main(argv) == 0
    assert (tmp_path / "eval" / "results.json").exists()


@pytest.mark.reads_cache
def test_zero2_trains(tmp_path, tiny_model_path):
    initial = {n: p.float() for n, p in _load(tiny_model_path).named_parameters()}
    result = train("zero2", tmp_path / "zero2", tiny_model_path, "--steps", "2")
    assert result["world_size"] == 2 and result["zero_stage"] == 2 and result["global_step"] == 2
    after = params(tmp_path / "zero2")
    assert all((after[n] - initial[n]).abs().max() > 0 for n in initial)


def rehearsal_command(tmp_path: Path, model: str, rows: list[dict] | None = None, **overrides) -> list[str]:
    """`nft-trl train` of a two-process ZeRO-3 recipe; on a machine without GPUs, a CPU rehearsal. `rows` replaces the
    16 questions as the dataset; `overrides` replace the recipe's values (`None` drops a key)."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    data = tmp_path / "data.jsonl"
    rows = rows or [{"prompt": f"What is {i} + {i}?", "solution": str(2 * i)} for i in range(16)]
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    recipe = {
        "accelerate_config": "zero3",
        "num_processes": 2,
        "model_name_or_path": model,
        "dataset_name": str(data),
        "dataset_format": "prompt_solution",
        "output_dir": str(tmp_path / "out"),
        "per_device_train_batch_size": 4,
        "num_generations": 4,
        "max_completion_length": 8,
        "max_steps": 2,
        "save_strategy": "no",
        "report_to": "none",
        "gradient_checkpointing": False,
        **overrides,
    }
    recipe = {key: value for key, value in recipe.items() if value is not None}
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    return [
        sys.executable,
        "-m",
        "nft_trl.cli",
        "train",
        "--config",
        str(tmp_path / "recipe.yaml"),
        "--main_process_port",
        str(free_port()),
    ]


@pytest.mark.reads_cache
def test_nft_trl_train_rehearses_a_zero3_recipe_on_cpu(tmp_path, tiny_model_path):
    result = run(rehearsal_command(tmp_path, tiny_model_path), expect=tmp_path / "out" / "model.safetensors")
    assert "CPU rehearsal" in result.stdout + result.stderr
    assert (tmp_path / "out" / "model.safetensors").exists()


@pytest.mark.reads_cache
def test_offline_nft_trains_under_zero3_on_cpu(tmp_path, tiny_model_path):
    """Offline NFT (judged answers, no generation) through the same two-process ZeRO-3 launch: `pi_old` is computed
    with the sharded starting model, and the saved model differs from the start."""
    from safetensors.torch import load_file

    rows = [
        {"prompt": f"What is {i} + {i}?", "completion": str(2 * i + (k % 2)), "correct": k % 2 == 0}
        for i in range(4)
        for k in range(4)
    ]
    command = rehearsal_command(tmp_path, tiny_model_path, rows, offline=True, dataset_format=None, max_steps=2)
    result = run(command, expect=tmp_path / "out" / "model.safetensors")
    output = result.stdout + result.stderr
    assert "CPU rehearsal" in output and "On-policy" not in output  # offline: the loss is shown, not called zero
    trained = load_file(tmp_path / "out" / "model.safetensors")
    start = load_file(Path(tiny_model_path) / "model.safetensors")
    assert trained.keys() == start.keys()
    assert max_abs_diff(trained, start) > 1e-6


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU rehearsal path runs only without GPUs")
@pytest.mark.skipif(
    os.environ.get("NFT_TRL_FULL_BUILD") != "1",
    reason="builds DeepSpeed's op from scratch twice and waits out the lock's age (minutes): run it with "
    "NFT_TRL_FULL_BUILD=1 (tests/test_build_locks.py checks the same detection with real processes)",
)
def test_rehearsal_after_a_build_killed_mid_compilation(tmp_path, tiny_model_path, monkeypatch):
    """A rehearsal SIGKILLed while DeepSpeed compiles its shared-memory op leaves torch's build lock behind; the next
    rehearsal deletes it and trains instead of waiting on it forever. A fresh TORCH_EXTENSIONS_DIR: a real build."""
    extensions = tmp_path / "torch_extensions"
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(extensions))
    build_dir = extensions / "deepspeed_shm_comm"
    lock = build_dir / "lock"
    first = subprocess.Popen(
        rehearsal_command(tmp_path / "first", tiny_model_path),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + LAUNCH_TIMEOUT_S
        while not (lock.exists() and _compiling_in(build_dir)):
            assert first.poll() is None and time.monotonic() < deadline, "the first run never started the build"
            time.sleep(0.2)
    finally:
        kill_launch(first.pid)  # the launcher, both ranks, ninja and the compilers
        first.wait()
    time.sleep(1)
    assert lock.exists() and not _compiling_in(build_dir), "the kill left the lock and no build"

    out = tmp_path / "second"
    result = run(rehearsal_command(out, tiny_model_path), expect=out / "out" / "model.safetensors", timeout=900)
    assert f"Deleted the stale torch extension build lock {lock}" in result.stderr
    assert (out / "out" / "model.safetensors").exists() and (build_dir / "deepspeed_shm_comm.so").exists()


def _compiling_in(directory: Path) -> bool:
    """Whether a process (ninja, the compiler) works in `directory`."""
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and os.readlink(entry / "cwd") == str(directory):
                return True
        except OSError:
            continue
    return False


def _load(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path)
