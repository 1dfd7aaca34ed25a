"""Offline NFT for one optimizer step; record, per process, the answers it trained on and the parameter change.

Run by tests/test_offline.py as `torchrun --nproc_per_node N train_offline.py OUT_DIR`: 16 judged answers in 4 groups,
a global generation batch of 8 answers (8 per process with 1 process, 4 with 2), plain SGD.
"""

import json
import os
import sys
from pathlib import Path


os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("CI", "true")

import torch  # noqa: E402
from datasets import Dataset  # noqa: E402

from nft_trl import NFTConfig, NFTTrainer  # noqa: E402
from nft_trl.embedded.model import build_tiny_model  # noqa: E402
from nft_trl.embedded.scripted import scripted_completion  # noqa: E402
from nft_trl.embedded.tokenizer import build_tiny_tokenizer  # noqa: E402


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tests' helpers
from conftest import cpu_training_args  # noqa: E402


class RecordingNFTTrainer(NFTTrainer):
    seen: list = []

    def _generate_and_score_completions(self, inputs):
        self.seen = self.seen + [row["nft_row"] for row in inputs]
        return super()._generate_and_score_completions(inputs)


def main(out_dir):
    world = int(os.environ.get("WORLD_SIZE", "1"))
    tokenizer = build_tiny_tokenizer()
    rows = []
    for i in range(16):
        ids = scripted_completion(i, 6, len(tokenizer), tokenizer.eos_token_id)
        rows.append({"prompt": f"question {i // 4}", "completion": "x", "completion_ids": ids, "correct": i % 3 == 0})
    args = NFTConfig(
        **cpu_training_args(
            os.path.join(out_dir, "run"),
            offline=True,
            per_device_train_batch_size=8 // world,
            num_generations=2,
            max_completion_length=6,
            max_steps=1,
            optim="sgd",
            learning_rate=0.5,
            lr_scheduler_type="constant",
            weight_decay=0.0,
            max_grad_norm=0.0,
        )
    )
    model = build_tiny_model(tokenizer, seed=0)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer = RecordingNFTTrainer(model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer)
    trainer.train()
    rank = trainer.accelerator.process_index
    if rank == 0:
        delta = {
            n: p.detach() - before[n] for n, p in trainer.accelerator.unwrap_model(trainer.model).named_parameters()
        }
        torch.save(delta, os.path.join(out_dir, "delta.pt"))
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump({"world_size": trainer.accelerator.num_processes, "rows": trainer.seen}, f)


if __name__ == "__main__":
    main(sys.argv[1])
