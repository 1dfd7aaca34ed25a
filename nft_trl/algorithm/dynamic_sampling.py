"""Dynamic sampling (DAPO-style) for NFT: train only on groups whose answers are mixed, and keep the batch full.

A group whose answers are all right or all wrong carries no contrast. With `NFTConfig.dynamic_sampling`, after each
generation round the trainer keeps the mixed groups, draws more prompts from a `RefillStream` and generates again,
until the generation batch is full of mixed groups or `max_sampling_rounds` rounds were made. Decisions use the
verdicts gathered from every process, so all processes make the same number of rounds (and collective calls); the
kept rows are then redistributed so that each process holds its slice of the new global batch, exactly as TRL slices
a freshly generated one.

Policy at the cap: the batch is completed with the first degenerate groups seen, marked invalid (no loss, no tokens
in the normalisers), and a warning is logged.

`DynamicSampler` runs the rounds for the trainer (one call per generation step) and saves the refill stream's position
in each checkpoint; the functions below it are pure (no accelerator).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass

import numpy as np
import torch

from ..runtime.checkpoints import atomic_write_text, read_json_state
from .verdicts import Verdicts, mixed_groups


logger = logging.getLogger(__name__)

#: File in each checkpoint folder that holds the refill stream's position.
STATE_FILE = "nft_dynamic_sampling_state.json"


# Keys of a generation batch that dynamic sampling knows how to merge, with their padding side and value. `None` as
# value means "the tokenizer's pad token". 1-D (per-row) tensors need no padding.
_SEQUENCE_KEYS: dict[str, tuple[str, float | None]] = {
    "prompt_ids": ("left", None),
    "prompt_mask": ("left", 0),
    "completion_ids": ("right", None),
    "completion_mask": ("right", 0),
    "old_per_token_logps": ("right", 0.0),
    "sampling_per_token_logps": ("right", 0.0),
    "ref_per_token_logps": ("right", 0.0),
    "importance_sampling_ratio": ("right", 1.0),
    "tool_mask": ("right", 1),
}
_ROW_KEYS = ("advantages", "nft_correct", "nft_valid", "nft_correct_rate")
_BATCH_KEYS = ("num_items_in_batch",)
SUPPORTED_KEYS = frozenset(_SEQUENCE_KEYS) | frozenset(_ROW_KEYS) | frozenset(_BATCH_KEYS)

#: Distinguishes the refill stream's permutations from those of TRL's own sampler (which uses `seed` alone).
_REFILL_STREAM_ID = 1


class DynamicSampler:
    """Fills a generation batch with mixed groups for `NFTTrainer` (see the module docstring).

    Each round after TRL's own generates `target_groups` new questions drawn from a `RefillStream` through the
    trainer's `_generate_and_judge`, so generation, rewards and verdicts are exactly the trainer's.
    """

    def __init__(self, trainer):
        dataset = trainer.train_dataset
        if not hasattr(dataset, "__getitem__") or not hasattr(dataset, "__len__"):
            raise ValueError(
                "dynamic_sampling draws extra prompts by index, so it needs a map-style training dataset (e.g. a "
                "datasets.Dataset), not an IterableDataset. Load the dataset without streaming, or set "
                "dynamic_sampling=False."
            )
        self.trainer = trainer
        self.stream = RefillStream(len(dataset), seed=trainer.args.seed, shuffle=trainer.shuffle_dataset)

    def fill(self, inputs: list[dict], output: dict, verdicts: Verdicts) -> tuple[dict, Verdicts]:
        """Generate more rounds until the batch is full of mixed groups; return the batch and every round's verdicts."""
        trainer, args = self.trainer, self.trainer.args
        accelerator, num_generations = trainer.accelerator, trainer.num_generations
        local_rows, process = len(inputs), accelerator.process_index
        target_rows = local_rows * accelerator.num_processes
        target_groups = target_rows // num_generations
        batches, rounds = [output], [verdicts]
        mixed = [mixed_groups(verdicts.correct, verdicts.valid, num_generations)]
        extra_tokens = torch.zeros((), device=accelerator.device)
        # A round is `dynamic_sampling_multiplier` batches of questions (TRL's batch opens the first one); the mixed
        # groups are counted at the end of each round. Every process sees the same gathered verdicts, so every process
        # takes the same number of rounds.
        per_round = args.dynamic_sampling_multiplier
        max_batches = per_round * args.max_sampling_rounds
        while len(batches) % per_round or (
            sum(int(m.sum()) for m in mixed) < target_groups and len(batches) < max_batches
        ):
            prompts = self.stream.take(target_groups)
            global_rows = [index for index in prompts for _ in range(num_generations)]
            mine = global_rows[process * local_rows : (process + 1) * local_rows]
            extra, extra_verdicts = trainer._generate_and_judge([trainer.train_dataset[i] for i in mine])
            batches.append(extra)
            rounds.append(extra_verdicts)
            mixed.append(mixed_groups(extra_verdicts.correct, extra_verdicts.valid, num_generations))
            extra_tokens = extra_tokens + accelerator.gather(extra["completion_mask"].sum()).sum()

        selection = select_groups(mixed, num_generations, target_rows)
        metrics = trainer._metrics["train"]
        metrics["nft/dynamic_sampling/rounds"].append(len(batches) / per_round)
        metrics["nft/dynamic_sampling/kept_group_frac"].append(selection.kept_groups / selection.generated_groups)
        metrics["nft/dynamic_sampling/batch_fill"].append(selection.kept_groups / target_groups)
        metrics["nft/dynamic_sampling/extra_generated_tokens"].append(float(extra_tokens))
        if selection.kept_groups < target_groups:
            logger.warning(
                f"Dynamic sampling reached max_sampling_rounds={args.max_sampling_rounds} with "
                f"{selection.kept_groups} of {target_groups} groups mixed; training on those, the rest of the batch is "
                "masked out. Raise max_sampling_rounds, or use easier/harder prompts if most groups are all right or "
                "all wrong."
            )
        if len(batches) == 1 and selection.kept_groups == target_groups:
            return output, verdicts  # the first round was all mixed: nothing to move

        for batch in batches:
            check_supported(batch)
        pad_token_id = trainer._tokenizer.pad_token_id
        merged = merge_rows(
            [self._gather(batch, pad_token_id) for batch in batches], selection.rounds, selection.rows, pad_token_id
        )
        local = slice(process * local_rows, (process + 1) * local_rows)
        merged = {key: value[local] for key, value in merged.items()}
        keep = torch.tensor(selection.keep[local], device=accelerator.device)
        merged["nft_valid"] = merged["nft_valid"] & keep
        merged["completion_mask"] = merged["completion_mask"] * keep.unsqueeze(1).to(merged["completion_mask"].dtype)
        merged = trim_padding(merged)
        loss_mask = merged["completion_mask"] * merged.get("tool_mask", 1)
        merged["num_items_in_batch"] = accelerator.gather(loss_mask.sum()).sum()
        return merged, Verdicts.cat(rounds)

    def _gather(self, batch: dict, pad_token_id: int) -> dict:
        """Every process's rows of one round, in TRL's gathered order (sequence fields padded to a common width)."""
        accelerator = self.trainer.accelerator
        if accelerator.num_processes == 1:
            return {key: value for key, value in batch.items() if key not in _BATCH_KEYS}
        out = {}
        for key, value in batch.items():  # same keys in the same order on every process
            if key in _BATCH_KEYS:
                continue
            if key in _SEQUENCE_KEYS:
                side, pad = padding_for(key, pad_token_id)
                value = accelerator.pad_across_processes(value, dim=1, pad_index=pad, pad_first=side == "left")
            is_bool = value.dtype == torch.bool
            gathered = accelerator.gather(value.to(torch.uint8) if is_bool else value)
            out[key] = gathered.bool() if is_bool else gathered
        return out

    def save(self, checkpoint_dir: str) -> None:
        atomic_write_text(os.path.join(checkpoint_dir, STATE_FILE), json.dumps(self.stream.state_dict()))

    def load(self, checkpoint_dir: str) -> None:
        """Restore the refill stream; a missing or damaged state file is an error that names it (resuming without it
        would silently restart the stream and train on other prompts)."""
        state = read_json_state(os.path.join(checkpoint_dir, STATE_FILE), "Dynamic sampling's refill state")
        self.stream.load_state_dict(state)


