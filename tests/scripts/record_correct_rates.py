"""Train NFT for a few steps and record, per process, each local row's verdict and the r_hat the trainer computed.

Run by tests/test_distributed.py as `torchrun --nproc_per_node N record_correct_rates.py OUT_DIR`: groups of 4
completions over 6 rows per process, so that one group in three spans both processes.
"""

import json
import os
import sys
import zlib
from pathlib import Path


os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("CI", "true")

from datasets import Dataset  # noqa: E402

from nft_trl import NFTConfig, NFTTrainer  # noqa: E402
from nft_trl.embedded.model import build_tiny_model  # noqa: E402
from nft_trl.embedded.tokenizer import build_tiny_tokenizer  # noqa: E402


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tests' helpers
from conftest import cpu_training_args  # noqa: E402


calls = []


def text_parity(prompts, completions, **kwargs):
    """A deterministic binary verdict of (prompt, completion) that mixes every group."""
    verdicts = [float(zlib.crc32((str(p) + str(c)).encode()) % 2) for p, c in zip(prompts, completions, strict=True)]
    calls.append({"prompts": [p[-1]["content"] for p in prompts], "verdicts": verdicts})
    return verdicts


class RecordingNFTTrainer(NFTTrainer):
    def _generate_and_score_completions(self, inputs):
        output = super()._generate_and_score_completions(inputs)
        calls[-1]["nft_correct"] = output["nft_correct"].tolist()
        calls[-1]["nft_correct_rate"] = output["nft_correct_rate"].tolist()
        return output


def main(out_dir):
    tokenizer = build_tiny_tokenizer()
    model = build_tiny_model(tokenizer, seed=0)
    dataset = Dataset.from_dict({"prompt": [[{"role": "user", "content": f"prompt {i}"}] for i in range(24)]})
    args = NFTConfig(
        **cpu_training_args(
            os.path.join(out_dir, "run"),
            per_device_train_batch_size=6,
            num_generations=4,
            max_completion_length=4,
            max_steps=2,
        )
    )
    trainer = RecordingNFTTrainer(
        model, reward_funcs=[text_parity], args=args, train_dataset=dataset, processing_class=tokenizer
    )
    trainer.train()
    rank = trainer.accelerator.process_index
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump({"world_size": trainer.accelerator.num_processes, "calls": calls}, f)


if __name__ == "__main__":
    main(sys.argv[1])
