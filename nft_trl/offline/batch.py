"""`OfflineBatches`: the batch TRL's generation would build, built from stored judged answers instead.

`NFTTrainer(args=NFTConfig(offline=True))` calls `OfflineBatches.build` in place of generating: it returns the same
dict GRPOTrainer's `_generate_and_score_completions` returns (prompt and completion ids and masks, padded as TRL
pads them, `num_items_in_batch`, `old_per_token_logps`, `ref_per_token_logps` when `beta > 0`) plus NFT's
`nft_correct`, `nft_valid`, `nft_correct_rate` read from the prepared dataset (`nft_trl.offline.dataset`). TRL then
shuffles and splits it and NFT's `_compute_loss` trains on it unchanged.

- Prompts are tokenised by TRL's own `_tokenize_prompts` (chat template, tools, `chat_template_kwargs`).
- Completions: the stored `completion_ids` when present, else the text (a conversational completion's message
  contents, joined) tokenised without special tokens, followed by the first end-of-sequence id unless the row is
  `truncated`. Longer completions than `max_completion_length` are cut there (and count as truncated).
- `pi_old`: the stored `completion_logps`; for rows without them, the starting model's log-probabilities of the whole
  dataset, computed once by `fill_cache` before the first optimizer step (with the model TRL trains, in the same
  precision, temperature-scaled as TRL's) and kept for every later epoch. This assumes the starting model generated
  the answers; the cache is saved in checkpoints so a resumed run keeps the same `pi_old`.
- The sampler yields each answer once per epoch (no `num_generations` repeats): `r_hat` is a per-row column, so a
  batch need not hold whole groups.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import torch
from trl.trainer.utils import RepeatSampler, pad


logger = logging.getLogger(__name__)

CACHE_FILE = "offline_old_logps.pt"


def completion_text(completion: Any) -> str:
    """The text of a completion: itself, or its messages' contents joined."""
    if isinstance(completion, str):
        return completion
    return "".join(message["content"] for message in completion)


