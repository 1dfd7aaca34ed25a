"""The paper's identity against TRL's own GRPOTrainer: on-policy, one plain-SGD step moves every parameter alike."""

import math

import pytest
from conftest import cpu_training_args
from datasets import Dataset
from torch.testing import assert_close
from trl import GRPOConfig, GRPOTrainer

from nft_trl import NFTConfig, NFTTrainer
from nft_trl.embedded.model import build_tiny_model


NUM_GENERATIONS = 4


def first_token_mod3(completions, completion_ids, **kwargs):
    """Binary verdict of a scripted completion; gives groups with r_hat 0.5 and 0.25 (see conftest's script)."""
    return [float(ids[0] % 3 == 0) for ids in completion_ids]


def first_token_even(completions, completion_ids, **kwargs):
    """Binary verdict of a scripted completion; every group has r_hat = 0.5."""
    return [float(ids[0] % 2 == 0) for ids in completion_ids]


def prompts():
    return Dataset.from_dict({"prompt": [[{"role": "user", "content": f"What is {i} + {i}?"}] for i in range(8)]})


def common_args(tmp_path, name, **overrides):
    settings = dict(
        num_generations=NUM_GENERATIONS,
        max_completion_length=6,
        max_steps=1,
        optim="sgd",
        learning_rate=0.5,
        lr_scheduler_type="constant",
        weight_decay=0.0,
        max_grad_norm=0.0,  # no clipping: the step is exactly -lr * gradient
    )
    return cpu_training_args(tmp_path / name, **{**settings, **overrides})


def one_step_delta(trainer_cls, config, tokenizer, reward):
    model = build_tiny_model(tokenizer, seed=0)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer = trainer_cls(
        model, reward_funcs=[reward], args=config, train_dataset=prompts(), processing_class=tokenizer
    )
    trainer.train()
    return {n: p.detach() - before[n] for n, p in trainer.model.named_parameters()}


@pytest.mark.parametrize("loss_type", ["dr_grpo", "dapo", "grpo", "bnpo"])
def test_on_policy_step_equals_grpo(tmp_path, tiny_tokenizer, scripted_generation, loss_type):
    nft = NFTConfig(**common_args(tmp_path, "nft", loss_type=loss_type), prompt_weighting="incorrect_rate")
    grpo = GRPOConfig(**common_args(tmp_path, "grpo", loss_type=loss_type), scale_rewards="none")
    d_nft = one_step_delta(NFTTrainer, nft, tiny_tokenizer, first_token_mod3)
    d_grpo = one_step_delta(GRPOTrainer, grpo, tiny_tokenizer, first_token_mod3)
    moved = 0
    for name in d_nft:
        assert_close(d_nft[name], d_grpo[name], rtol=1e-4, atol=1e-7, msg=lambda m, n=name: f"{n}: {m}")
        moved += bool(d_nft[name].abs().max() > 0)
    assert moved == len(d_nft), "every parameter must move in this step"


@pytest.mark.parametrize("loss_type", ["dapo", "grpo"])
def test_on_policy_step_with_gradient_accumulation_equals_grpo(
    tmp_path, tiny_tokenizer, scripted_generation, loss_type
):
    """Two micro-batches per optimizer step, one generation per step: the accumulation scaling must match GRPO's."""
    overrides = dict(loss_type=loss_type, per_device_train_batch_size=4, gradient_accumulation_steps=2)
    nft = NFTConfig(**common_args(tmp_path, "nft", **overrides))
    grpo = GRPOConfig(**common_args(tmp_path, "grpo", **overrides), scale_rewards="none")
    d_nft = one_step_delta(NFTTrainer, nft, tiny_tokenizer, first_token_mod3)
    d_grpo = one_step_delta(GRPOTrainer, grpo, tiny_tokenizer, first_token_mod3)
    for name in d_nft:
        assert_close(d_nft[name], d_grpo[name], rtol=1e-4, atol=1e-7)


