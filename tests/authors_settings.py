"""The NFT authors' training settings, each with the file and line it was read from: the oracle of the fidelity test.

Source: the authors' public training code, github.com/NVlabs/NFT at commit ed8e5b0 (verl overrides): `train_7B.sh`,
`train_32B.sh`, `config/nft_trainer.yaml`, `dp_actor.py`, `ray_nft_trainer.py`, `verifier.py`, `fsdp_workers.py`.
Each setting names the recipe key it maps to (or a quantity derived from several keys, see `DERIVED`) and the recipes
it applies to. `tests/test_recipe_fidelity.py` reads every `config_paper` recipe and checks each value here, and that
the recipe writes it out (so that a change of a TRL default cannot change a paper recipe silently).
"""

from __future__ import annotations

from dataclasses import dataclass


PAPER_RECIPES = {
    "Qwen2.5-Math-7B/nft/config_paper": ("7B", "nft"),
    "Qwen2.5-Math-7B/rft/config_paper": ("7B", "rft"),
    "Qwen2.5-Math-7B/grpo/config_paper": ("7B", "grpo"),
    "Qwen2.5-Math-7B/dapo/config_paper": ("7B", "dapo"),
    "Qwen2.5-32B/nft/config_paper": ("32B", "nft"),
}
ALL = frozenset({"nft", "rft", "grpo", "dapo"})
NFT_FAMILY = frozenset({"nft", "rft"})  # trained by NFTTrainer (RFT = NFT without the wrong-answer term)


@dataclass(frozen=True)
class Setting:
    key: str  # recipe key, or a name in DERIVED
    value: object
    source: str  # file:line in the authors' repository (7B script first where both scripts agree)
    methods: frozenset = ALL
    models: tuple = ("7B", "32B")