class OfflineBatches:
    """The batches of offline NFT for `trainer` (an `NFTTrainer` with `args.offline`); see the module docstring."""

    def __init__(self, trainer):
        self.trainer = trainer
        self.cache: dict[int, torch.Tensor] | None = None  # nft_row -> (T_row,) log pi_old, on CPU

    def sampler(self, dataset) -> RepeatSampler:
        """Each answer once per epoch, generation batch by generation batch, repeated as TRL repeats a generation."""
        args = self.trainer.args
        return RepeatSampler(
            data_source=dataset,
            mini_repeat_count=1,
            batch_size=args.generation_batch_size,
            repeat_count=self.trainer.num_iterations * args.steps_per_generation,
            shuffle=self.trainer.shuffle_dataset,
            seed=args.seed,
        )

    # ------------------------------------------------------------------------------------------------------ tokens
    def tokens(self, rows: list[dict[str, Any]]) -> tuple[list[list[int]], list[list[int]]]:
        trainer = self.trainer
        prompt_ids, _, multimodal = trainer._tokenize_prompts([row["prompt"] for row in rows])
        if multimodal:
            raise ValueError("Offline NFT supports text prompts only (the prompts carry images).")
        limit = trainer.max_completion_length
        completions = []
        for row in rows:
            ids = row.get("completion_ids")
            if ids is None:
                text = completion_text(row["completion"])
                ids = trainer._tokenizer(text, add_special_tokens=False)["input_ids"]
                if not row.get("truncated"):
                    ids = [*ids, trainer.eos_token_ids[0]]
            completions.append(list(ids)[:limit])
        return [list(p) for p in prompt_ids], completions

    def _padded(self, prompt_ids, completion_ids):
        trainer, device = self.trainer, self.trainer.accelerator.device
        multiple, pad_id = trainer.pad_to_multiple_of, trainer._tokenizer.pad_token_id

        def stack(rows, value, side):
            return pad(
                [torch.tensor(r) for r in rows], padding_value=value, padding_side=side, pad_to_multiple_of=multiple
            ).to(device)

        return (
            stack(prompt_ids, pad_id, "left"),
            stack([[1] * len(p) for p in prompt_ids], 0, "left"),
            stack(completion_ids, pad_id, "right"),
            stack([[1] * len(c) for c in completion_ids], 0, "right"),
        )

    # ------------------------------------------------------------------------------------------------------ pi_old
    def _logps(self, model, prompt_ids, completion_ids) -> torch.Tensor:
        trainer = self.trainer
        p_ids, p_mask, c_ids, c_mask = self._padded(prompt_ids, completion_ids)
        with torch.no_grad():
            logps, _, _ = trainer._get_per_token_logps_and_entropies(
                model,
                torch.cat([p_ids, c_ids], dim=1),
                torch.cat([p_mask, c_mask], dim=1),
                c_ids.size(1),
                batch_size=trainer.args.per_device_train_batch_size,
            )
        return logps

    def fill_cache(self) -> None:
        """log pi_old of every dataset row without stored `completion_logps`, with the model as it is now."""
        trainer, dataset = self.trainer, self.trainer.train_dataset
        if "completion_logps" in dataset.column_names:
            todo = [i for i, v in enumerate(dataset["completion_logps"]) if v is None]
        else:
            todo = list(range(len(dataset)))
        self.cache = {}
        if not todo:
            return
        logger.info("Offline NFT: computing the starting model's log-probabilities of %d stored answers.", len(todo))
        step = trainer.args.per_device_train_batch_size
        for start in range(0, len(todo), step):
            rows = list(dataset.select(todo[start : start + step]))
            prompt_ids, completion_ids = self.tokens(rows)
            logps = self._logps(trainer.model, prompt_ids, completion_ids).float().cpu()
            for row, ids, values in zip(rows, completion_ids, logps, strict=True):
                self.cache[row["nft_row"]] = values[: len(ids)].clone()

    def _old_logps(self, rows, completion_ids, width: int) -> torch.Tensor:
        values = []
        for row, ids in zip(rows, completion_ids, strict=True):
            stored = row.get("completion_logps")
            if stored is not None:
                if len(stored) < len(ids):
                    raise ValueError(
                        f"Judged answers, row {row['nft_row']}, column 'completion_logps': {len(stored)} values for a "
                        f"completion of {len(ids)} tokens. Store 'completion_ids' with the log-probabilities (the text "
                        "does not always tokenise back to the generated tokens), or drop 'completion_logps'."
                    )
                values.append(torch.tensor(stored[: len(ids)], dtype=torch.float32))
            else:
                values.append(self.cache[row["nft_row"]])
        return pad(values, padding_value=0.0, padding_side="right").to(self.trainer.accelerator.device)[:, :width]

    # ------------------------------------------------------------------------------------------------------ batch
    def build(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        """The generation batch of `rows` (this process's share), as GRPOTrainer's generation would return it."""
        trainer = self.trainer
        if self.cache is None:
            if trainer.state.global_step > 0:
                raise RuntimeError(
                    "Offline NFT resumed without the starting model's log-probabilities (pi_old): the checkpoint has "
                    f"no {CACHE_FILE}. Resume from a checkpoint saved by this version, or store 'completion_logps' in "
                    "the judged answers."
                )
            self.fill_cache()
        device = trainer.accelerator.device
        prompt_ids, completion_ids = self.tokens(rows)
        p_ids, p_mask, c_ids, c_mask = self._padded(prompt_ids, completion_ids)
        if trainer.mask_truncated_completions:
            ends = [*trainer.eos_token_ids, trainer._tokenizer.pad_token_id]
            truncated = torch.tensor([ids[-1] not in ends for ids in completion_ids], device=device)
            c_mask = c_mask * (~truncated).unsqueeze(1).int()
        output = {
            "prompt_ids": p_ids,
            "prompt_mask": p_mask,
            "completion_ids": c_ids,
            "completion_mask": c_mask,
            "num_items_in_batch": trainer.accelerator.gather(c_mask.sum()).sum(),
            "old_per_token_logps": self._old_logps(rows, completion_ids, c_ids.size(1)),
            "nft_correct": torch.tensor([row["nft_correct"] for row in rows], device=device),
            "nft_valid": torch.tensor([row["nft_valid"] for row in rows], device=device),
            "nft_correct_rate": torch.tensor([row["nft_correct_rate"] for row in rows], device=device),
        }
        if trainer.beta != 0.0:
            if trainer.ref_model is None:
                raise ValueError("Offline NFT with beta > 0 needs a reference model; PEFT adapters are not supported.")
            output["ref_per_token_logps"] = self._logps(trainer.ref_model, prompt_ids, completion_ids)
        self._log(output, completion_ids)
        return output

    def _log(self, output, completion_ids) -> None:
        trainer = self.trainer
        lengths = trainer.accelerator.gather(
            torch.tensor([len(c) for c in completion_ids], device=output["prompt_ids"].device)
        )
        correct = trainer.accelerator.gather(output["nft_correct"] & output["nft_valid"]).float().sum()
        scored = trainer.accelerator.gather(output["nft_valid"]).float().sum()
        metrics = trainer._metrics["train"]
        metrics["completions/mean_length"].append(lengths.float().mean().item())
        metrics["nft/correct_rate"].append((correct / scored.clamp(min=1.0)).item())

    # ------------------------------------------------------------------------------------------------- checkpoints
    def save(self, checkpoint_dir: str) -> None:
        if self.cache is not None:
            torch.save(self.cache, os.path.join(checkpoint_dir, CACHE_FILE))

    def load(self, checkpoint_dir: str) -> None:
        path = os.path.join(checkpoint_dir, CACHE_FILE)
        if os.path.isfile(path):
            self.cache = torch.load(path)
