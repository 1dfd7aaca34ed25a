"""`NFTTrainer`: Negative-aware Fine-Tuning as a thin subclass of TRL's `GRPOTrainer`."""

from __future__ import annotations

import logging
import os
import textwrap
from typing import Any

import torch
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from trl import GRPOTrainer
from trl.trainer.utils import get_config_model_id

from ..rewards.columns import check_reward_columns
from ..runtime.hub import check_model_source
from ..runtime.progress import quiet_third_party_noise, use_compact_logs
from .config import NFTConfig
from .dynamic_sampling import DynamicSampler
from .loss import aggregate_loss, group_correct_rate, loss_metric_sums, loss_metrics, nft_per_token_loss
from .verdicts import NoSignalMonitor, Verdicts, group_stats, judge, non_binary_message, verdict_index


logger = logging.getLogger(__name__)

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
      sliced per process exactly as TRL slices `advantages`; with `dynamic_sampling`, `DynamicSampler` adds rounds
      until the batch is full of mixed groups; `NoSignalMonitor` warns when whole batches have nothing to learn;
    - `_save_checkpoint` / `_load_optimizer_and_scheduler`: also save and restore the refill stream's position;
    - `_compute_loss`: the NFT loss (`nft_trl.algorithm.loss.nft_per_token_loss`) in place of GRPO's, aggregated per
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
        quiet_third_party_noise()
        if isinstance(model, os.PathLike):
            model = os.fspath(model)  # a local folder given as a Path
        if args is None:
            model_name = model if isinstance(model, str) else get_config_model_id(model.config)
            args = NFTConfig(f"{model_name.rstrip('/').split('/')[-1]}-NFT")
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
        # A model this machine cannot load stops here, in one sentence that says what to pass instead, rather than
        # after transformers' Hub retries.
        check_model_source(model, args.model_init_kwargs)
        funcs = reward_funcs if isinstance(reward_funcs, list) else [reward_funcs]
        check_reward_columns(funcs, {"train": train_dataset, "eval": eval_dataset}, args.remove_unused_columns)
        super().__init__(
            model, reward_funcs, args=args, train_dataset=train_dataset, eval_dataset=eval_dataset, **kwargs
        )
        self._verdict_index = verdict_index(self.reward_func_names, args.correctness_reward)
        self._gathered_rewards: torch.Tensor | None = None
        self._warned_non_binary = False
        self._sampler = DynamicSampler(self) if args.dynamic_sampling else None
        self._no_signal = NoSignalMonitor(args.warn_no_signal_steps)
        use_compact_logs(self)  # one short line per log on the console; report_to still gets every metric

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        self._gathered_rewards = rewards  # (global batch, num reward funcs), NaN where a function returned None
        return rewards

    def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        output, verdicts = self._generate_and_judge(inputs)
        if not self.model.training:
            return output
        if self._sampler is not None:
            output, verdicts = self._sampler.fill(inputs, output, verdicts)
        warning = self._no_signal.observe(verdicts, self.num_generations)
        if warning is not None:
            logger.warning(warning)
        return output

    def _generate_and_judge(self, inputs: list[dict[str, Any]]) -> tuple[dict[str, Any], Verdicts]:
        """One generation round: TRL's batch plus the NFT fields, and the verdicts of the whole (gathered) batch."""
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
        correct, valid = judge(verdict, self.args.correctness_threshold)
        self._check_binary(verdict[valid])
        correct_rate = group_correct_rate(correct, valid, num_generations)

        # Slice to this process's rows exactly as GRPOTrainer slices the advantages.
        local = slice(self.accelerator.process_index * len(inputs), (self.accelerator.process_index + 1) * len(inputs))
        output["nft_correct"], output["nft_valid"] = correct[local], valid[local]
        output["nft_correct_rate"] = correct_rate[local]

        ids, mask = output["completion_ids"], output["completion_mask"].bool()
        ended = (torch.isin(ids, torch.tensor(self.eos_token_ids, device=ids.device)) & mask).any(dim=1)
        truncated = self.accelerator.gather((~ended).to(torch.uint8)).bool()
        # Metrics on the whole (gathered) generation batch: identical on every process, no collective needed.
        for name, value in group_stats(correct, valid, num_generations).items():
            self._metrics[mode][f"nft/{name}"].append(value)
        return output, Verdicts(correct, valid, truncated)

    def _check_binary(self, values: torch.Tensor) -> None:
        """Make a non-binary verdict reward loud: a threshold on continuous scores is an arbitrary split."""
        if self.args.non_binary_rewards == "ignore" or self._warned_non_binary:
            return
        name = self.reward_func_names[self._verdict_index]
        message = non_binary_message(values, name, self.args.correctness_threshold)
        if message is None:
            return
        if self.args.non_binary_rewards == "error":
            raise ValueError(message)
        logger.warning(message)
        self._warned_non_binary = True

    def _save_checkpoint(self, model, trial):
        super()._save_checkpoint(model, trial)
        if self._sampler is not None and self.args.should_save:
            checkpoint = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
            self._sampler.save(os.path.join(self._get_output_dir(trial=trial), checkpoint))

    def _load_optimizer_and_scheduler(self, checkpoint):
        super()._load_optimizer_and_scheduler(checkpoint)
        if self._sampler is not None and checkpoint is not None:
            self._sampler.load(checkpoint)

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

        accumulation = self.current_gradient_accumulation_steps if mode == "train" else 1
        loss, policy_loss = aggregate_loss(
            per_token_loss,
            mask,
            self.loss_type,
            max_completion_length=self.max_completion_length,
            num_items_in_batch=inputs["num_items_in_batch"],
            num_processes=self.accelerator.num_processes,
            accumulation_steps=accumulation,
            steps_per_generation=self.args.steps_per_generation if mode == "train" else 1,
            token_sum_divisor=self.args.token_sum_divisor,
        )
        if self.aux_loss_enabled:
            loss = loss + self.router_aux_loss_coef * aux_loss / accumulation
            self._metrics[mode]["aux_loss"].append(self.accelerator.gather_for_metrics(aux_loss).mean().item())

        self._log_loss_metrics(mode, stats, policy_loss, entropies, mask, per_token_kl)
        return loss

    def _log_loss_metrics(self, mode, stats, policy_loss, entropies, mask, per_token_kl):
        # One collective for every metric of the step; all processes make it in the same order.
        sums = self.accelerator.reduce(loss_metric_sums(stats, policy_loss, entropies, mask, per_token_kl), "sum")
        for name, value in loss_metrics(sums).items():
            self._metrics[mode][name].append(value)
