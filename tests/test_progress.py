"""`nft_trl.runtime.progress`: one compact line per log, and a loss that is 0 on-policy said to be 0 once, and why."""

import pytest
from conftest import cpu_training_args
from datasets import Dataset

from nft_trl import NFTConfig, NFTTrainer
from nft_trl.runtime.progress import CONSTANT_LOSS_NOTE, format_log, loss_is_constant


STEP_LOG = {
    "loss": 0.0123,
    "grad_norm": 0.6618,
    "learning_rate": 0.0002,
    "num_tokens": 33700.0,
    "completions/mean_length": 6.609,
    "completions/clipped_ratio": 0.0,
    "rewards/math_verifier/mean": 0.4688,
    "reward": 0.4688,
    "reward_std": 0.5002,
    "nft/correct_rate": 0.4688,
    "nft/degenerate_group_frac": 0.025,
    "nft/ratio_mean": 1.0,
    "entropy": 0.1734,
    "step_time": 2.893,
    "epoch": 0.02,
}


def test_a_step_is_one_line_of_the_numbers_that_say_whether_it_learns():
    assert format_log(STEP_LOG, 10, 40) == (
        "step 10/40  loss 0.0123  reward 0.469  correct 46.9%  mixed groups 98%  length 6.6  entropy 0.173  "
        "grad_norm 0.662  lr 2.0e-04  2.9 s/step"
    )
    assert "loss" not in format_log(STEP_LOG, 10, 40, show_loss=False)
    assert "truncated 25%" in format_log({**STEP_LOG, "completions/clipped_ratio": 0.25}, 10, 40)


def test_evaluation_end_of_training_and_other_logs():
    assert format_log({"eval_reward": 0.5, "eval_loss": 0.0, "epoch": 1.0}, 4, 8) == (
        "eval at step 4/8  loss 0.0000  reward 0.500"
    )
    done = format_log({"train_runtime": 105.2, "train_loss": 0.0, "total_flos": 0.0, "epoch": 0.1}, 40, 40, False)
    assert done == "training done: 40 steps in 105 s (2.6 s/step)"
    assert format_log({"train_runtime": 36.2}, 1, 1).startswith("training done: 1 step in 36 s")
    assert format_log({"benchmark/gsm8k": 0.25, "epoch": 1.0}, 3, 8) == "step 3/8  benchmark/gsm8k 0.25  epoch 1"


@pytest.mark.parametrize(
    ("settings", "constant"),
    [
        ({}, True),  # one optimizer step per generated batch
        ({"gradient_accumulation_steps": 2}, True),  # still one: TRL generates for the whole accumulation
        ({"steps_per_generation": 2}, False),  # two optimizer steps per batch: the second sees R != 1
        ({"num_iterations": 2}, False),
        ({"beta": 0.1}, False),  # the KL term has a value
        ({"negative_clip": 2.0}, False),  # log(max(1, eps)) = log 2 on wrong answers
        ({"offline": True}, False),  # pi_old is the stored answers' policy: R != 1 once the model moves
    ],
)
def test_when_the_loss_is_zero_by_construction(tmp_path, settings, constant):
    args = NFTConfig(**cpu_training_args(tmp_path, **settings))
    assert loss_is_constant(args) is constant


def scripted_verdict(completions, completion_ids, **kwargs):
    return [float(ids[0] % 3 == 0) for ids in completion_ids]  # mixed groups on scripted completions


def train(tmp_path, tiny_model, tiny_tokenizer, **settings):
    dataset = Dataset.from_dict({"prompt": [[{"role": "user", "content": f"What is {i} + {i}?"}] for i in range(8)]})
    args = NFTConfig(
        **cpu_training_args(tmp_path, max_completion_length=6, max_steps=2, learning_rate=0.05, **settings)
    )
    trainer = NFTTrainer(
        tiny_model, reward_funcs=scripted_verdict, args=args, train_dataset=dataset, processing_class=tiny_tokenizer
    )
    trainer.train()
    return trainer


@pytest.mark.parametrize("disable_tqdm", [True, False], ids=["printer", "progress bar"])
def test_on_policy_says_once_why_the_loss_is_zero(
    tmp_path, tiny_model, tiny_tokenizer, scripted_generation, capsys, disable_tqdm
):
    trainer = train(tmp_path, tiny_model, tiny_tokenizer, disable_tqdm=disable_tqdm)
    out = capsys.readouterr().out
    assert out.count(CONSTANT_LOSS_NOTE) == 1
    lines = [line for line in out.splitlines() if line.startswith(("step ", "training done"))]
    assert [line.split("  ")[0] for line in lines] == ["step 1/2", "step 2/2", lines[-1].split("  ")[0]]
    assert lines[-1].startswith("training done: 2 steps in") and "{" not in out
    assert not any(" loss " in line or "mean loss" in line for line in lines)
    # What the note says is true: the loss value is 0, its gradient is not.
    steps = [h for h in trainer.state.log_history if "grad_norm" in h]
    assert all(h["loss"] == 0.0 for h in steps) and all(h["grad_norm"] > 0 for h in steps)


def test_off_policy_shows_the_loss_and_no_note(tmp_path, tiny_model, tiny_tokenizer, scripted_generation, capsys):
    trainer = train(tmp_path, tiny_model, tiny_tokenizer, steps_per_generation=2, disable_tqdm=True)
    out = capsys.readouterr().out
    assert CONSTANT_LOSS_NOTE not in out
    assert all(" loss " in line for line in out.splitlines() if line.startswith("step "))
    losses = [h["loss"] for h in trainer.state.log_history if "grad_norm" in h]
    assert losses[0] == 0.0 and losses[1] != 0.0  # the second step trains on answers of the policy before it
