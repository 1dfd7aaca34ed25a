"""Verdicts: thresholding, mixed groups, the non-binary check, and the loud "nothing to learn" warning."""

import logging

import pytest
import torch
from test_nft_trainer import config, make_trainer

from nft_trl.algorithm.verdicts import (
    NoSignalMonitor,
    Verdicts,
    group_stats,
    judge,
    mixed_groups,
    non_binary_message,
    verdict_index,
)


def verdicts(correct, truncated=None, valid=None):
    correct = torch.tensor(correct, dtype=torch.bool)
    valid = torch.ones_like(correct) if valid is None else torch.tensor(valid, dtype=torch.bool)
    truncated = torch.zeros_like(correct) if truncated is None else torch.tensor(truncated, dtype=torch.bool)
    return Verdicts(correct, valid, truncated)


def test_judge_thresholds_and_marks_unscored():
    correct, valid = judge(torch.tensor([1.0, 0.0, float("nan"), -1.0, 0.7]), threshold=0.5)
    assert correct.tolist() == [True, False, False, False, True]
    assert valid.tolist() == [True, True, False, True, True]


def test_mixed_groups_and_stats():
    v = verdicts([1, 0, 1, 1, 0, 0, 0, 0], valid=[1, 1, 1, 1, 1, 1, 0, 0])
    assert mixed_groups(v.correct, v.valid, 2).tolist() == [True, False, False, False]
    stats = group_stats(v.correct, v.valid, 2)
    assert stats["correct_rate"] == pytest.approx(3 / 6)
    assert stats["all_correct_group_frac"] == 0.25 and stats["all_wrong_group_frac"] == 0.25
    assert stats["unscored_frac"] == 0.25


def test_verdict_index_and_non_binary_message():
    assert verdict_index(["a", "b"], None) == 0 and verdict_index(["a", "b"], "b") == 1
    with pytest.raises(ValueError, match="not one of the reward functions"):
        verdict_index(["a"], "c")
    assert non_binary_message(torch.tensor([0.0, 1.0]), "v", 0.5) is None
    assert non_binary_message(torch.tensor([-1.0, 1.0]), "v", 0.5) is None
    assert "non-binary values (min 0.1" in non_binary_message(torch.tensor([0.1, 0.9]), "v", 0.5)


def test_monitor_warns_once_after_patience_steps_in_a_row():
    monitor = NoSignalMonitor(patience=3, reward_name="verifier")
    all_wrong_truncated = verdicts([0] * 8, truncated=[1] * 6 + [0] * 2)
    assert monitor.observe(all_wrong_truncated, 4) is None
    assert monitor.observe(verdicts([1, 0, 0, 0, 0, 0, 0, 0]), 4) is None  # a mixed group resets the count
    assert monitor.observe(all_wrong_truncated, 4) is None
    assert monitor.observe(all_wrong_truncated, 4) is None
    message = monitor.observe(all_wrong_truncated, 4)
    assert message is not None
    assert "for 3 generation steps in a row" in message and "every scored answer was wrong" in message
    one = NoSignalMonitor(patience=1, reward_name="verifier").observe(all_wrong_truncated, 4)
    assert one.startswith("Nothing to learn: in a generation step no question had both")
    assert "verdicts of 'verifier': correct rate 0.0%, 75.0% of the answers truncated" in message
    assert "over 24 scored answers" in message and "longer max_completion_length" in message
    assert (
        "easier prompts" in message and "check that 'verifier' reads" in message and "dynamic_sampling=True" in message
    )
    assert "cannot judge" not in message and "harder prompts" not in message
    assert monitor.observe(all_wrong_truncated, 4) is None, "warns once"
    all_right = verdicts([1] * 8)
    message = NoSignalMonitor(patience=1, reward_name="verifier").observe(all_right, 4)
    assert "every scored answer was right" in message and "verdicts of 'verifier': correct rate 100.0%" in message
    assert "harder prompts" in message and "easier prompts" not in message
    assert "longer max_completion_length" not in message
    assert NoSignalMonitor(patience=0, reward_name="verifier").observe(all_right, 4) is None, "0 disables"


def test_monitor_tells_unscored_from_too_hard_and_too_easy():
    unscored = verdicts([0] * 8, valid=[0] * 8, truncated=[1] * 8)
    monitor = NoSignalMonitor(patience=2, reward_name="math_verifier")
    assert monitor.observe(unscored, 4) is None
    message = monitor.observe(unscored, 4)
    assert "'math_verifier' returned None (cannot judge) for all 16 answers" in message
    assert "gold-answer or verdict problem, not the prompts' difficulty" in message and "gold column" in message
    for advice in ("easier prompts", "harder prompts", "max_completion_length", "correct rate"):
        assert advice not in message, advice

    # Some groups all right, the others unscored: the unscored share is reported beside the cause.
    half = verdicts([1, 1, 1, 1, 0, 0, 0, 0], valid=[1, 1, 1, 1, 0, 0, 0, 0])
    message = NoSignalMonitor(patience=1, reward_name="math_verifier").observe(half, 4)
    assert "every scored answer was right" in message and "over 4 scored answers" in message
    assert "'math_verifier' returned None (cannot judge) for 4 of the 8 answers" in message

    # All right and all wrong groups side by side: neither too hard nor too easy as a whole.
    split = verdicts([1, 1, 1, 1, 0, 0, 0, 0])
    message = NoSignalMonitor(patience=1, reward_name="math_verifier").observe(split, 4)
    assert "each question's answers were all right or all wrong" in message and "correct rate 50.0%" in message
    assert "more num_generations" in message and "cannot judge" not in message


def test_trainer_warns_when_nothing_can_be_learned(tmp_path, tiny_model, tiny_tokenizer, scripted_generation, caplog):
    def always_wrong(completions, **kwargs):
        return [0.0] * len(completions)

    args = config(tmp_path, max_steps=3, warn_no_signal_steps=2)
    trainer = make_trainer(tiny_model, tiny_tokenizer, args, reward=always_wrong)
    with caplog.at_level(logging.WARNING, logger="nft_trl.algorithm"):
        trainer.train()
    warnings = [r.getMessage() for r in caplog.records if "Nothing to learn" in r.getMessage()]
    assert len(warnings) == 1
    assert (
        "for 2 generation steps in a row" in warnings[0]
        and "verdicts of 'always_wrong': correct rate 0.0%" in warnings[0]
    )
    grad_norms = [h["grad_norm"] for h in trainer.state.log_history if "grad_norm" in h]
    assert grad_norms and all(g == 0 for g in grad_norms), "the warning is right: nothing moved"
