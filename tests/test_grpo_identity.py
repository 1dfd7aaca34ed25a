"""The paper's identity against TRL's own GRPOTrainer: on-policy, one plain-SGD step moves every parameter alike, for
every aggregation (`loss_type`) and every way TRL feeds a step (accumulation, steps per generation, iterations); and
the guard that no TRL path can produce a loss without NFT's `_compute_loss`."""

import math

import pytest
import torch
from conftest import cpu_training_args
from datasets import Dataset
from torch.testing import assert_close
from trl import GRPOConfig, GRPOTrainer

from nft_trl import NFTConfig, NFTTrainer
from nft_trl.embedded.model import build_tiny_model


NUM_GENERATIONS = 4
MAX_COMPLETION_LENGTH = 6


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
        max_completion_length=MAX_COMPLETION_LENGTH,
        max_steps=1,
        optim="sgd",
        learning_rate=0.5,
        lr_scheduler_type="constant",
        weight_decay=0.0,
        max_grad_norm=0.0,  # no clipping: the step is exactly -lr * gradient
    )
    return cpu_training_args(tmp_path / name, **{**settings, **overrides})


def one_step_delta(trainer_cls, config, tokenizer, reward, trainers=None):
    """Train `max_steps` steps from the seeded tiny model; the change of every parameter. Appends the trainer to
    `trainers` when given."""
    model = build_tiny_model(tokenizer, seed=0)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer = trainer_cls(
        model, reward_funcs=[reward], args=config, train_dataset=prompts(), processing_class=tokenizer
    )
    if trainers is not None:
        trainers.append(trainer)
    trainer.train()
    return {n: p.detach() - before[n] for n, p in trainer.model.named_parameters()}


