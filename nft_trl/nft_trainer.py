"""`NFTTrainer`: Negative-aware Fine-Tuning as a thin subclass of TRL's `GRPOTrainer`."""

from __future__ import annotations

import inspect
import json
import logging
import os
import textwrap
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from trl import GRPOTrainer
from trl.trainer.utils import get_config_model_id

from . import dynamic_sampling as ds
from .nft_config import NFTConfig
from .nft_loss import group_correct_rate, nft_per_token_loss


logger = logging.getLogger(__name__)

# Keyword arguments TRL itself passes to every reward function (not dataset columns).
_TRL_REWARD_KWARGS = frozenset(
    {"prompts", "completions", "completion_ids", "trainer_state", "log_extra", "log_metric", "environments"}
)
DYNAMIC_SAMPLING_STATE = "nft_dynamic_sampling_state.json"
# Multimodal fields that GRPOTrainer puts in the batch and forwards to the model.
_MULTIMODAL_KEYS = (
    "pixel_values",
    "image_grid_thw",
    "num_images",
    "pixel_attention_mask",
    "spatial_shapes",
    "num_tiles",
    "image_sizes",
    "token_type_ids",
    "mm_token_type_ids",
    "image_position_ids",
)


class NFTTrainer(GRPOTrainer):
    """Trainer for Negative-aware Fine-Tuning (NFT, [paper](https://huggingface.co/papers/2505.18116)).

    NFT keeps maximum likelihood on the answers a binary verifier marks correct and learns from the wrong ones through
    an implicit negative policy: a likelihood-ratio loss weighted by the question's correctness rate `r_hat`. On-policy
    its gradient equals GRPO's (Dr. GRPO's with the default `prompt_weighting="incorrect_rate"`).

    What it overrides, each by wrapping the parent with `super()`:
    - `_calculate_rewards`: keeps the rewards gathered across processes (TRL returns them for every completion of the
      generation batch) so that the verdicts and `r_hat` are computed on whole groups, which may span processes;
    - `_generate_and_score_completions`: adds, before TRL shuffles and splits the batch, each local row's verdict
      (`nft_correct`), validity (`nft_valid`: the verdict reward returned a value) and group rate (`nft_correct_rate`),
      sliced per process exactly as TRL slices `advantages`;
    - `_compute_loss`: the NFT loss (`nft_trl.nft_loss.nft_per_token_loss`) in place of GRPO's, aggregated per
      `loss_type` exactly as GRPO aggregates, with GRPO's gradient-accumulation scaling, vLLM importance-sampling
      correction, `tool_mask`, `mask_truncated_completions`, `top_entropy_quantile`, KL (`beta > 0`), MoE aux loss
      and multimodal inputs.

    Everything else (generation with transformers or vLLM in server or colocate mode, reward functions, PEFT,
    accelerate / DeepSpeed, logging, checkpoints, the model card) is GRPOTrainer's, unchanged.

    Which reward decides correctness: `args.correctness_reward` (default: the first reward function), thresholded at
    `args.correctness_threshold`. Other reward functions are computed and logged, but do not enter the loss.

    Example:

    >>> from datasets import Dataset
    >>> from nft_trl import NFTTrainer, math_verifier
    >>> dataset = Dataset.from_dict({"prompt": ["What is 2 + 3? Put the answer in \\\\boxed{}."], "solution": ["5"]})
    >>> trainer = NFTTrainer("Qwen/Qwen2.5-Math-1.5B", reward_funcs=[math_verifier], train_dataset=dataset)
    >>> trainer.train()
    """

    _tag_names = ["trl", "nft"]
    _name = "NFT"
    _paper = {
        "title": "Bridging Supervised Learning and Reinforcement Learning in Math Reasoning",
        "id": "2505.18116",
        # docstyle-ignore
        "citation": textwrap.dedent("""\
            @article{chen2025bridging,
                title        = {{Bridging Supervised Learning and Reinforcement Learning in Math Reasoning}},
                author       = {Huayu Chen and Kaiwen Zheng and Qinsheng Zhang and Ganqu Cui and Yin Cui and Haotian Ye and Tsung-Yi Lin and Ming-Yu Liu and Jun Zhu and Haoxiang Wang},
                year         = 2025,
                eprint       = {arXiv:2505.18116},
            }"""),
    }

    def __init__(
        self, model, reward_funcs=None, args: NFTConfig | None = None, train_dataset=None, eval_dataset=None, **kwargs
    ):
        if args is None:
            model_name = model if isinstance(model, str) else get_config_model_id(model.config)
            args = NFTConfig(f"{model_name.split('/')[-1]}-NFT")
        elif not isinstance(args, NFTConfig):
            raise TypeError(
                f"NFTTrainer needs an NFTConfig, got {type(args).__name__}. Build it with NFTConfig(**your_args) "
                "(it accepts every GRPOConfig field)."
            )
        if reward_funcs is None:
            raise ValueError(
                "NFTTrainer needs a binary verifier as a reward function, e.g. reward_funcs=[nft_trl.math_verifier]: "
                "NFT splits each group into correct and wrong answers."
            )
        funcs = reward_funcs if isinstance(reward_funcs, list) else [reward_funcs]
        _check_reward_columns(funcs, {"train": train_dataset, "eval": eval_dataset}, args.remove_unused_columns)
        super().__init__(
            model, reward_funcs, args=args, train_dataset=train_dataset, eval_dataset=eval_dataset, **kwargs
        )
        self._verdict_index = self._resolve_verdict_index(args.correctness_reward)
        self._gathered_rewards: torch.Tensor | None = None
        self._warned_non_binary = False
        self._refill: ds.RefillStream | None = None
        if args.dynamic_sampling:
            if not hasattr(self.train_dataset, "__getitem__") or not hasattr(self.train_dataset, "__len__"):
                raise ValueError(
                    "dynamic_sampling draws extra prompts by index, so it needs a map-style training dataset (e.g. a "
                    "datasets.Dataset), not an IterableDataset. Load the dataset without streaming, or set "
                    "dynamic_sampling=False."
                )
            self._refill = ds.RefillStream(len(self.train_dataset), seed=args.seed, shuffle=self.shuffle_dataset)

    # ------------------------------------------------------------------ verdicts and group rates (per generation batch)
    def _resolve_verdict_index(self, name: str | None) -> int:
        if name is None:
            return 0
        if name not in self.reward_func_names:
            raise ValueError(
                f"correctness_reward={name!r} is not one of the reward functions {self.reward_func_names}. Set it to "
                "the name of the binary verifier (a function's __name__), or leave it None to use the first."
            )
        return self.reward_func_names.index(name)

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        self._gathered_rewards = rewards  # (global batch, num reward funcs), NaN where a function returned None
        return rewards

    def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        output, correct, valid = self._generate_and_judge(inputs)
        if self._refill is None or not self.model.training:
            return output
        return self._fill_with_mixed_groups(inputs, output, correct, valid)

    def _generate_and_judge(self, inputs: list[dict[str, Any]]) -> tuple[dict[str, Any], torch.Tensor, torch.Tensor]:
        """One generation round: TRL's batch plus the NFT fields, and the global verdicts `(correct, valid)`."""
        output = super()._generate_and_score_completions(inputs)
        rewards, self._gathered_rewards = self._gathered_rewards, None
        if rewards is None:
            raise RuntimeError(
                "NFTTrainer found no rewards for this batch: GRPOTrainer's _calculate_rewards was not called. A custom "
                "rollout path that bypasses it cannot be used with NFTTrainer."
            )
        mode = "train" if self.model.training else "eval"
        num_generations = self.num_generations if mode == "train" else self.num_generations_eval

        verdict = rewards[:, self._verdict_index]
        valid = ~torch.isnan(verdict)
        correct = valid & (torch.nan_to_num(verdict, nan=0.0) >= self.args.correctness_threshold)
        correct_rate = group_correct_rate(correct, valid, num_generations)
        self._check_binary(verdict[valid])

        # Slice to this process's rows exactly as GRPOTrainer slices the advantages.
        local = slice(self.accelerator.process_index * len(inputs), (self.accelerator.process_index + 1) * len(inputs))
        output["nft_correct"] = correct[local]
        output["nft_valid"] = valid[local]
        output["nft_correct_rate"] = correct_rate[local]

        # Metrics on the whole (gathered) generation batch: identical on every process, no collective needed.
        hits = correct.float().view(-1, num_generations).sum(1)
        counts = valid.float().view(-1, num_generations).sum(1)
        scored = counts > 0
        all_right = scored & (hits == counts)
        all_wrong = scored & (hits == 0)
        stats = torch.stack(
            [
                correct.float().sum() / valid.float().sum().clamp(min=1.0),
                (all_right | all_wrong).float().mean(),
                all_right.float().mean(),
                all_wrong.float().mean(),
                1.0 - valid.float().mean(),
            ]
        ).tolist()
        for name, value in zip(
            (
                "correct_rate",
                "degenerate_group_frac",
                "all_correct_group_frac",
                "all_wrong_group_frac",
                "unscored_frac",
            ),
            stats,
            strict=True,
        ):
            self._metrics[mode][f"nft/{name}"].append(value)
        return output, correct, valid

    # ------------------------------------------------------------------------------------------ dynamic sampling
    def _fill_with_mixed_groups(self, inputs, output, correct, valid):
        """Generate more rounds until the batch is full of mixed groups (see `nft_trl.dynamic_sampling`)."""
        num_generations = self.num_generations
        local_rows, process = len(inputs), self.accelerator.process_index
        target_rows = local_rows * self.accelerator.num_processes
        target_groups = target_rows // num_generations
        batches, mixed = [output], [ds.mixed_groups(correct, valid, num_generations)]
        extra_tokens = torch.zeros((), device=self.accelerator.device)
        # A round is `dynamic_sampling_multiplier` batches of questions (TRL's batch opens the first one); the mixed
        # groups are counted at the end of each round. Every process sees the same gathered verdicts, so every process
        # takes the same number of rounds.
        per_round = self.args.dynamic_sampling_multiplier
        max_batches = per_round * self.args.max_sampling_rounds
        while len(batches) % per_round or (
            sum(int(m.sum()) for m in mixed) < target_groups and len(batches) < max_batches
        ):
            prompts = self._refill.take(target_groups)
            global_rows = [index for index in prompts for _ in range(num_generations)]
            extra_inputs = [
                self.train_dataset[i] for i in global_rows[process * local_rows : (process + 1) * local_rows]
            ]
            extra, correct, valid = self._generate_and_judge(extra_inputs)
            batches.append(extra)
            mixed.append(ds.mixed_groups(correct, valid, num_generations))
            extra_tokens = extra_tokens + self.accelerator.gather(extra["completion_mask"].sum()).sum()

        selection = ds.select_groups(mixed, num_generations, target_rows)
        metrics = self._metrics["train"]
        metrics["nft/dynamic_sampling/rounds"].append(len(batches) / per_round)
        metrics["nft/dynamic_sampling/kept_group_frac"].append(selection.kept_groups / selection.generated_groups)
        metrics["nft/dynamic_sampling/batch_fill"].append(selection.kept_groups / target_groups)
        metrics["nft/dynamic_sampling/extra_generated_tokens"].append(float(extra_tokens))
        if selection.kept_groups < target_groups:
            logger.warning(
                f"Dynamic sampling reached max_sampling_rounds={self.args.max_sampling_rounds} with "
                f"{selection.kept_groups} of {target_groups} groups mixed; training on those, the rest of the batch is "
                "masked out. Raise max_sampling_rounds, or use easier/harder prompts if most groups are all right or "
                "all wrong."
            )
        if len(batches) == 1 and selection.kept_groups == target_groups:
            return output  # the first round was all mixed: nothing to move

        for batch in batches:
            ds.check_supported(batch)
        pad_token_id = self._tokenizer.pad_token_id
        gathered = [self._gather_round(batch, pad_token_id) for batch in batches]
        merged = ds.merge_rows(gathered, selection.rounds, selection.rows, pad_token_id)
        local = slice(process * local_rows, (process + 1) * local_rows)
        merged = {key: value[local] for key, value in merged.items()}
        keep = torch.tensor(selection.keep[local], device=self.accelerator.device)
        merged["nft_valid"] = merged["nft_valid"] & keep
        merged["completion_mask"] = merged["completion_mask"] * keep.unsqueeze(1).to(merged["completion_mask"].dtype)
        merged = ds.trim_padding(merged)
        loss_mask = merged["completion_mask"] * merged.get("tool_mask", 1)
        merged["num_items_in_batch"] = self.accelerator.gather(loss_mask.sum()).sum()
        return merged

    def _gather_round(self, batch: dict, pad_token_id: int) -> dict:
        """Every process's rows of one round, in TRL's gathered order (sequence fields padded to a common width)."""
        if self.accelerator.num_processes == 1:
            return {key: value for key, value in batch.items() if not ds.is_batch_key(key)}
        out = {}
        for key, value in batch.items():  # same keys in the same order on every process
            if ds.is_batch_key(key):
                continue
            if ds.is_sequence_key(key):
                side, pad = ds.padding_for(key, pad_token_id)
                value = self.accelerator.pad_across_processes(value, dim=1, pad_index=pad, pad_first=side == "left")
            is_bool = value.dtype == torch.bool
            gathered = self.accelerator.gather(value.to(torch.uint8) if is_bool else value)
            out[key] = gathered.bool() if is_bool else gathered
        return out

    def _save_checkpoint(self, model, trial):
        super()._save_checkpoint(model, trial)
        if self._refill is not None and self.args.should_save:
            folder = os.path.join(
                self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
            )
            with open(os.path.join(folder, DYNAMIC_SAMPLING_STATE), "w") as f:
                json.dump(self._refill.state_dict(), f)

    def _load_optimizer_and_scheduler(self, checkpoint):
        super()._load_optimizer_and_scheduler(checkpoint)
        if self._refill is not None and checkpoint is not None:
            path = os.path.join(checkpoint, DYNAMIC_SAMPLING_STATE)
            if os.path.exists(path):
                with open(path) as f:
                    self._refill.load_state_dict(json.load(f))

    def _check_binary(self, values: torch.Tensor) -> None:
        """Make a non-binary verdict reward loud: a threshold on continuous scores is an arbitrary split."""
        if self.args.non_binary_rewards == "ignore" or self._warned_non_binary or values.numel() == 0:
            return
        zero_one = ((values == 0) | (values == 1)).all()
        plus_minus = ((values == -1) | (values == 1)).all()
        if bool(zero_one | plus_minus):
            return
        name = self.reward_func_names[self._verdict_index]
        quantiles = torch.quantile(values.float(), torch.tensor([0.0, 0.5, 1.0], device=values.device)).tolist()
        message = (
            f"The reward {name!r} decides correctness in NFT but returned non-binary values (min {quantiles[0]:.4g}, "
            f"median {quantiles[1]:.4g}, max {quantiles[2]:.4g}, {(values >= self.args.correctness_threshold).float().mean().item():.1%} "
            f">= correctness_threshold={self.args.correctness_threshold}). NFT needs a binary verdict per answer: "
            "put a binary verifier (e.g. nft_trl.math_verifier) first in reward_funcs or name it with "
            "correctness_reward=..., or set correctness_threshold to a meaningful cut."
        )
        if self.args.non_binary_rewards == "error":
            raise ValueError(message)
        logger.warning(message)
        self._warned_non_binary = True

    # ------------------------------------------------------------------------------------------------------ the loss
    def _compute_loss(self, model, inputs):
        mode = "train" if self.model.training else "eval"
        prompt_ids, prompt_mask = inputs["prompt_ids"], inputs["prompt_mask"]
        completion_ids, completion_mask = inputs["completion_ids"], inputs["completion_mask"]
        input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
        attention_mask = torch.cat([prompt_mask, completion_mask], dim=1)
        mask = completion_mask if "tool_mask" not in inputs else completion_mask * inputs["tool_mask"]

        per_token_logps, entropies, aux_loss = self._get_per_token_logps_and_entropies(
            model,
            input_ids,
            attention_mask,
            completion_ids.size(1),
            compute_entropy=True,
            compute_aux_loss=self.aux_loss_enabled,
            **{key: inputs.get(key) for key in _MULTIMODAL_KEYS},
        )
        # On-policy TRL skips pi_old: it equals pi_theta in value, so the ratio is 1 with the gradient of log pi_theta.
        old_per_token_logps = inputs.get("old_per_token_logps")
        if old_per_token_logps is None:
            old_per_token_logps = per_token_logps.detach()

        per_token_loss, stats = nft_per_token_loss(
            per_token_logps,
            old_per_token_logps,
            inputs["nft_correct"],
            inputs["nft_correct_rate"],
            mask,
            valid=inputs["nft_valid"],
            negative_weight=self.args.negative_weight,
            negative_clip=self.args.negative_clip,
            prompt_weighting=self.args.prompt_weighting,
            max_log_ratio=self.args.max_log_ratio,
            ratio_level=self.importance_sampling_level,
            correct_rate_margin=self.args.correct_rate_margin,
        )
        if self.top_entropy_quantile < 1.0:
            per_token_loss = per_token_loss * self.get_high_entropy_mask(
                entropies, mask, 1 - self.top_entropy_quantile
            )
        if self.use_vllm and self.vllm_importance_sampling_correction:
            # Correct for the gap between vLLM's sampling distribution and the trainer's pi_old, as GRPO does.
            per_token_loss = per_token_loss * inputs["importance_sampling_ratio"]
        per_token_kl = None
        if self.beta != 0.0:
            delta = inputs["ref_per_token_logps"] - per_token_logps
            per_token_kl = torch.exp(delta) - delta - 1  # k3 estimator of KL(pi_theta || pi_ref), as in GRPO
            if self.args.use_bias_correction_kl:
                per_token_kl = per_token_kl * torch.exp(per_token_logps - old_per_token_logps)
            per_token_loss = per_token_loss + self.beta * per_token_kl

        loss, policy_loss = self._aggregate(per_token_loss, mask, inputs["num_items_in_batch"], mode)
        accumulation = self.current_gradient_accumulation_steps if mode == "train" else 1.0
        if self.aux_loss_enabled:
            loss = loss + self.router_aux_loss_coef * aux_loss / accumulation
            self._metrics[mode]["aux_loss"].append(self.accelerator.gather_for_metrics(aux_loss).mean().item())

        self._log_loss_metrics(mode, stats, policy_loss, entropies, mask, per_token_kl)
        return loss

    def _aggregate(self, per_token_loss, mask, num_items_in_batch, mode):
        """Reduce the per-token loss to a scalar with GRPOTrainer's normalisation for `loss_type`.

        Returns `(loss, policy_loss)`: the loss already divided for gradient accumulation (GRPOTrainer sets
        `loss_is_scaled_for_ga`), and the detached per-window value GRPO reports as `policy_loss`.
        """
        accumulation = self.current_gradient_accumulation_steps if mode == "train" else 1.0
        masked = per_token_loss * mask
        if self.loss_type == "grpo":
            loss = (masked.sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()
        elif self.loss_type == "bnpo":
            loss = masked.sum() / mask.sum().clamp(min=1.0)
        elif self.loss_type == "dr_grpo":
            loss = masked.sum() / (per_token_loss.size(0) * self.max_completion_length)
        elif self.loss_type == "dapo":
            # num_items_in_batch counts the tokens of the whole generation batch on all processes: bring it down to
            # one process's accumulation window. The result is already per window, so no further division.
            normalizer = num_items_in_batch.clamp(min=1.0) / self.accelerator.num_processes
            if mode == "train":
                normalizer = normalizer * self.current_gradient_accumulation_steps / self.args.steps_per_generation
            loss = masked.sum() / normalizer
            return loss, loss.detach()
        elif self.loss_type == "token_sum":
            # The NFT authors' reduction: the micro-batch's token sum over a constant, summed (not averaged) over the
            # accumulation window; data parallelism then averages over processes.
            loss = masked.sum() / self.args.token_sum_divisor
            return loss, loss.detach()
        else:  # NFTConfig rejects anything else; guard against a config mutated after construction
            raise ValueError(f"NFTTrainer does not support loss_type={self.loss_type!r}.")
        return loss / accumulation, loss.detach()

    def _log_loss_metrics(self, mode, stats, policy_loss, entropies, mask, per_token_kl):
        mask = mask.to(entropies.dtype)
        sums = [
            stats["positive_tokens"],
            stats["negative_tokens"],
            stats["clamped_tokens"],
            stats["ratio_sum"],
            stats["tokens"],
            (entropies.detach() * mask).sum(),
            mask.sum(),
            policy_loss.float(),
            torch.ones((), device=mask.device),
        ]
        if per_token_kl is not None:
            sums.append((per_token_kl.detach() * mask).sum())
        # One collective for every metric of the step; all processes make it in the same order.
        totals = self.accelerator.reduce(torch.stack([s.float() for s in sums]), reduction="sum").tolist()
        pos, neg, clamped, ratio_sum, tokens, entropy_sum, mask_sum, loss_sum, n_procs = totals[:9]
        metrics = self._metrics[mode]
        metrics["nft/positive_token_frac"].append(pos / max(tokens, 1.0))
        metrics["nft/negative_token_frac"].append(neg / max(tokens, 1.0))
        metrics["nft/clamped_frac"].append(clamped / neg if neg > 0 else 0.0)
        metrics["nft/ratio_mean"].append(ratio_sum / max(tokens, 1.0))
        metrics["nft/policy_loss"].append(loss_sum / n_procs)
        metrics["entropy"].append(entropy_sum / max(mask_sum, 1.0))
        if per_token_kl is not None:
            metrics["kl"].append(totals[9] / max(mask_sum, 1.0))


def _required_columns(func: Callable) -> list[str]:
    """Dataset columns a reward function requires: its parameters without default that TRL does not supply."""
    try:
        parameters = inspect.signature(func).parameters.values()
    except (TypeError, ValueError):  # builtins or C callables: nothing to check
        return []
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return [
        p.name
        for p in parameters
        if p.kind in kinds and p.default is inspect.Parameter.empty and p.name not in _TRL_REWARD_KWARGS
    ]


def _dataset_columns(dataset) -> Iterable[tuple[str, list[str]]]:
    if isinstance(dataset, dict):  # DatasetDict or a dict of eval datasets
        for name, split in dataset.items():
            for _, columns in _dataset_columns(split):
                yield name, columns
        return
    columns = getattr(dataset, "column_names", None)
    if columns is not None:
        yield "", list(columns)


def _check_reward_columns(reward_funcs: list, datasets: dict, remove_unused_columns: bool | None) -> None:
    """Fail at construction, naming the column, when a reward function needs a column the dataset lacks."""
    for func in reward_funcs:
        if isinstance(func, str | nn.Module) or not callable(func):
            continue
        required = _required_columns(func)
        if not required:
            continue
        func_name = getattr(func, "__name__", type(func).__name__)
        if remove_unused_columns:
            raise ValueError(
                f"Reward function {func_name!r} needs the dataset column(s) {required}, but remove_unused_columns=True "
                "drops every column except the prompt. Set remove_unused_columns=False (the NFTConfig default)."
            )
        for split_name, dataset in datasets.items():
            for sub_name, columns in _dataset_columns(dataset):
                missing = [column for column in required if column not in columns]
                if missing:
                    where = f"{split_name} dataset" + (f" {sub_name!r}" if sub_name else "")
                    raise ValueError(
                        f"Reward function {func_name!r} needs the dataset column(s) {missing}, which the {where} lacks "
                        f"(it has {columns}). Add the column (for math_verifier: the gold answer as 'solution') or "
                        "rename yours, e.g. dataset.rename_column('answer', 'solution')."
                    )
