"""Train NFT with dynamic sampling and record, per process, the batch handed to TRL after the extra rounds.

Run by tests/test_distributed.py with `torchrun --nproc_per_node N record_dynamic_batches.py OUT_DIR` for N = 1 and
2: the same global batch size (12 rows, groups of 4) either way, so the concatenated per-process batches of the
two-process run must equal the one-process batch, row for row.
"""

import json
import os
import sys
from collections import Counter
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


GLOBAL_ROWS = 12


def occurrence_reward(prompts, completions, **kwargs):
    """Prompts with id % 3 == 0 all right, == 1 all wrong; else right, wrong, right, wrong within the group.

    The verdict depends only on the prompt and the row's rank among this process's rows of that prompt; groups split
    2 + 2 across processes get the same verdicts as on one process.
    """
    seen, verdicts = Counter(), []
    for prompt in prompts:
        pid = int(prompt[-1]["content"].split()[-1])
        verdicts.append(float(pid % 3 == 0) if pid % 3 != 2 else float(seen[pid] % 2 == 0))
        seen[pid] += 1
    return verdicts


def main(out_dir):
    world = int(os.environ.get("WORLD_SIZE", "1"))
    tokenizer = build_tiny_tokenizer()
    model = build_tiny_model(tokenizer, seed=0)
    dataset = Dataset.from_dict({"prompt": [[{"role": "user", "content": f"prompt {i}"}] for i in range(30)]})
    args = NFTConfig(
        **cpu_training_args(
            os.path.join(out_dir, "run"),
            per_device_train_batch_size=GLOBAL_ROWS // world,
            num_generations=4,
            max_completion_length=4,
            max_steps=2,
            dynamic_sampling=True,
            max_sampling_rounds=8,
        )
    )
    records = []

    class Recording(NFTTrainer):
        def _generate_and_score_completions(self, inputs):
            output = super()._generate_and_score_completions(inputs)
            texts = tokenizer.batch_decode(output["prompt_ids"], skip_special_tokens=True)
            records.append(
                {
                    "prompts": [t.split("prompt ")[-1].split("\n")[0] for t in texts],
                    "correct": output["nft_correct"].tolist(),
                    "rate": output["nft_correct_rate"].tolist(),
                    "valid": output["nft_valid"].tolist(),
                }
            )
            return output

    trainer = Recording(
        model, reward_funcs=[occurrence_reward], args=args, train_dataset=dataset, processing_class=tokenizer
    )
    trainer.train()
    rounds = [
        h["nft/dynamic_sampling/rounds"] for h in trainer.state.log_history if "nft/dynamic_sampling/rounds" in h
    ]
    rank = trainer.accelerator.process_index
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump({"records": records, "rounds": rounds}, f)


if __name__ == "__main__":
    main(sys.argv[1])