class RecordingNFTTrainer(NFTTrainer):
    """Counts the generations and records, per micro-batch, whether TRL passed pi_old to the loss."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.generations, self.pi_old_passed = 0, []

    def _generate_and_score_completions(self, inputs):
        self.generations += 1
        return super()._generate_and_score_completions(inputs)

    def _compute_loss(self, model, inputs):
        self.pi_old_passed.append("old_per_token_logps" in inputs)
        return super()._compute_loss(model, inputs)


# How TRL feeds an optimizer step: rows per micro-batch, micro-batches per optimizer step (gradient_accumulation_steps,
# "ga"), micro-batches cut from one generation (steps_per_generation, "spg"; TRL's default is ga) and passes over each
# generation (num_iterations, "iter"). With each: the generations the first optimizer step makes, and whether TRL
# passes pi_old to the loss (it does unless ga is a multiple of spg x iter).
#
# Only the FIRST optimizer step is compared. It is on-policy in every schedule (its pi_old is the initial model), so the
# identity holds there. A schedule that reuses a generation in a later optimizer step (spg > ga, or iter > 1 with
# ga < spg x iter) is off-policy from the second step on, where NFT and GRPO differ by design (GRPO clips the ratio,
# NFT decays it; see test_off_policy_step_differs_from_grpo_only_through_the_ratio).
SCHEDULES = {
    # one generation, one micro-batch, one optimizer step
    "spg1-ga1": (dict(per_device_train_batch_size=8), 1, False),
    # spg == ga: one generation split over the step's micro-batches
    "spg2-ga2": (dict(per_device_train_batch_size=4, gradient_accumulation_steps=2), 1, False),
    # spg = 2 x ga: each generation feeds two optimizer steps; "dapo" divides by half the generation's tokens
    "spg2-ga1": (dict(per_device_train_batch_size=4, steps_per_generation=2), 1, True),
    "spg4-ga2": (dict(per_device_train_batch_size=4, gradient_accumulation_steps=2, steps_per_generation=4), 1, True),
    # ga = 2 x spg: two generations per optimizer step; "dapo" divides by twice one generation's tokens
    "spg1-ga2": (dict(per_device_train_batch_size=4, gradient_accumulation_steps=2, steps_per_generation=1), 2, False),
    # two passes over each generation: the second optimizer step reuses the first one's answers
    "spg1-ga1-iter2": (dict(per_device_train_batch_size=8, num_iterations=2), 1, True),
    "spg2-ga2-iter2": (dict(per_device_train_batch_size=4, gradient_accumulation_steps=2, num_iterations=2), 1, True),
    # both passes inside one optimizer step: its two micro-batches are the same generation, both on-policy
    "spg1-ga2-iter2": (
        dict(per_device_train_batch_size=4, gradient_accumulation_steps=2, steps_per_generation=1, num_iterations=2),
        1,
        False,
    ),
}

# The GRPO loss_type each NFT loss_type must reproduce: all of TRL 1.16's GRPO loss types that are aggregations of a
# per-token loss, plus the authors' "token_sum". ("luspo", "cispo", "sapo" and "vespo" are other GRPO objectives,
# which NFTConfig rejects.) Conditions: Dr. GRPO's advantages (scale_rewards="none") against NFT's default
# prompt_weighting="incorrect_rate" (the sqrt weighting matches std-scaled GRPO up to Bessel's factor: see below),
# negative_clip <= 1, and the same seed, so that both trainers shuffle the generation into the same micro-batches
# ("grpo" and "bnpo" normalise per micro-batch). "token_sum" matches Dr. GRPO up to a constant: token_sum_lr_factor.
GRPO_LOSS_TYPE = {"dr_grpo": "dr_grpo", "dapo": "dapo", "grpo": "grpo", "bnpo": "bnpo", "token_sum": "dr_grpo"}
TOKEN_SUM_DIVISOR = 1000.0


def token_sum_lr_factor(settings):
    """ "token_sum" divides each micro-batch's token sum by a constant and not by the accumulation steps; Dr. GRPO
    divides the same sum by rows x max_completion_length x accumulation steps. So an SGD step of the former with a
    learning rate this many times larger equals one of the latter, whatever the schedule."""
    rows = settings["per_device_train_batch_size"] * settings.get("gradient_accumulation_steps", 1)
    return TOKEN_SUM_DIVISOR / (rows * MAX_COMPLETION_LENGTH)


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("loss_type", GRPO_LOSS_TYPE)
def test_first_step_equals_grpo(tmp_path, tiny_tokenizer, scripted_generation, loss_type, schedule):
    settings, generations, pi_old_passed = SCHEDULES[schedule]
    nft_args = common_args(tmp_path, "nft", **settings)
    if loss_type == "token_sum":
        nft_args["learning_rate"] *= token_sum_lr_factor(settings)
    nft = NFTConfig(**nft_args, loss_type=loss_type, token_sum_divisor=TOKEN_SUM_DIVISOR)
    grpo_args = common_args(tmp_path, "grpo", loss_type=GRPO_LOSS_TYPE[loss_type], **settings)
    grpo = GRPOConfig(**grpo_args, scale_rewards="none")  # Dr. GRPO's advantages r - mean(r)
    trainers = []
    d_nft = one_step_delta(RecordingNFTTrainer, nft, tiny_tokenizer, first_token_mod3, trainers)
    d_grpo = one_step_delta(GRPOTrainer, grpo, tiny_tokenizer, first_token_mod3)

    # The schedule is the one described: its generations and TRL's on/off-policy branch.
    micro_batches = settings.get("gradient_accumulation_steps", 1)
    assert trainers[0].generations == generations
    assert trainers[0].pi_old_passed == [pi_old_passed] * micro_batches
    moved = 0
    for name in d_nft:
        # atol: two float32 spacings at 1.0, the size of the norm weights whose small updates are compared here
        assert_close(d_nft[name], d_grpo[name], rtol=1e-4, atol=2.5e-7, msg=lambda m, n=name: f"{n}: {m}")
        moved += bool(d_nft[name].abs().max() > 0)
    assert moved == len(d_nft), "every parameter must move in this step"


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


# ------------------------------------------------------------------------------------- no loss around NFT's own
def loss_without_nft(self, model, inputs, *args, **kwargs):
    """A stand-in for a TRL path that makes a loss without NFT's `_compute_loss` (as the Liger GRPO loss does)."""
    return sum(p.sum() for p in model.parameters()) * 0.0


@pytest.mark.parametrize("path", ["compute_loss", "training_step"])
def test_a_loss_made_without_nft_stops_training(tmp_path, tiny_tokenizer, scripted_generation, monkeypatch, path):
    """GRPOTrainer.compute_loss (or training_step, a path that would skip compute_loss altogether) returns a loss that
    NFT's _compute_loss did not make: the first micro-batch raises, naming the TRL version, and no parameter moves."""
    monkeypatch.setattr(GRPOTrainer, path, loss_without_nft)
    model = build_tiny_model(tiny_tokenizer, seed=0)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    nft = NFTConfig(**common_args(tmp_path, "nft"))
    trainer = NFTTrainer(
        model, reward_funcs=[first_token_mod3], args=nft, train_dataset=prompts(), processing_class=tiny_tokenizer
    )
    with pytest.raises(
        RuntimeError, match=rf"GRPOTrainer\.{path} of TRL \S+ produced a loss that NFT's _compute_loss"
    ):
        trainer.train()
    for name, param in trainer.model.named_parameters():
        assert torch.equal(param.detach(), before[name]), f"{name} moved"