SETTINGS: tuple[Setting, ...] = (
    # Batches: 512 questions x 16 answers per generation step, 32 questions per optimizer step, one pass.
    Setting("questions_per_generation_step", 512, "train_7B.sh:26 (train_prompt_bsz), train_32B.sh:22"),
    Setting("num_generations", 16, "train_7B.sh:29 (n_resp_per_prompt), train_32B.sh:25"),
    Setting("questions_per_optimizer_step", 32, "train_7B.sh:28 (train_prompt_mini_bsz), train_32B.sh:24"),
    Setting("optimizer_steps_per_generation_step", 16, "train_7B.sh:26,28 (512 / 32), ppo_epoch=1 at :54"),
    Setting("num_iterations", 1, "train_7B.sh:54 (ppo_epoch), train_32B.sh:48"),
    # Dynamic sampling: 3 x 512 questions per round, at most 10 rounds, mixed groups (acc std > 0) kept.
    Setting("dynamic_sampling", True, "train_7B.sh:23 (enable_filter_groups), ray_nft_trainer.py:1037", NFT_FAMILY),
    Setting("dynamic_sampling_multiplier", 3, "train_7B.sh:27 (gen_prompt_bsz = 3 x train_prompt_bsz)", NFT_FAMILY),
    Setting("max_sampling_rounds", 10, "train_7B.sh:25 (max_num_gen_batches), train_32B.sh:21", NFT_FAMILY),
    # Lengths.
    Setting("max_prompt_length", 512, "train_7B.sh:46", models=("7B",)),
    Setting("max_completion_length", 3584, "train_7B.sh:47 (4096 - 512)", models=("7B",)),
    Setting("max_prompt_length", 2048, "train_32B.sh:54", models=("32B",)),
    Setting("max_completion_length", 14336, "train_32B.sh:55", models=("32B",)),
    # Sampling.
    Setting("temperature", 1.0, "config/nft_trainer.yaml:88 (rollout temperature, not overridden)"),
    Setting("top_p", 1.0, "config/nft_trainer.yaml:90"),
    Setting("top_k", 0, "config/nft_trainer.yaml:89 (top_k -1: disabled; TRL spells it 0)"),
    # Optimizer.
    Setting("learning_rate", 1e-6, "train_7B.sh:107 (actor.optim.lr), train_32B.sh:114"),
    Setting("lr_scheduler_type", "constant_with_warmup", "fsdp_workers.py:306 (get_constant_schedule_with_warmup)"),
    Setting("warmup_generation_steps", 10, "train_7B.sh:108 (lr_warmup_steps, counted in generation steps)"),
    Setting("weight_decay", 0.1, "train_7B.sh:109, train_32B.sh:116"),
    Setting("max_grad_norm", 1.0, "train_7B.sh:114 (actor.grad_clip), dp_actor.py:183"),
    Setting("adam_beta1", 0.9, "fsdp_workers.py:295 (AdamW betas default (0.9, 0.999))"),
    Setting("adam_beta2", 0.999, "fsdp_workers.py:295"),
    Setting("adam_epsilon", 1e-8, "fsdp_workers.py:293 (AdamW, eps not passed: torch's 1e-8)"),
    Setting("generation_steps", 320, "paper, appendix (~320 generation steps; the scripts give total_epochs=100)"),
    # No KL, no entropy bonus; pi_old recomputed by the trainer, no correction for the sampler's probabilities.
    Setting("beta", 0.0, "train_7B.sh:13-14 (kl_coef, kl_loss_coef), train_32B.sh:13-14"),
    Setting("vllm_importance_sampling_correction", False, "ray_nft_trainer.py:1092-1094 (old log-probs recomputed)"),
    Setting("activation_checkpointing", True, "train_7B.sh:106 (enable_gradient_checkpointing)"),
    # The verdict.
    Setting("reward_funcs", ["dapo_strict_box"], "verifier.py:66-68 (math_dapo, strict_box_verify=True)"),
    # The NFT loss.
    Setting("negative_weight", 1.0, "train_7B.sh:52 (neg_weight), train_32B.sh:46", frozenset({"nft"})),
    Setting("negative_weight", 0.0, "train_7B.sh:52 (comment: 0.0 for RFT)", frozenset({"rft"})),
    Setting(
        "prompt_weighting", "incorrect_rate", "train_7B.sh:58 (normalize=1), dp_actor.py:345-346", frozenset({"nft"})
    ),
    Setting("prompt_weighting", "none", "paper: the RFT baseline weights every question 1", frozenset({"rft"})),
    Setting("negative_clip", 1.0, "train_7B.sh:56 (clamp_negative), dp_actor.py:342", NFT_FAMILY),
    Setting("importance_sampling_level", "token", "train_7B.sh:53 (ratio_type)", NFT_FAMILY),
    Setting("max_log_ratio", 10.0, "dp_actor.py:326 (clamp(max=10.0))", NFT_FAMILY),
    Setting("correct_rate_margin", 0.02, "dp_actor.py:336 (clamp(correct_rate, 0.02, 0.98))", NFT_FAMILY),
    Setting(
        "loss_type",
        "token_sum",
        "dp_actor.py:372-373 (token sum / 1000), :395-400 (no accumulation division)",
        NFT_FAMILY,
    ),
    Setting("token_sum_divisor", 1000.0, "dp_actor.py:372", NFT_FAMILY),
    # The DAPO baseline: the authors' neg_weight < 0 branch (PPO clip-higher, token-level loss).
    Setting("epsilon", 0.2, "train_7B.sh:16 (clip_ratio_low)", frozenset({"dapo"})),
    Setting("epsilon_high", 0.28, "train_7B.sh:17 (clip_ratio_high)", frozenset({"dapo"})),
    Setting("loss_type", "dapo", "train_7B.sh:31 (use_token_level_loss)", frozenset({"dapo"})),
)


def derived(recipe: dict) -> dict:
    """Quantities the authors state directly but a TRL recipe spells through several keys."""
    processes = recipe["num_processes"]
    k = recipe["num_generations"]
    per_device, accumulation = recipe["per_device_train_batch_size"], recipe["gradient_accumulation_steps"]
    steps_per_generation = recipe["steps_per_generation"]
    optimizer_steps = steps_per_generation * recipe["num_iterations"] // accumulation
    return {
        "questions_per_generation_step": per_device * processes * steps_per_generation // k,
        "questions_per_optimizer_step": per_device * processes * accumulation // k,
        "optimizer_steps_per_generation_step": optimizer_steps,
        "warmup_generation_steps": recipe["warmup_steps"] / optimizer_steps,
        "generation_steps": recipe["max_steps"] / optimizer_steps,
    }
