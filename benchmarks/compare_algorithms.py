"""NFT vs RFT vs GRPO vs Dr. GRPO (and NFT with dynamic sampling) on the embedded task, side by side.

    python benchmarks/compare_algorithms.py [--seeds 0 1 2] [--steps 48] [--regimes on off] [--out DIR]

Every run starts from the same embedded model (`nft_trl.embedded`: a small Qwen2 warmed up to ~45% on two-step
arithmetic) and gets the same generation budget: `--steps` optimizer steps of `--batch` completions each.
- on-policy: one optimizer step per generated batch (`steps_per_generation=1`);
- off-policy: `--off_policy_steps` optimizer steps per generated batch, as the paper trains (16 there), so a batch
  is generated every that many steps, that many times larger.

Algorithms: `nft` (NFTTrainer, the paper's defaults), `rft` (NFTTrainer with `negative_weight=0`,
`prompt_weighting="none"`, the paper's RFT), `grpo` (TRL's GRPOTrainer, `loss_type="grpo"`, std-scaled advantages),
`dr_grpo` (TRL's GRPOTrainer, `loss_type="dr_grpo"`, `scale_rewards="none"`) and `nft_ds` (NFT with dynamic
sampling; it generates more than the budget to fill its batches: the extra tokens are reported).

Held-out accuracy: `--samples` answers per problem at T=1 (the training temperature) on `--eval_prompts` held-out
problems, graded by `math_verifier`, every `--eval_every` steps; greedy accuracy before and after. Prints a table
(final held-out accuracy mean ± std over seeds, mean policy entropy over training and over its last 5 logs, wall time)
and writes `results.json`, `results.md` and `curves.png` to `--out`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path


os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("CI", "true")

import torch  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402
from trl import GRPOConfig, GRPOTrainer  # noqa: E402

from nft_trl import NFTConfig, NFTTrainer, math_verifier  # noqa: E402
from nft_trl.embedded import embedded_path, make_dataset  # noqa: E402
from nft_trl.embedded.demo import HeldOutAccuracyCallback  # noqa: E402
from nft_trl.evaluation import evaluate_accuracy  # noqa: E402


ALGORITHMS = ("nft", "rft", "grpo", "dr_grpo", "nft_ds")
REGIMES = ("on", "off")
# Settings that vary per algorithm; everything else is shared (see `common_settings`).
ALGORITHM_SETTINGS = {
    "nft": (NFTTrainer, NFTConfig, {}),
    "rft": (NFTTrainer, NFTConfig, {"negative_weight": 0.0, "prompt_weighting": "none"}),
    "grpo": (GRPOTrainer, GRPOConfig, {"loss_type": "grpo", "scale_rewards": "group"}),
    "dr_grpo": (GRPOTrainer, GRPOConfig, {"loss_type": "dr_grpo", "scale_rewards": "none"}),
    "nft_ds": (NFTTrainer, NFTConfig, {"dynamic_sampling": True, "max_sampling_rounds": 4}),
}


def common_settings(opts, regime, seed, output_dir):
    off = regime == "off"
    return dict(
        output_dir=output_dir,
        use_cpu=True,
        bf16=False,
        report_to="none",
        seed=seed,
        max_steps=opts.steps,
        learning_rate=opts.learning_rate,
        lr_scheduler_type="constant",
        warmup_steps=0,
        per_device_train_batch_size=opts.batch,
        steps_per_generation=opts.off_policy_steps if off else 1,
        num_generations=opts.num_generations,
        max_completion_length=opts.max_completion_length,
        temperature=1.0,
        logging_steps=1,
        save_strategy="no",
        gradient_checkpointing=False,
        disable_tqdm=True,
    )


def run(opts, algorithm, regime, seed, model_path, eval_set, train_set):
    trainer_cls, config_cls, extra = ALGORITHM_SETTINGS[algorithm]
    output_dir = str(Path(opts.out) / "runs" / f"{algorithm}-{regime}-{seed}")
    config = config_cls(**common_settings(opts, regime, seed, output_dir), **extra)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path)
    torch.manual_seed(seed)
    tracker = HeldOutAccuracyCallback(
        tokenizer, eval_set, every=opts.eval_every, max_new_tokens=opts.max_completion_length, num_samples=opts.samples
    )
    initial_greedy = evaluate_accuracy(
        model, tokenizer, eval_set, temperature=0.0, max_new_tokens=opts.max_completion_length
    )
    tracker.evaluate(model, 0)
    trainer = trainer_cls(
        model,
        reward_funcs=[math_verifier],
        args=config,
        train_dataset=train_set,
        processing_class=tokenizer,
        callbacks=[tracker],
    )
    start = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - start
    logs = [h for h in trainer.state.log_history if "entropy" in h]
    greedy = evaluate_accuracy(
        trainer.model, tokenizer, eval_set, temperature=0.0, max_new_tokens=opts.max_completion_length
    )
    extra_tokens = sum(h.get("nft/dynamic_sampling/extra_generated_tokens", 0.0) for h in trainer.state.log_history)
    return {
        "algorithm": algorithm,
        "regime": regime,
        "seed": seed,
        "curve": tracker.curve,
        "initial_sampled": tracker.curve[0][1],
        "final_sampled": tracker.curve[-1][1],
        "initial_greedy": initial_greedy.accuracy,
        "final_greedy": greedy.accuracy,
        "entropy_mean": statistics.fmean(h["entropy"] for h in logs),
        "entropy_last": statistics.fmean(h["entropy"] for h in logs[-5:]),
        "train_reward_last": statistics.fmean(h.get("reward", float("nan")) for h in logs[-5:]),
        "wall_seconds": wall,
        "extra_generated_tokens": extra_tokens,
        **{
            f"dynamic_sampling_{name}": statistics.fmean(values)
            for name in ("rounds", "kept_group_frac", "batch_fill")
            if (
                values := [
                    h[f"nft/dynamic_sampling/{name}"]
                    for h in trainer.state.log_history
                    if f"nft/dynamic_sampling/{name}" in h
                ]
            )
        },
    }


def mean_std(values):
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarize(results, opts):
    lines = [
        f"Embedded task, {opts.steps} optimizer steps x {opts.batch} completions ({opts.num_generations} per prompt), "
        f"seeds {opts.seeds}; off-policy = {opts.off_policy_steps} optimizer steps per generated batch.",
        "",
        f"| regime | algorithm | held-out acc. ({opts.samples} samples, T=1) | held-out acc. (greedy) | entropy (mean) "
        "| entropy (last 5) | wall time (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    start = [r["initial_sampled"] for r in results]
    start_greedy = [r["initial_greedy"] for r in results]
    for regime in opts.regimes:
        for algorithm in opts.algorithms:
            rows = [r for r in results if r["regime"] == regime and r["algorithm"] == algorithm]
            if not rows:
                continue
            cells = []
            for key, fmt in (
                ("final_sampled", "{:.1%} ± {:.1%}"),
                ("final_greedy", "{:.1%} ± {:.1%}"),
                ("entropy_mean", "{:.3f} ± {:.3f}"),
                ("entropy_last", "{:.3f} ± {:.3f}"),
                ("wall_seconds", "{:.0f} ± {:.0f}"),
            ):
                cells.append(fmt.format(*mean_std([r[key] for r in rows])))
            name = algorithm
            extra = statistics.fmean(r["extra_generated_tokens"] for r in rows)
            if extra:
                name += f" (+{extra:.0f} generated tokens per run)"
            lines.append(f"| {regime}-policy | {name} | " + " | ".join(cells) + " |")
    sampled = [r for r in results if "dynamic_sampling_rounds" in r]
    if sampled:
        lines += [
            "",
            f"Dynamic sampling: {statistics.fmean(r['dynamic_sampling_rounds'] for r in sampled):.2f} generation rounds "
            f"per step, {statistics.fmean(r['dynamic_sampling_kept_group_frac'] for r in sampled):.1%} of generated "
            f"groups kept (mixed), batch filled to {statistics.fmean(r['dynamic_sampling_batch_fill'] for r in sampled):.1%}.",
        ]
    lines += [
        "",
        f"Starting point (the same model for every run): held-out accuracy {statistics.fmean(start):.1%} sampled, "
        f"{statistics.fmean(start_greedy):.1%} greedy.",
    ]
    return "\n".join(lines)


def plot(results, opts, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(opts.regimes), figsize=(6 * len(opts.regimes), 4), squeeze=False)
    for ax, regime in zip(axes[0], opts.regimes, strict=True):
        for algorithm in opts.algorithms:
            rows = [r for r in results if r["regime"] == regime and r["algorithm"] == algorithm]
            if not rows:
                continue
            steps = [s for s, _ in rows[0]["curve"]]
            values = torch.tensor([[a for _, a in r["curve"]] for r in rows])
            mean, std = values.mean(0), values.std(0) if len(rows) > 1 else torch.zeros(len(steps))
            ax.plot(steps, mean, label=algorithm)
            ax.fill_between(steps, mean - std, mean + std, alpha=0.2)
        ax.set(
            title=f"{regime}-policy",
            xlabel="optimizer step",
            ylabel=f"held-out accuracy ({opts.samples} samples, T=1)",
        )
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--algorithms", nargs="+", default=list(ALGORITHMS), choices=ALGORITHMS)
    parser.add_argument("--regimes", nargs="+", default=list(REGIMES), choices=REGIMES)
    parser.add_argument("--dynamic_sampling_regimes", nargs="+", default=["on"], choices=REGIMES)
    parser.add_argument("--steps", type=int, default=30, help="optimizer steps per run")
    parser.add_argument("--batch", type=int, default=64, help="completions per optimizer step")
    parser.add_argument("--num_generations", type=int, default=8)
    parser.add_argument("--off_policy_steps", type=int, default=4, help="optimizer steps per generated batch")
    parser.add_argument("--learning_rate", type=float, default=2e-4)
    parser.add_argument("--max_completion_length", type=int, default=16)
    parser.add_argument("--eval_every", type=int, default=10)
    parser.add_argument("--eval_prompts", type=int, default=128)
    parser.add_argument("--samples", type=int, default=4, help="sampled answers per held-out problem (T=1)")
    parser.add_argument("--out", default="benchmarks/results/compare_algorithms")
    opts = parser.parse_args()

    Path(opts.out).mkdir(parents=True, exist_ok=True)
    model_path = embedded_path()
    eval_set = make_dataset("test", opts.eval_prompts, seed=0)
    train_set = make_dataset("train", 4_000, seed=0)
    results = []
    for seed in opts.seeds:
        for regime in opts.regimes:
            for algorithm in opts.algorithms:
                if algorithm == "nft_ds" and regime not in opts.dynamic_sampling_regimes:
                    continue
                result = run(opts, algorithm, regime, seed, model_path, eval_set, train_set)
                results.append(result)
                print(
                    f"{regime}-policy {algorithm:<8} seed {seed}: held-out {result['initial_sampled']:.1%} -> "
                    f"{result['final_sampled']:.1%} (greedy {result['initial_greedy']:.1%} -> "
                    f"{result['final_greedy']:.1%}), entropy "
                    f"{result['entropy_mean']:.3f}, {result['wall_seconds']:.0f} s",
                    flush=True,
                )
                (Path(opts.out) / "results.json").write_text(json.dumps(results, indent=1))
    table = summarize(results, opts)
    print(table)
    (Path(opts.out) / "results.md").write_text(table + "\n")
    plot(results, opts, Path(opts.out) / "curves.png")
    print(f"wrote {opts.out}/results.json, results.md, curves.png")


if __name__ == "__main__":
    main()