class RefillStream:
    """An endless, deterministic stream of prompt indices for the extra generation rounds.

    Each epoch is a fresh permutation of the dataset drawn from `(seed, stream id, epoch)`, so every process computes
    the same stream and a checkpoint only needs `(epoch, position)` to continue exactly where it stopped.
    """

    def __init__(self, num_prompts: int, *, seed: int, shuffle: bool = True):
        if num_prompts < 1:
            raise ValueError("Dynamic sampling needs a non-empty training dataset.")
        self.num_prompts, self.seed, self.shuffle = num_prompts, seed, shuffle
        self.epoch, self.position = 0, 0
        self._order = self._permutation(0)

    def _permutation(self, epoch: int) -> list[int]:
        if not self.shuffle:
            return list(range(self.num_prompts))
        rng = np.random.default_rng([self.seed, _REFILL_STREAM_ID, epoch])
        return rng.permutation(self.num_prompts).tolist()

    def take(self, count: int) -> list[int]:
        """The next `count` prompt indices (crossing epochs as needed)."""
        out = []
        while len(out) < count:
            if self.position == self.num_prompts:
                self.epoch, self.position = self.epoch + 1, 0
                self._order = self._permutation(self.epoch)
            step = min(count - len(out), self.num_prompts - self.position)
            out.extend(self._order[self.position : self.position + step])
            self.position += step
        return out

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position, "num_prompts": self.num_prompts, "seed": self.seed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if state["num_prompts"] != self.num_prompts or state["seed"] != self.seed:
            raise ValueError(
                f"The checkpoint's dynamic-sampling state was made for {state['num_prompts']} prompts and seed "
                f"{state['seed']}, but this run has {self.num_prompts} prompts and seed {self.seed}. Resume with the "
                "same training dataset and seed."
            )
        self.epoch, self.position = state["epoch"], state["position"]
        self._order = self._permutation(self.epoch)


