"""A short NFT run on the tiny model with scripted completions, under any launcher: accelerate (DeepSpeed), torchrun
(DDP over gloo) or plain python. Run by tests/test_zero3.py:

    train_scripted.py OUT_DIR --model DIR [--steps 3] [--dynamic] [--save_steps N] [--resume] [--ddp_backend gloo]

Every process gets 8 rows (groups of 4) of scripted completions; the verdict alternates right / wrong within each
group, and with `--dynamic` the first generation round of every step is all wrong, which forces extra rounds. Rank 0
writes OUT_DIR/result.json (world size, DeepSpeed stage, log history, the refill stream's state) and OUT_DIR/params.pt
(every parameter after training, gathered under ZeRO-3).
"""

import argparse
import json
import os
from pathlib import Path


os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("CI", "true")

import torch  # noqa: E402
from datasets import Dataset  # noqa: E402
from transformers.trainer_utils import get_last_checkpoint  # noqa: E402

from nft_trl import NFTConfig, NFTTrainer  # noqa: E402
from nft_trl.cli.build_locks import clear_stale_build_locks  # noqa: E402
from nft_trl.embedded.scripted import scripted_generation  # noqa: E402


ROWS_PER_PROCESS = 8


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--model", required=True)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--dynamic", action="store_true")
    parser.add_argument("--save_steps", type=int, default=0)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--ddp_backend", default=None)
    parser.add_argument("--use_cpu", action="store_true")
    opts = parser.parse_args()
    out = Path(opts.out)
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true" and not torch.cuda.is_available():
        clear_stale_build_locks()  # as nft_trl.cli.train does before DeepSpeed builds its CPU ops

    first_round_seen: set[int] = set()

    def alternating(completions, trainer_state=None, **kwargs):
        """Right, wrong, right, wrong in every group; with --dynamic, each step's first round is all wrong."""
        step = trainer_state.global_step
        if opts.dynamic and step not in first_round_seen:
            first_round_seen.add(step)
            return [0.0] * len(completions)
        return [float(i % 2 == 0) for i in range(len(completions))]

    args = NFTConfig(
        output_dir=str(out / "run"),
        use_cpu=opts.use_cpu,
        ddp_backend=opts.ddp_backend,
        bf16=False,
        report_to="none",
        per_device_train_batch_size=ROWS_PER_PROCESS,
        num_generations=4,
        max_completion_length=8,
        max_steps=opts.steps,
        learning_rate=1e-3,
        optim="adamw_torch",
        lr_scheduler_type="constant",
        logging_steps=1,
        gradient_checkpointing=False,
        seed=0,
        dynamic_sampling=opts.dynamic,
        max_sampling_rounds=3,
        save_strategy="steps" if opts.save_steps else "no",
        save_steps=opts.save_steps or 500,
    )
    prompts = Dataset.from_dict({"prompt": [[{"role": "user", "content": f"question {i}"}] for i in range(64)]})
    trainer = NFTTrainer(opts.model, reward_funcs=[alternating], args=args, train_dataset=prompts)
    with scripted_generation():
        trainer.train(resume_from_checkpoint=get_last_checkpoint(args.output_dir) if opts.resume else None)

    accelerator = trainer.accelerator
    zero_stage = accelerator.state.deepspeed_plugin.zero_stage if trainer.is_deepspeed_enabled else None
    parameters = list(trainer.model.parameters())
    if zero_stage == 3:
        import deepspeed

        with deepspeed.zero.GatheredParameters(parameters, modifier_rank=None):
            params = {n: p.detach().float().clone() for n, p in trainer.model.named_parameters()}
    else:
        params = {n: p.detach().float().clone() for n, p in trainer.model.named_parameters()}
    if accelerator.is_main_process:
        torch.save(params, out / "params.pt")
        result = {
            "world_size": accelerator.num_processes,
            "zero_stage": zero_stage,
            "global_step": trainer.state.global_step,
            "refill": trainer._sampler.stream.state_dict() if trainer._sampler is not None else None,
            "log_history": trainer.state.log_history,
        }
        (out / "result.json").write_text(json.dumps(result, default=str))
    accelerator.wait_for_everyone()


if __name__ == "__main__":
    main()