def test_on_policy_sqrt_odds_equals_grpo_std_up_to_bessel(tmp_path, tiny_tokenizer, scripted_generation):
    nft = NFTConfig(**common_args(tmp_path, "nft"), prompt_weighting="sqrt_incorrect_odds")
    grpo = GRPOConfig(**common_args(tmp_path, "grpo", loss_type="dr_grpo"), scale_rewards="group")
    d_nft = one_step_delta(NFTTrainer, nft, tiny_tokenizer, first_token_even)
    d_grpo = one_step_delta(GRPOTrainer, grpo, tiny_tokenizer, first_token_even)
    # Every group has r_hat = 1/2: NFT divides by the population std p = 1/2, GRPO by the sample std plus 1e-4.
    k, r_hat = NUM_GENERATIONS, 0.5
    population_std = math.sqrt(r_hat * (1 - r_hat))
    sample_std = population_std * math.sqrt(k / (k - 1))
    factor = population_std / (sample_std + 1e-4)  # ~ sqrt((K - 1) / K)
    assert factor == pytest.approx(math.sqrt((k - 1) / k), rel=1e-3)
    for name in d_nft:
        assert_close(d_grpo[name], factor * d_nft[name], rtol=1e-4, atol=1e-7)


def test_off_policy_step_differs_from_grpo_only_through_the_ratio(tmp_path, tiny_tokenizer, scripted_generation):
    """Two optimizer steps per generation (off-policy second step): NFT's gradient then follows the closed form."""
    overrides = dict(per_device_train_batch_size=4, steps_per_generation=2, max_steps=2, num_iterations=1)
    nft = NFTConfig(**common_args(tmp_path, "nft", **overrides))
    model = build_tiny_model(tiny_tokenizer, seed=0)
    trainer = NFTTrainer(
        model, reward_funcs=[first_token_mod3], args=nft, train_dataset=prompts(), processing_class=tiny_tokenizer
    )
    seen = []
    original = trainer._compute_loss

    def spy(model, inputs):
        seen.append("old_per_token_logps" in inputs)
        return original(model, inputs)

    trainer._compute_loss = spy
    trainer.train()
    assert seen == [True, True], "off-policy training must carry pi_old to the loss"
    ratio_means = [h["nft/ratio_mean"] for h in trainer.state.log_history if "nft/ratio_mean" in h]
    assert ratio_means[0] == pytest.approx(1.0, abs=1e-6)
    assert ratio_means[1] != pytest.approx(1.0, abs=1e-6)


def test_token_sum_is_the_authors_reduction(tmp_path, tiny_tokenizer, scripted_generation):
    """`loss_type="token_sum"`: the step's token sum over a constant, not divided by the accumulation steps.

    Dr. GRPO divides the same sum by rows x max_completion_length (8 x 6 = 48 here, over two micro-batches), so on
    one on-policy SGD step the authors' reduction with a learning rate 1000 / 48 times larger moves every parameter
    exactly as Dr. GRPO does.
    """
    overrides = dict(per_device_train_batch_size=4, gradient_accumulation_steps=2)
    divisor, dr_grpo_normaliser = 1000.0, 8 * 6
    nft_args = common_args(tmp_path, "nft", **overrides)
    nft_args["learning_rate"] *= divisor / dr_grpo_normaliser
    nft = NFTConfig(**nft_args, loss_type="token_sum", token_sum_divisor=divisor)
    grpo = GRPOConfig(**common_args(tmp_path, "grpo", loss_type="dr_grpo", **overrides), scale_rewards="none")
    d_nft = one_step_delta(NFTTrainer, nft, tiny_tokenizer, first_token_mod3)
    d_grpo = one_step_delta(GRPOTrainer, grpo, tiny_tokenizer, first_token_mod3)
    for name in d_nft:
        assert_close(d_nft[name], d_grpo[name], rtol=1e-4, atol=1e-7)
