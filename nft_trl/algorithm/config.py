"""`NFTConfig`: the hyper-parameters of Negative-aware Fine-Tuning, on top of TRL's `GRPOConfig`."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Literal

import torch
from transformers.utils import is_torch_bf16_gpu_available, is_torch_npu_available, is_torch_xpu_available
from trl import GRPOConfig

from .loss import LOSS_TYPES, PROMPT_WEIGHTINGS


logger = logging.getLogger(__name__)

#: The constant the NFT authors' verl code divides each micro-batch's token sum by (`loss_type="token_sum"`).
AUTHORS_TOKEN_SUM_DIVISOR = 1000.0


@dataclass
class NFTConfig(GRPOConfig):
    r"""
    Configuration class for [`NFTTrainer`], Negative-aware Fine-Tuning ([paper](https://huggingface.co/papers/2505.18116)).

    `NFTConfig` inherits every parameter of [`~trl.GRPOConfig`] (generation, vLLM, batching, logging, ...). Only the
    parameters below are new or get a new default. NFT replaces GRPO's clipped advantage objective by a likelihood
    loss on correct answers plus a likelihood-ratio loss on wrong ones, weighted by the question's correctness rate
    `r_hat`. The defaults follow the paper's recipe: `eps = 1`, `w = 1 - r_hat`, token-level ratio, log-ratio cap 10,
    no KL, no entropy bonus, sum of token losses over a constant (`loss_type="dr_grpo"`).

    GRPO options that reuse their meaning: `importance_sampling_level` (`"token"` ratio `R_t` or `"sequence"` ratio of
    the whole answer), `loss_type` (aggregation of the per-token loss: `"dr_grpo"`, `"dapo"`, `"grpo"`, `"bnpo"`,
    normalised exactly as in GRPOTrainer), `beta` (KL to a reference model, added to the per-token loss as in GRPO;
    0 by default and in the paper), `mask_truncated_completions`, `top_entropy_quantile`, the vLLM importance-sampling
    correction. GRPO options without a meaning in NFT are rejected when set: `epsilon`/`epsilon_high` are unused
    (NFT has no trust-region clip), and `delta`, `off_policy_mask_threshold`, `entropy_coef`, `use_adaptive_entropy`
    raise, as does `use_liger_kernel` (some TRL releases route it to Liger's GRPO loss, around NFT's). The advantage options (`scale_rewards`, `multi_objective_aggregation`, `reward_weights`) only affect the
    advantages that TRL still computes and logs; they do not enter the NFT loss.

    Parameters:
        negative_weight (`float`, *optional*, defaults to `1.0`):
            Weight of the loss on wrong answers. `1.0` is NFT; `0.0` is RFT (rejection fine-tuning: maximum likelihood
            on correct answers only; the paper's RFT baseline also uses `prompt_weighting="none"`).
        negative_clip (`float`, *optional*, defaults to `1.0`):
            `eps` of the paper: the floor of the value of `x_t = (1 - r_hat * R_t) / (1 - r_hat)` in the wrong-answer
            term (a straight-through clamp: the gradient of `x_t` is kept). With `eps <= 1` NFT's on-policy gradient
            equals GRPO's; the paper ablates 0.1 to 4.0.
        prompt_weighting (`str`, *optional*, defaults to `"incorrect_rate"`):
            Weight `w(q)` of each question: `"incorrect_rate"` (`1 - r_hat`, on-policy equal to Dr. GRPO),
            `"sqrt_incorrect_odds"` (`sqrt((1 - r_hat) / r_hat)`, on-policy equal to GRPO's std-normalised
            advantages) or `"none"` (`1`).
        max_log_ratio (`float` or `None`, *optional*, defaults to `10.0`):
            Cap on the log-ratio `log R` before it enters the loss (`R = exp(min(log R, cap))`), as in the authors'
            code. `None` disables the cap.
        correctness_reward (`str` or `None`, *optional*, defaults to `None`):
            Name of the reward function whose value decides whether an answer is correct (the name under which TRL
            logs it, `rewards/<name>/mean`; for a function, its `__name__`). `None` uses the first reward function.
            Other reward functions are still computed and logged but do not enter the NFT loss.
        correctness_threshold (`float`, *optional*, defaults to `0.5`):
            An answer is correct when the verdict reward is `>= correctness_threshold`. 0.5 splits both {0, 1} and
            the DAPO convention {-1, 1}.
        non_binary_rewards (`str`, *optional*, defaults to `"warn"`):
            What to do when the verdict reward returns values other than {0, 1} or {-1, 1} (e.g. a reward model's
            continuous scores, which a threshold turns into an arbitrary split): `"warn"` (once, with the observed
            distribution), `"error"` or `"ignore"`.
        dynamic_sampling (`bool`, *optional*, defaults to `False`):
            DAPO-style dynamic sampling: keep only groups whose answers are mixed (`0 < r_hat < 1`), drawing more
            prompts and generating again until the generation batch is full, up to `max_sampling_rounds` rounds. All
            processes make the same number of rounds; see `nft_trl.algorithm.dynamic_sampling`.
        max_sampling_rounds (`int`, *optional*, defaults to `10`):
            Generation rounds per generation step at most (the first included). At the cap the batch is completed
            with degenerate groups marked invalid (no loss, no tokens in the normalisers) and a warning is logged.
        dynamic_sampling_multiplier (`int`, *optional*, defaults to `1`):
            With `dynamic_sampling`: each generation round generates this many times the questions of the generation
            batch (TRL's batch first, then `multiplier - 1` batches from the refill stream), and the mixed groups are
            counted only at the end of a round. The authors generate 3 x 512 questions per round (verl's
            `gen_batch_size = 3 * train_batch_size`) for up to 10 rounds.
        correct_rate_margin (`float`, *optional*, defaults to `0.0`):
            Clamp `r_hat` into `[margin, 1 - margin]` inside the loss. `0.0` is NFT's definition; the authors' code
            uses 0.02 (it never binds with 16 answers and dynamic sampling; without dynamic sampling it gives
            all-wrong and all-right groups a small gradient where NFT's definition gives none).
        loss_type (`str`, *optional*, defaults to `"dr_grpo"`):
            Aggregation of the per-token loss. As GRPOTrainer normalises: `"dr_grpo"` (sum over tokens divided by
            `batch * max_completion_length`, NFT's constant normaliser), `"dapo"` (by the number of tokens in the
            global accumulated batch), `"grpo"` (per-sequence mean, then mean over sequences), `"bnpo"` (by the
            number of tokens in the local batch). And the NFT authors' reduction, `"token_sum"`: each micro-batch's
            token sum divided by `token_sum_divisor`, without dividing by the gradient-accumulation steps (so an
            optimizer step's gradient is the sum over all its tokens / (divisor x processes), as data-parallel
            training averages over processes).
        token_sum_divisor (`float`, *optional*, defaults to `1000.0`):
            The constant of `loss_type="token_sum"` (the authors' `/ 1000`).
        warn_no_signal_steps (`int`, *optional*, defaults to `5`):
            Warn (once) when this many generation steps in a row hold no question with both a right and a wrong
            answer: NFT's gradient is then zero. The warning gives the correct rate, the share of truncated answers
            and the likely fixes, and tells a verdict reward that judged no answer (returned `None`: a gold-answer or
            verdict problem) from answers all wrong or all right. `0` disables it.
        offline (`bool`, *optional*, defaults to `False`):
            Train on judged answers instead of generating: the train dataset holds one row per answer (`prompt`,
            `completion`, a verdict `correct` or `reward`; format in `nft_trl.offline.dataset`). `r_hat` is each
            group's correct rate over the whole dataset; `pi_old` is the stored `completion_logps`, or the starting
            model's log-probabilities computed once before the first step (which assumes the starting model generated
            the answers). `num_generations` is unused (groups come from the data).
    """

    negative_weight: float = field(
        default=1.0,
        metadata={
            "help": "Weight of the loss on wrong answers. 1.0 is NFT; 0.0 is RFT (maximum likelihood on correct "
            "answers only)."
        },
    )
    negative_clip: float = field(
        default=1.0,
        metadata={
            "help": "eps: floor of the value of x = (1 - r_hat * R) / (1 - r_hat) in the wrong-answer term "
            "(straight-through: the gradient of x is kept). With eps <= 1 the on-policy gradient equals GRPO's."
        },
    )
    prompt_weighting: Literal["incorrect_rate", "sqrt_incorrect_odds", "none"] = field(
        default="incorrect_rate",
        metadata={
            "help": "Weight w(q) of each question: 'incorrect_rate' (1 - r_hat, the paper's default, on-policy equal "
            "to Dr. GRPO), 'sqrt_incorrect_odds' (sqrt((1 - r_hat) / r_hat), on-policy equal to GRPO) or 'none' (1).",
            "choices": list(PROMPT_WEIGHTINGS),
        },
    )
    max_log_ratio: float | None = field(
        default=10.0,
        metadata={
            "help": "Cap on log R before it enters the loss (R = exp(min(log R, cap))), as in the authors' code. "
            "None disables it."
        },
    )
    correctness_reward: str | None = field(
        default=None,
        metadata={
            "help": "Name of the reward function that decides correctness (as logged under rewards/<name>/mean; "
            "for a function, its __name__). None uses the first reward function."
        },
    )
    correctness_threshold: float = field(
        default=0.5,
        metadata={
            "help": "An answer is correct when the verdict reward is >= this value (0.5 splits {0,1} and {-1,1})."
        },
    )
    non_binary_rewards: Literal["warn", "error", "ignore"] = field(
        default="warn",
        metadata={
            "help": "What to do when the verdict reward returns values other than {0,1} or {-1,1}: 'warn' (once, "
            "with the observed distribution), 'error' or 'ignore'.",
            "choices": ["warn", "error", "ignore"],
        },
    )
    dynamic_sampling: bool = field(
        default=False,
        metadata={
            "help": "DAPO-style dynamic sampling: drop groups whose answers are all right or all wrong, draw more "
            "prompts and generate again until the generation batch is full of mixed groups (at most "
            "max_sampling_rounds rounds per generation step). On in the paper's recipes."
        },
    )
    max_sampling_rounds: int = field(
        default=10,
        metadata={
            "help": "With dynamic_sampling: generation rounds per generation step at most, the first included. At the "
            "cap the batch is completed with degenerate groups that carry no loss, and a warning is logged."
        },
    )
    dynamic_sampling_multiplier: int = field(
        default=1,
        metadata={
            "help": "With dynamic_sampling: each generation round generates this many times the generation batch's "
            "questions; mixed groups are counted at the end of a round. The authors: 3 (verl's gen_batch_size = "
            "3 x train_batch_size), with max_sampling_rounds 10."
        },
    )
    correct_rate_margin: float = field(
        default=0.0,
        metadata={
            "help": "Clamp r_hat into [margin, 1 - margin] inside the loss. 0.0 is NFT's definition; the authors' "
            "code uses 0.02 (all-wrong and all-right groups then get a small gradient instead of none)."
        },
    )
    loss_type: str = field(
        default="dr_grpo",
        metadata={
            "help": "Aggregation of the per-token loss: as in GRPOTrainer 'dr_grpo' (sum over batch x "
            "max_completion_length), 'dapo' (tokens in the global accumulated batch), 'grpo' (per-sequence mean), "
            "'bnpo' (tokens in the local batch); or the authors' 'token_sum' (each micro-batch's token sum / "
            "token_sum_divisor, not divided by gradient-accumulation steps).",
            "choices": list(LOSS_TYPES),
        },
    )
    token_sum_divisor: float = field(
        default=AUTHORS_TOKEN_SUM_DIVISOR,
        metadata={"help": "The constant of loss_type='token_sum' (the authors' verl code: 1000)."},
    )

    offline: bool = field(
        default=False,
        metadata={
            "help": "Train on answers already generated and judged (the train dataset holds one row per answer: "
            "prompt, completion, a verdict 'correct' or 'reward'; see docs/offline.md) instead of generating. r_hat "
            "is each group's correct rate over the whole dataset; pi_old is the stored 'completion_logps', or the "
            "starting model's log-probabilities computed once before the first step."
        },
    )
    warn_no_signal_steps: int = field(
        default=5,
        metadata={
            "help": "Warn once when this many generation steps in a row hold no question with both a right and a "
            "wrong answer (nothing to learn), with the correct rate, truncated share and likely fixes; a verdict "
            "reward that judged no answer (returned None) is called a gold-answer or verdict problem. 0 disables."
        },
    )

    # TRL's default (True) for this deprecated alias makes transformers 5 warn on every config; unset, it means
    # TRL's default without the warning. Set explicitly, it keeps transformers' deprecation warning.
    gradient_checkpointing: bool | None = field(
        default=None,
        metadata={
            "help": "Alias of activation_checkpointing (deprecated by transformers 5). Unset: checkpointing on, as in "
            "TRL, except without an accelerator (use_cpu, or none present), where it would only cost time."
        },
    )

    def __post_init__(self):
        accelerator = not self.use_cpu and _accelerator_available()
        if self.gradient_checkpointing is None:
            # Checkpointing saves accelerator memory by recomputing activations; on a CPU it only slows training.
            if not hasattr(self, "activation_checkpointing"):  # transformers < 5: the only name
                self.gradient_checkpointing = accelerator
            elif self.activation_checkpointing is None:
                self.activation_checkpointing = accelerator
        if not accelerator:
            # Pinned memory only speeds up copies to an accelerator; without one, torch warns at every data loader.
            self.dataloader_pin_memory = False
        if self.bf16 is None and not self.fp16 and not self.use_cpu and not _bf16_accelerator_available():
            # GRPOConfig turns bf16 on by default, which fails on a machine without a bf16 accelerator. Fall back to
            # fp32 there so that `NFTTrainer(model, reward_funcs=[...])` runs as written on a laptop.
            logger.info(
                "No bf16-capable accelerator found: training in fp32 (set bf16=True with use_cpu=True to force)."
            )
            self.bf16 = False
        try:
            super().__post_init__()
        except ValueError as err:
            if self.offline and "num_generations" in str(err):
                raise ValueError(
                    f"{err} With offline=True num_generations is not used (groups come from the judged answers), but "
                    "GRPOConfig still checks it: set num_generations=2, or another divisor of the generation batch."
                ) from err
            raise
        if self.loss_type not in LOSS_TYPES:
            raise ValueError(
                f"NFTConfig does not support loss_type={self.loss_type!r}. Supported values are "
                f"{', '.join(repr(t) for t in LOSS_TYPES)} (they only choose how the per-token NFT loss is "
                "aggregated); the other GRPO loss types are GRPO objectives, not aggregations."
            )
        if self.prompt_weighting not in PROMPT_WEIGHTINGS:
            raise ValueError(
                f"prompt_weighting={self.prompt_weighting!r} is not supported; use one of "
                f"{', '.join(repr(w) for w in PROMPT_WEIGHTINGS)}."
            )
        if self.importance_sampling_level not in ("token", "sequence"):
            raise ValueError(
                f"importance_sampling_level={self.importance_sampling_level!r} is not supported; use 'token' (the "
                "paper's per-token ratio) or 'sequence' (the ratio of the whole answer)."
            )
        if self.negative_weight < 0:
            raise ValueError(
                f"negative_weight must be >= 0 (1.0 for NFT, 0.0 for RFT), got {self.negative_weight}. A negative "
                "weight would reward the model for making wrong answers more likely."
            )
        if self.negative_clip <= 0:
            raise ValueError(
                f"negative_clip (eps) must be > 0, got {self.negative_clip}: the wrong-answer term takes log(max(x, "
                "eps)). The paper uses 1.0 and ablates 0.1 to 4.0."
            )
        if self.max_log_ratio is not None and self.max_log_ratio <= 0:
            raise ValueError(
                f"max_log_ratio must be > 0 or None (no cap), got {self.max_log_ratio}. The authors' code uses 10."
            )
        if self.non_binary_rewards not in ("warn", "error", "ignore"):
            raise ValueError(
                f"non_binary_rewards={self.non_binary_rewards!r} is not supported; use 'warn', 'error' or 'ignore'."
            )
        if self.max_sampling_rounds < 1:
            raise ValueError(
                f"max_sampling_rounds must be >= 1 (the first generation round included), got {self.max_sampling_rounds}."
            )
        if self.dynamic_sampling_multiplier < 1:
            raise ValueError(
                f"dynamic_sampling_multiplier must be >= 1 (1 generates one batch of questions per round), got "
                f"{self.dynamic_sampling_multiplier}."
            )
        if not 0.0 <= self.correct_rate_margin < 0.5:
            raise ValueError(
                f"correct_rate_margin must be in [0, 0.5), got {self.correct_rate_margin}: r_hat is clamped into "
                "[margin, 1 - margin]. 0.0 is NFT's definition, the authors' code uses 0.02."
            )
        if self.warn_no_signal_steps < 0:
            raise ValueError(
                f"warn_no_signal_steps must be >= 0 (0 disables the warning), got {self.warn_no_signal_steps}."
            )
        if self.token_sum_divisor <= 0:
            raise ValueError(f"token_sum_divisor must be > 0, got {self.token_sum_divisor} (the authors use 1000).")
        if self.use_liger_kernel:
            raise ValueError(
                "NFTConfig does not support `use_liger_kernel=True`: some TRL releases send it to Liger's fused GRPO "
                "loss, which replaces NFT's loss with GRPO's (TRL 1.16 uses it only for Liger's layer kernels and "
                "deprecates it). Set use_liger_kernel=False; for fused kernels, load the model with the Hub kernels: "
                'model_init_kwargs={"use_kernels": True}.'
            )
        if self.offline and self.dynamic_sampling:
            raise ValueError(
                "offline=True trains on stored answers, so there is nothing to refill: set dynamic_sampling=False "
                "(filter the judged answers to mixed groups beforehand instead)."
            )
        if self.offline and self.use_vllm:
            raise ValueError("offline=True generates nothing: set use_vllm=False.")
        if self.beta < 0:
            raise ValueError(f"beta (KL coefficient) must be >= 0, got {self.beta}. NFT's recipe uses 0.")
        # GRPO options whose meaning does not carry over to NFT: reject rather than silently ignore.
        rejected = {
            "delta": (self.delta is not None, "NFT has no clipped ratio to cap; leave delta=None"),
            "off_policy_mask_threshold": (
                self.off_policy_mask_threshold is not None,
                "the off-policy sequence mask keys on the advantage sign, which NFT does not use; leave it None",
            ),
            "entropy_coef": (
                self.entropy_coef != 0.0,
                "NFT trains without an entropy bonus (the paper shows its entropy rises on its own); set entropy_coef=0",
            ),
            "use_adaptive_entropy": (
                self.use_adaptive_entropy,
                "NFT trains without an entropy bonus; set use_adaptive_entropy=False",
            ),
        }
        for name, (is_set, why) in rejected.items():
            if is_set:
                raise ValueError(f"NFTConfig does not support `{name}`: {why}.")


def _accelerator_available() -> bool:
    return torch.cuda.is_available() or is_torch_xpu_available() or is_torch_npu_available()


def _bf16_accelerator_available() -> bool:
    return is_torch_bf16_gpu_available() or is_torch_xpu_available() or is_torch_npu_available()