@dataclass
class Selection:
    """Which rows of which round make up the new global batch."""

    rounds: list[int]  # (N,) round of each selected row
    rows: list[int]  # (N,) global row index within its round
    keep: list[bool]  # (N,) False for filler rows (degenerate groups used to complete a short batch)
    kept_groups: int  # mixed groups in the batch
    generated_groups: int  # groups generated over all rounds


def select_groups(mixed_per_round: list[torch.Tensor], num_generations: int, target_rows: int) -> Selection:
    """Take mixed groups in generation order until `target_rows`; complete a short batch with degenerate groups.

    Args:
        mixed_per_round: one `(groups,)` bool tensor per round (see `mixed_groups`), identical on every process.
        num_generations: group size `K`.
        target_rows: rows of the global generation batch (a multiple of `K`).
    """
    target_groups = target_rows // num_generations
    chosen: list[tuple[int, int, bool]] = []
    fillers: list[tuple[int, int, bool]] = []
    for round_index, mixed in enumerate(mixed_per_round):
        for group, is_mixed in enumerate(mixed.tolist()):
            if is_mixed and len(chosen) < target_groups:
                chosen.append((round_index, group, True))
            elif not is_mixed:
                fillers.append((round_index, group, False))
    kept_groups = len(chosen)
    chosen.extend(fillers[: target_groups - kept_groups])
    if len(chosen) < target_groups:  # cannot happen: the first round alone is a full batch
        raise RuntimeError("Dynamic sampling could not assemble a full batch.")
    rounds, rows, keep = [], [], []
    for round_index, group, is_kept in chosen:
        for k in range(num_generations):
            rounds.append(round_index)
            rows.append(group * num_generations + k)
            keep.append(is_kept)
    generated = sum(int(m.numel()) for m in mixed_per_round)
    return Selection(rounds, rows, keep, kept_groups, generated)


def padding_for(key: str, pad_token_id: int) -> tuple[str, float]:
    """`(side, value)` with which the `(B, T)` field `key` of a generation batch is padded."""
    side, value = _SEQUENCE_KEYS[key]
    return side, pad_token_id if value is None else value


def pad_sequence_key(tensor: torch.Tensor, key: str, width: int, pad_token_id: int) -> torch.Tensor:
    """Pad a `(B, T)` tensor of a generation batch to `width` columns on its key's side with its key's value."""
    side, value = padding_for(key, pad_token_id)
    missing = width - tensor.size(1)
    if missing <= 0:
        return tensor
    fill = tensor.new_full((tensor.size(0), missing), value)
    return torch.cat([fill, tensor] if side == "left" else [tensor, fill], dim=1)


def trim_padding(batch: dict) -> dict:
    """Drop prompt columns that are padding in every row (left) and completion columns masked in every row (right)."""
    prompt_used = batch["prompt_mask"].bool().any(dim=0).nonzero()
    start = int(prompt_used[0]) if len(prompt_used) else batch["prompt_mask"].size(1)
    completion_used = batch["completion_mask"].bool().any(dim=0).nonzero()
    end = int(completion_used[-1]) + 1 if len(completion_used) else 1
    out = dict(batch)
    for key, value in batch.items():
        if key in ("prompt_ids", "prompt_mask"):
            out[key] = value[:, start:]
        elif key in _SEQUENCE_KEYS and value.dim() == 2 and value.size(1) == batch["completion_mask"].size(1):
            out[key] = value[:, :end]
    return out


def check_supported(batch: dict) -> None:
    unsupported = sorted(set(batch) - SUPPORTED_KEYS)
    if unsupported:
        raise ValueError(
            f"dynamic_sampling cannot merge the batch fields {unsupported} (multimodal inputs or a custom rollout). "
            "Set dynamic_sampling=False for this setup."
        )


def merge_rows(batches: list[dict], rounds: list[int], rows: list[int], pad_token_id: int) -> dict:
    """Build one batch from rows `rows[i]` of round `rounds[i]`, padding every sequence field to a common width.

    `batches` holds one dict per round with every row of that round (already gathered across processes when there
    are several). 0-dim fields (`num_items_in_batch`) are left to the caller.
    """
    offsets = np.cumsum([0] + [len(b["completion_ids"]) for b in batches[:-1]])
    index = torch.tensor([int(offsets[r]) + i for r, i in zip(rounds, rows, strict=True)])
    merged = {}
    for key, first in batches[0].items():
        if key in _BATCH_KEYS:
            continue
        parts = [b[key] for b in batches]
        if key in _SEQUENCE_KEYS:
            width = max(part.size(1) for part in parts)
            parts = [pad_sequence_key(part, key, width, pad_token_id) for part in parts]
        merged[key] = torch.cat(parts)[index.to(first.device)]
    return merged
