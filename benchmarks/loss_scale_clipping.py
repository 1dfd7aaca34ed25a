"""How often gradient clipping binds under NFT's loss normalisation and under the authors', on the embedded task.

NFT's default aggregation (`loss_type="dr_grpo"`) divides an optimizer step's token sum by answers x
`max_completion_length`; the authors' verl code (`loss_type="token_sum"`) divides it by 1000 x processes. AdamW is
invariant to a constant loss scale, so the two differ only where `max_grad_norm` clips. This script trains the
embedded model three times from the same start, on the same prompts, with `max_grad_norm=1.0`:

- `dr_grpo`: NFT's normaliser (here 64 answers x 16 tokens = 1024);
- `token_sum`: the authors' constant, 1000 (on this batch shape the raw gradient is 1024 / 1000 = 1.02x dr_grpo's);
- `token_sum at the 7B scale`: a divisor chosen so that the raw gradient is 57.3x dr_grpo's, the factor between the
  two reductions in the paper's 7B run (512 answers x 3,584 tokens / (1000 x 32 GPUs)).

and prints, per variant, the share of optimizer steps whose gradient norm (before clipping) exceeded 1.0, the
median and 90th percentile of that norm, and the held-out accuracy at the end. Off-policy like the paper: 4
optimizer steps per generated batch. Results go to `benchmarks/results/loss_scale_clipping/results.json`.

    python benchmarks/loss_scale_clipping.py [--max_steps 100]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from nft_trl import NFTConfig, NFTTrainer, math_verifier
from nft_trl.embedded.demo import HeldOutAccuracyCallback, demo_defaults, load_demo


ANSWERS_PER_STEP, MAX_COMPLETION_LENGTH = 64, 16
PAPER_7B_FACTOR = 512 * 3584 / (1000 * 32)  # dr_grpo's normaliser over the authors', in the paper's 7B run
RESULTS = Path(__file__).parent / "results" / "loss_scale_clipping" / "results.json"


def variants() -> dict[str, dict]:
    dr_grpo_normaliser = ANSWERS_PER_STEP * MAX_COMPLETION_LENGTH
    return {
        "dr_grpo (NFT)": {"loss_type": "dr_grpo"},
        "token_sum / 1000 (authors)": {"loss_type": "token_sum", "token_sum_divisor": 1000.0},
        "token_sum at the 7B scale": {
            "loss_type": "token_sum",
            "token_sum_divisor": dr_grpo_normaliser / PAPER_7B_FACTOR,
        },
    }


def run(name: str, overrides: dict, max_steps: int, seed: int) -> dict:
    defaults = demo_defaults()
    defaults.update(
        output_dir=f"outputs/loss_scale_clipping/{name.split()[0]}",
        max_steps=max_steps,
        logging_steps=1,
        per_device_train_batch_size=ANSWERS_PER_STEP,
        max_completion_length=MAX_COMPLETION_LENGTH,
        steps_per_generation=4,
        max_grad_norm=1.0,
        seed=seed,
        disable_tqdm=True,
    )
    args = NFTConfig(**defaults, **overrides)
    model, tokenizer, train, held_out = load_demo(args)
    accuracy = HeldOutAccuracyCallback(tokenizer, held_out, every=max_steps, max_new_tokens=MAX_COMPLETION_LENGTH)
    trainer = NFTTrainer(
        model,
        reward_funcs=[math_verifier],
        args=args,
        train_dataset=train,
        processing_class=tokenizer,
        callbacks=[accuracy],
    )
    start_accuracy = accuracy.evaluate(trainer.model, 0).accuracy
    start = time.perf_counter()
    trainer.train()
    norms = [h["grad_norm"] for h in trainer.state.log_history if "grad_norm" in h]
    deciles = statistics.quantiles(norms, n=10)
    return {
        "variant": name,
        **overrides,
        "steps": len(norms),
        "clipped_frac": sum(n > args.max_grad_norm for n in norms) / len(norms),
        "grad_norm_median": statistics.median(norms),
        "grad_norm_p90": deciles[-1],
        "held_out_accuracy_start": start_accuracy,
        "held_out_accuracy": accuracy.curve[-1][1],
        "seconds": time.perf_counter() - start,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--max_steps", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    cli = parser.parse_args()
    rows = [run(name, overrides, cli.max_steps, cli.seed) for name, overrides in variants().items()]
    print(f"\n{cli.max_steps} optimizer steps, max_grad_norm 1.0, seed {cli.seed}:")
    print("| variant | steps clipped | median grad norm | p90 grad norm | held-out accuracy (start -> end) |")
    print("|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['variant']} | {row['clipped_frac']:.0%} | {row['grad_norm_median']:.3g} | "
            f"{row['grad_norm_p90']:.3g} | {row['held_out_accuracy_start']:.1%} -> {row['held_out_accuracy']:.1%} |"
        )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"max_steps": cli.max_steps, "seed": cli.seed, "runs": rows}, indent=2) + "\n")
    print(f"Results: {RESULTS}")


if __name__ == "__main__":
    main()
