"""`NFTTrainer`: Negative-aware Fine-Tuning as a thin subclass of TRL's `GRPOTrainer`."""

from __future__ import annotations

import logging
import os
import textwrap
from typing import Any

import torch
import trl
from trl import GRPOTrainer
from trl.trainer.utils import get_config_model_id

from ..offline.batch import OfflineBatches
from ..offline.dataset import PREPARED_COLUMNS, is_judged, prepare_judged, stored_verdict
from ..offline.settings import check_generation_settings
from ..rewards.checked import checked_rewards
from ..runtime.hub import check_model_source
from ..runtime.inputs import check_before_model, check_prompt_lengths
from ..runtime.progress import quiet_third_party_noise, use_compact_logs
from ..runtime.resilient import ResilientTrainerMixin
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


class NFTTrainer(ResilientTrainerMixin, GRPOTrainer):
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
    - `_save_run_state` / `_load_optimizer_and_scheduler`: also save and restore the refill stream's position;
    - `_compute_loss`: the NFT loss (`nft_trl.algorithm.loss.nft_per_token_loss`) in place of GRPO's, aggregated per
      `loss_type` exactly as GRPO aggregates, with GRPO's gradient-accumulation scaling, vLLM importance-sampling
      correction, `tool_mask`, `mask_truncated_completions`, `top_entropy_quantile`, KL (`beta > 0`), MoE aux loss
      and multimodal inputs;
    - `compute_loss` / `training_step`: check that every loss was made by NFT's `_compute_loss`, so that no TRL
      branch (such as the Liger GRPO loss that some releases take for `use_liger_kernel=True`) trains GRPO instead.

    Checkpoints are crash-consistent and SIGTERM / SIGINT save one and stop (`nft_trl.runtime.resilient`, mixed in):
    `resume_from_checkpoint=True` resumes from the newest complete checkpoint.

    Each callable reward function is wrapped once (`nft_trl.rewards.checked`) so that one that raises or returns a
    non-number, NaN, inf or the wrong number of rewards fails naming itself and the row; its name, signature and
    sync/async kind are TRL's. `None` stays the way to say "cannot judge".

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
        if args.offline:
            train_dataset, reward_funcs = _offline_inputs(args, reward_funcs, train_dataset, eval_dataset)
        elif is_judged(train_dataset):
            logger.warning(
                "The train dataset holds judged answers (a 'completion' and a verdict column), but offline=False: "
                "NFT generates new answers from its prompts and ignores the stored ones. Set offline=True to train on "
                "them."
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
        # Datasets, reward columns, output folder: fail before the model loads; the run lock lives as long as we do.
        self._run_lock = check_before_model(args, funcs, train_dataset, eval_dataset)
        super().__init__(
            model, reward_funcs, args=args, train_dataset=train_dataset, eval_dataset=eval_dataset, **kwargs
        )
        check_prompt_lengths(self)  # prompt + answer within the model's context (a sample; see runtime.inputs)
        # A reward that raises or returns a non-number, NaN or inf fails naming itself and the row (rewards/checked).
        self.reward_funcs = checked_rewards(self.reward_funcs, self.reward_func_names)
        self._verdict_index = verdict_index(self.reward_func_names, args.correctness_reward)
        self._gathered_rewards: torch.Tensor | None = None
        self._warned_non_binary = False
        self._sampler = DynamicSampler(self) if args.dynamic_sampling else None
        self._offline = OfflineBatches(self) if args.offline else None
        self._no_signal = NoSignalMonitor(args.warn_no_signal_steps, self.reward_func_names[self._verdict_index])
        self._nft_losses = 0  # losses made by NFT's _compute_loss; see _check_loss_is_nft
        use_compact_logs(self)  # one short line per log on the console; report_to still gets every metric

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        self._gathered_rewards = rewards  # (global batch, num reward funcs), NaN where a function returned None
        return rewards

    def _get_train_sampler(self, dataset=None):
        if self._offline is None:
            return super()._get_train_sampler(dataset)
        return self._offline.sampler(self.train_dataset if dataset is None else dataset)

    def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        if self._offline is not None:
            return self._offline.build(inputs)  # stored answers: the same batch, without generating or judging
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

    def _save_run_state(self, checkpoint_dir):
        if self._sampler is not None:
            self._sampler.save(checkpoint_dir)
        if self._offline is not None:
            self._offline.save(checkpoint_dir)

    def _load_optimizer_and_scheduler(self, checkpoint):
        super()._load_optimizer_and_scheduler(checkpoint)
        if self._sampler is not None and checkpoint is not None:
            self._sampler.load(checkpoint)
        if self._offline is not None and checkpoint is not None:
            self._offline.load(checkpoint)

    # ------------------------------------------------------------------------------------------------------ the loss
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        made = self._nft_losses
        loss = super().compute_loss(
            model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch
        )
        self._check_loss_is_nft(made, "GRPOTrainer.compute_loss")
        return loss

    def training_step(self, model, inputs, num_items_in_batch=None):
        made = self._nft_losses
        loss = super().training_step(model, inputs, num_items_in_batch)
        self._check_loss_is_nft(made, "GRPOTrainer.training_step")  # also catches a path that skips compute_loss
        return loss

    def _check_loss_is_nft(self, made: int, where: str) -> None:
        """Raise unless NFT's `_compute_loss` made exactly one loss since the count was `made`.

        GRPOTrainer may route the loss elsewhere: some TRL releases send `use_liger_kernel=True` to Liger's fused GRPO
        loss (`compute_liger_loss`), which never calls `_compute_loss`, and a later release may add another branch.
        Such a path would train with GRPO's loss under NFT's name without a word; counting the losses NFT made catches
        any of them on the first micro-batch, before the optimizer steps.
        """
        count = self._nft_losses - made
        if count != 1:
            raise RuntimeError(
                f"NFTTrainer: {where} of TRL {trl.__version__} produced a loss that NFT's _compute_loss did not make "
                f"(it ran {count} times for this micro-batch instead of once). This TRL routes the loss through "
                "another path (e.g. the Liger GRPO loss of use_liger_kernel=True), which would train with GRPO's loss "
                "instead of NFT's. Turn off the option that selects that path, or install the TRL release nft-trl "
                "supports (trl>=1.16,<1.17)."
            )

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
        self._nft_losses += 1
        return loss

    def _log_loss_metrics(self, mode, stats, policy_loss, entropies, mask, per_token_kl):
        # One collective for every metric of the step; all processes make it in the same order.
        sums = self.accelerator.reduce(loss_metric_sums(stats, policy_loss, entropies, mask, per_token_kl), "sum")
        for name, value in loss_metrics(sums).items():
            self._metrics[mode][name].append(value)


def _offline_inputs(args: NFTConfig, reward_funcs, train_dataset, eval_dataset):
    """With `offline=True`: the prepared judged answers and the reward that reads their stored verdict."""
    if reward_funcs is not None:
        raise ValueError(
            "offline=True trains on stored verdicts ('correct' or 'reward' columns of the judged answers) and calls no "
            "reward function: leave reward_funcs out, and judge the answers when building the dataset."
        )
    if eval_dataset is not None:
        raise ValueError(
            "offline=True has no eval_dataset (it would be generated from); evaluate with nft-trl eval or "
            "nft_trl.evaluation.BenchmarkEvalCallback."
        )
    if train_dataset is None or not hasattr(train_dataset, "column_names") or not hasattr(train_dataset, "select"):
        raise ValueError("offline=True needs a datasets.Dataset of judged answers (see nft_trl.offline.load_judged).")
    if not set(PREPARED_COLUMNS) <= set(train_dataset.column_names):
        train_dataset = prepare_judged(train_dataset, args.correctness_threshold)
    # Answers that record how they were generated (load_judged): stored pi_old at the trainer's temperature, none cut.
    check_generation_settings(train_dataset, args.temperature, args.max_completion_length)
    return train_dataset, [stored_verdict]
