"""Fault injection: kill, signal and starve a real NFT run, resume it, and check it ends where an uninterrupted run does.

Each trial trains the tests' tiny Qwen2 with real sampling (NFTTrainer, a checkpoint every step, `save_total_limit=2`)
and injects one fault into a real process:

- `kill`:     SIGKILL at a random moment after a random checkpoint appears (between, or inside, saves);
- `in-save`:  SIGKILL the moment a checkpoint folder exists without its completion marker (inside a save);
- `sigterm`, `sigint`: the signal after a random checkpoint; the run must save, stop with 143 / 130 and say how to
              resume;
- `twice`:    SIGTERM twice: the run must exit at once with 143;
- `disk`:     SIGKILL inside a save (as `in-save`, after at least one complete checkpoint), then a run resumed under a
              file-size limit (RLIMIT_FSIZE, what a full disk does to a write) must fail with a clear error at its next
              save and leave the previous checkpoint complete.

After the fault, the run is resumed with `resume_from_checkpoint=True` (as many times as needed) and its final weights
are compared, bit for bit, with those of an uninterrupted run of the same settings. `--dynamic-sampling` runs every
trial with dynamic sampling (the refill stream's state is part of each checkpoint).

    python benchmarks/fault_injection.py --trials 12 --faults kill,in-save --out /tmp/faults
    python benchmarks/fault_injection.py --trials 12 --faults kill,in-save --dynamic-sampling --out /tmp/faults-ds

Prints one line per trial and a summary table; `--json` writes the results. tests/test_reliability.py runs a few
trials of each fault. `python benchmarks/fault_injection.py train ...` is the training process the trials start.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path


STEPS = 6
MARKER = "nft_checkpoint_complete.json"
EXIT_CODES = {"sigterm": 128 + signal.SIGTERM, "sigint": 128 + signal.SIGINT, "twice": 128 + signal.SIGTERM}


# ------------------------------------------------------------------------------------------------ the training process
def first_token_mod3(completions, completion_ids, **kwargs):
    return [float(ids[0] % 3 == 0) if len(ids) else 0.0 for ids in completion_ids]


def train(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="fault_injection.py train")
    parser.add_argument("--model", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--steps", type=int, default=STEPS)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--dynamic-sampling", action="store_true")
    parser.add_argument("--step-sleep", type=float, default=0.0, help="seconds of sleep per step (to signal inside)")
    parser.add_argument("--fsize-limit", type=int, default=0, help="RLIMIT_FSIZE in bytes (0: none)")
    parser.add_argument("--save-sleep", type=float, default=0.0, help="seconds of sleep inside each save (to kill in)")
    args = parser.parse_args(argv)
    if args.fsize_limit:
        resource.setrlimit(resource.RLIMIT_FSIZE, (args.fsize_limit, args.fsize_limit))

    import torch
    from datasets import Dataset
    from transformers import TrainerCallback

    from nft_trl import NFTConfig, NFTTrainer

    class Sleep(TrainerCallback):
        def on_step_end(self, *_, **__):
            time.sleep(args.step_sleep)

    dataset = Dataset.from_dict({"prompt": [[{"role": "user", "content": f"What is {i} + {i}?"}] for i in range(16)]})
    config = NFTConfig(
        output_dir=args.out,
        use_cpu=True,
        bf16=False,
        report_to="none",
        logging_steps=1,
        seed=0,
        per_device_train_batch_size=8,
        num_generations=4,
        max_completion_length=6,
        max_steps=args.steps,
        learning_rate=0.05,
        save_strategy="steps",
        save_steps=1,
        save_total_limit=2,
        dynamic_sampling=args.dynamic_sampling,
        warn_no_signal_steps=0,
    )
    trainer = NFTTrainer(args.model, reward_funcs=[first_token_mod3], args=config, train_dataset=dataset)
    if args.step_sleep:
        trainer.add_callback(Sleep())
    if args.save_sleep:  # between the model's file and the optimizer's: a save that is surely under way
        save_optimizer = trainer._save_optimizer_and_scheduler

        def slow_save_optimizer(output_dir):
            time.sleep(args.save_sleep)
            save_optimizer(output_dir)

        trainer._save_optimizer_and_scheduler = slow_save_optimizer
    trainer.train(resume_from_checkpoint=True if args.resume else None)
    if trainer.accelerator.is_main_process:
        params = {name: p.detach().clone() for name, p in trainer.model.named_parameters()}
        torch.save(params, Path(args.out) / "final_params.pt")
    # As `nft-trl train` ends: every rank waits for the save, then the process group is destroyed. A rank that exits
    # with its gloo group alive while the other still saves can abort in teardown ("terminate called without an
    # active exception", SIGABRT), and torchrun then fails the whole run.
    trainer.accelerator.wait_for_everyone()
    trainer.accelerator.end_training()


# ------------------------------------------------------------------------------------------------------- the trials
def _env() -> dict[str, str]:
    return {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "CI": "true",
    }


def _command(model: str, out: Path, *extra: str) -> list[str]:
    return [sys.executable, os.path.abspath(__file__), "train", "--model", model, "--out", str(out), *extra]


def _checkpoints(out: Path) -> list[Path]:
    if not out.is_dir():
        return []
    found = [p for p in out.iterdir() if p.is_dir() and p.name.startswith("checkpoint-")]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def _wait_for(process: subprocess.Popen, condition, timeout: float = 300.0) -> bool:
    """Poll every millisecond until `condition()` holds (True) or the process ends (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        if process.poll() is not None:
            return False
        time.sleep(0.001)
    raise TimeoutError("the training process neither reached the fault point nor ended")


def _as_in_a_terminal() -> None:
    """In the training process: SIGINT as a terminal delivers it (a background job of a script inherits it ignored)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _run(command: list[str], timeout: float = 600.0) -> subprocess.CompletedProcess:
    return subprocess.run(
        command, env=_env(), capture_output=True, text=True, timeout=timeout, preexec_fn=_as_in_a_terminal
    )


def same_params(a: Path, b: Path) -> tuple[bool, float]:
    import torch

    left, right = torch.load(a), torch.load(b)
    worst = max(float((left[k] - right[k]).abs().max()) for k in left)
    return all(torch.equal(left[k], right[k]) for k in left), worst


def reference(model: str, root: Path, extra: list[str]) -> Path:
    out = root / "reference"
    if not (out / "final_params.pt").exists():
        done = _run(_command(model, out, *extra))
        if done.returncode != 0:
            raise RuntimeError(f"the uninterrupted run failed:\n{done.stderr[-3000:]}")
    return out / "final_params.pt"


def trial(fault: str, model: str, out: Path, extra: list[str], rng: random.Random) -> dict:
    """One fault, then resumes until the run completes; returns what happened."""
    result: dict = {"fault": fault, "kills": 0}
    started = time.monotonic()
    sleep = ["--step-sleep", "0.5"] if fault in ("sigterm", "sigint", "twice") else []
    sleep = ["--save-sleep", "0.5"] if fault == "disk" else sleep  # its kill inside a save must not race the save
    process = subprocess.Popen(
        _command(model, out, *extra, *sleep),
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_as_in_a_terminal,
    )
    # `disk` kills inside a save too, after a complete checkpoint: the resume under the file-size limit then meets an
    # incomplete checkpoint folder and a complete one before it.
    target = rng.randint(2 if fault == "disk" else 1, STEPS - 2)
    if fault in ("in-save", "disk"):

        def condition():
            return any(not (c / MARKER).exists() and int(c.name.split("-")[1]) >= target for c in _checkpoints(out))

    else:

        def condition():
            return any((c / MARKER).exists() and int(c.name.split("-")[1]) >= target for c in _checkpoints(out))

    if fault == "disk":
        reached = _wait_for(process, condition)
        process.send_signal(signal.SIGKILL)
        process.wait()
        result["killed_inside_a_save"] = any(not (c / MARKER).exists() for c in _checkpoints(out))
    else:
        reached = _wait_for(process, condition)
        if fault == "kill":
            time.sleep(rng.uniform(0.0, 0.4))
        if reached:
            if fault in ("kill", "in-save"):
                process.send_signal(signal.SIGKILL)
            elif fault == "sigint":
                process.send_signal(signal.SIGINT)
            else:
                process.send_signal(signal.SIGTERM)
                if fault == "twice":
                    time.sleep(0.05)
                    process.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    stdout, stderr = process.communicate()
    result["exit_code"] = process.returncode
    result["stop_seconds"] = round(time.monotonic() - signalled, 2)
    result["fault_hit"] = reached and process.returncode != 0
    result["checkpoints_after_fault"] = [
        c.name + ("" if (c / MARKER).exists() else "(incomplete)") for c in _checkpoints(out)
    ]
    if fault in EXIT_CODES and reached:
        result["expected_exit"] = process.returncode == EXIT_CODES[fault]
        if fault != "twice":
            result["said_how_to_resume"] = "resume_from_checkpoint" in stderr
    if fault == "disk" and reached:
        model_size = (Path(model) / "model.safetensors").stat().st_size
        limited = _run(_command(model, out, *extra, "--resume", "--fsize-limit", str(model_size + 4096)))
        result["disk_exit_code"] = limited.returncode
        result["disk_error_clear"] = "CheckpointSaveError" in limited.stderr and "intact" in limited.stderr
        result["disk_message"] = next((ln for ln in limited.stderr.splitlines() if "CheckpointSaveError:" in ln), "")
        result["complete_after_disk"] = [c.name for c in _checkpoints(out) if (c / MARKER).exists()]
    resumes = 0
    while not (out / "final_params.pt").exists():
        resumes += 1
        # What a user does: resume when a complete checkpoint exists, else start again (the fault hit the first save).
        resume = ["--resume"] if any((c / MARKER).exists() for c in _checkpoints(out)) else []
        done = _run(_command(model, out, *extra, *resume))
        if done.returncode != 0:
            result["resume_error"] = done.stderr[-1500:]
            break
        if resumes > 3:
            result["resume_error"] = "did not complete after 3 resumes"
            break
    result["resumes"] = resumes
    result["seconds"] = round(time.monotonic() - started, 1)
    return result


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["train"]:
        train(argv[1:])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="working folder (one subfolder per trial)")
    parser.add_argument("--trials", type=int, default=2, help="trials of each fault")
    parser.add_argument("--faults", default="kill,in-save,sigterm,sigint,twice,disk")
    parser.add_argument("--dynamic-sampling", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)

    from nft_trl.embedded.model import save_tiny_model

    root = Path(args.out)
    root.mkdir(parents=True, exist_ok=True)
    model = root / "model"
    if not (model / "config.json").exists():
        save_tiny_model(model)
    extra = ["--dynamic-sampling"] if args.dynamic_sampling else []
    ref = reference(str(model), root, extra)
    rng = random.Random(args.seed)
    results = []
    for fault in args.faults.split(","):
        for index in range(args.trials):
            out = root / f"{fault}-{index}"
            if out.exists():
                import shutil

                shutil.rmtree(out)
            result = trial(fault, str(model), out, extra, rng)
            final = out / "final_params.pt"
            result["equal"], result["max_abs_diff"] = same_params(ref, final) if final.exists() else (False, None)
            results.append(result)
            print(json.dumps(result), flush=True)

    print("\nfault      trials  fault hit  resumed equal  clean exit/message  max |diff|")
    for fault in args.faults.split(","):
        rows = [r for r in results if r["fault"] == fault]
        hit = sum(r["fault_hit"] for r in rows)
        equal = sum(bool(r["equal"]) for r in rows)
        checks = [r.get("expected_exit", True) and r.get("said_how_to_resume", True) for r in rows]
        if fault == "disk":
            checks = [r.get("disk_error_clear", False) for r in rows]
        diffs = [r["max_abs_diff"] for r in rows if r["max_abs_diff"] is not None]
        print(
            f"{fault:<10} {len(rows):>6}  {hit:>9}  {equal:>13}  {sum(checks):>18}  "
            f"{max(diffs) if diffs else float('nan'):.1e}"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    ok = all(r["equal"] for r in results)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
