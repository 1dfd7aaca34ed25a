"""Tests of the countdown task: `nft_trl.rewards.countdown` (the verdict) and the embedded countdown task (its
problems, splits, dataset columns and a tiny build), and one NFT training step on it through TRL's reward columns."""

import dataclasses
from fractions import Fraction

import pytest
from conftest import cpu_training_args
from test_embedded import TINY

import nft_trl.embedded.task as task_module
from nft_trl import NFTConfig, NFTTrainer
from nft_trl.embedded import EmbeddedConfig, embedded_path, load_embedded_model, make_dataset, make_problems
from nft_trl.embedded.config import COUNTDOWN_PRESET
from nft_trl.embedded.model import shipped_version
from nft_trl.embedded.task import COUNTDOWN_TARGETS, task_reward
from nft_trl.rewards.columns import check_reward_columns
from nft_trl.rewards.countdown import ExpressionError, countdown_reward, countdown_verdict, evaluate_expression
from nft_trl.rewards.verifier import math_verifier


COUNTDOWN = EmbeddedConfig.countdown()


@pytest.mark.parametrize(
    ("text", "value", "numbers"),
    [
        ("3*5+7", 22, [3, 5, 7]),
        ("3 + 5 * 7", 38, [3, 5, 7]),  # precedence
        ("(3 + 5) * 7", 56, [3, 5, 7]),
        ("7-5-3", -1, [7, 5, 3]),  # left associative
        ("8/3*3", 8, [8, 3, 3]),  # exact, no float rounding
        ("7/2", Fraction(7, 2), [7, 2]),
        ("3 \\times 5 + 7", 22, [3, 5, 7]),
        ("3\\cdot 5 \\div 5", 3, [3, 5, 5]),
        ("3×5÷5", 3, [3, 5, 5]),
        ("((12))", 12, [12]),
    ],
)
def test_evaluate_expression(text, value, numbers):
    assert evaluate_expression(text) == (value, numbers)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "empty"),
        ("-3+5", "expected a number"),  # no unary minus
        ("3+", "ends too early"),
        ("3 5", "after the expression"),
        ("(3+5", "ends too early"),
        ("3+5)", "after the expression"),
        ("5/(3-3)", "division by zero"),
        ("3^2", "unexpected character"),
        ("x+1", "unexpected character"),
        ("3.5+1", "unexpected character"),
        ("1+" * 150 + "1", "longer than"),
    ],
)
def test_evaluate_expression_rejects(text, reason):
    with pytest.raises(ExpressionError, match=reason):
        evaluate_expression(text)


def test_countdown_verdict():
    numbers, target = [3, 5, 7], 22
    assert countdown_verdict("3*5+7", numbers, target)
    assert countdown_verdict("7+5*3", numbers, target)  # any order, any right plan
    assert not countdown_verdict("3*5-7", numbers, target)  # a different plan: wrong value
    assert not countdown_verdict("22", numbers, target)  # the bare target uses none of the numbers
    assert not countdown_verdict("3*5+7+0", numbers, target)  # an extra number
    assert not countdown_verdict("15+7", numbers, target)  # numbers not given
    assert not countdown_verdict("3*3+13", numbers, target)
    assert not countdown_verdict("3*5*1+7", numbers, target)
    assert not countdown_verdict(None, numbers, target)
    assert not countdown_verdict("3*(5+7", numbers, target)
    assert countdown_verdict("3*3+3", [3, 3, 3], 12)  # repeated numbers are a multiset
    assert not countdown_verdict("3*3+3+3", [3, 3, 3], 12)
    assert countdown_verdict("8/4*6", [8, 4, 6], 12)  # division, when the answer uses it, is exact


def test_countdown_reward_reads_the_last_box_and_trl_columns():
    completions = [
        "\\boxed{3*5+7}",
        "first \\boxed{3*5-7}, then \\boxed{7+3*5}",  # the last box counts
        "3*5+7",  # no box
        [{"role": "assistant", "content": "\\boxed{3*5+7}"}],  # conversational
        "\\boxed{3*5+7",  # unclosed
    ]
    n = len(completions)
    rewards = countdown_reward(completions, numbers=[[3, 5, 7]] * n, target=[22] * n, prompts=["p"] * n)
    assert rewards == [1.0, 1.0, 0.0, 1.0, 0.0]
    with pytest.raises(ValueError, match="'numbers'"):
        countdown_reward(["\\boxed{1}"], numbers=None, target=[1])
    with pytest.raises(ValueError, match="one value of each column"):
        countdown_reward(["\\boxed{1}", "\\boxed{1}"], numbers=[[1]], target=[1])


def test_reward_columns_are_checked_before_training():
    with pytest.raises(ValueError, match=r"\['numbers', 'target'\]"):
        check_reward_columns([countdown_reward], {"train": make_dataset("train", 4)}, remove_unused_columns=False)
    check_reward_columns([countdown_reward], {"train": make_dataset("train", 4, config=COUNTDOWN)}, False)


def test_countdown_problems_and_dataset():
    dataset = make_dataset("test", 200, seed=0, config=COUNTDOWN)
    assert dataset.column_names == ["prompt", "numbers", "target"]
    assert make_dataset("test", 200, seed=0, config=COUNTDOWN)["prompt"] == dataset["prompt"]  # deterministic
    low, high = COUNTDOWN_TARGETS
    for row in dataset:
        assert len(row["numbers"]) == 3 and all(1 <= n <= 19 for n in row["numbers"])
        assert low <= row["target"] <= high
        content = row["prompt"][0]["content"]
        assert content.startswith(f"Make {row['target']} from {', '.join(map(str, row['numbers']))} with + -, each")
    problems = make_problems("train", 300, seed=0, config=COUNTDOWN)
    # The warm-up's answer (the plan the target was made from) is right, by the task's own verdict.
    completions = [p.completion() for p in problems]
    rewards = task_reward(COUNTDOWN)(
        completions, numbers=[list(p.numbers) for p in problems], target=[p.target for p in problems]
    )
    assert rewards == [1.0] * len(problems)
    # Several plans reach most targets: the problem's identity is (numbers, target), not the plan.
    assert dataclasses.replace(problems[0], plan="other") == problems[0]
    with pytest.raises(ValueError, match="no worked form"):
        problems[0].completion(worked=True)
    assert task_reward(EmbeddedConfig()) is math_verifier


def test_countdown_splits_are_disjoint(monkeypatch):
    def keys(split, n, **kwargs):
        return {(tuple(r["numbers"]), r["target"]) for r in make_dataset(split, n, seed=0, config=COUNTDOWN, **kwargs)}

    test, validation = keys("test", 500), keys("validation", 400)
    train = keys("train", 4_000, exclude_validation=True)
    assert not test & validation and not test & train and not validation & train
    # About 26,000 problems in all, 10% held out: asking for more than the held-out region has fails loudly (after
    # 5 draws a row here instead of 50: the same error, a tenth of the draws).
    monkeypatch.setattr(task_module, "MAX_DRAWS_PER_ROW", 5)
    with pytest.raises(ValueError, match="distinct"):
        make_dataset("test", 4_000, config=COUNTDOWN)


def test_config_validation_and_hash():
    # The field added for the second task leaves the existing builds' names (the shipped one's included) unchanged.
    assert EmbeddedConfig().version_hash() == shipped_version()
    assert COUNTDOWN.version_hash() != EmbeddedConfig().version_hash()
    assert COUNTDOWN.version_hash() != EmbeddedConfig.countdown(seed=2).version_hash()
    with pytest.raises(ValueError, match="task must be one of"):
        EmbeddedConfig(task="sudoku")
    with pytest.raises(ValueError, match="worked_answer"):
        EmbeddedConfig.countdown(worked_answer=True)
    with pytest.raises(ValueError, match="2 to 4 numbers"):
        EmbeddedConfig.countdown(num_operands=5)
    with pytest.raises(ValueError, match="min_operand"):
        EmbeddedConfig(min_operand=50, max_operand=10)
    with pytest.raises(ValueError, match="subset of"):
        EmbeddedConfig.countdown(countdown_operators="+/")


def test_countdown_operators_choose_the_plans_and_the_prompt():
    config = EmbeddedConfig.countdown(countdown_operators="+-*", max_operand=9)
    assert config.version_hash() != COUNTDOWN.version_hash()
    problems = make_problems("train", 200, seed=0, config=config)
    assert any("*" in p.plan for p in problems) and any("-" in p.plan for p in problems)
    assert max(max(p.numbers) for p in problems) <= 9
    assert "with + - *, each number once" in problems[0].prompt()[0]["content"]
    assert all("*" not in p.plan for p in make_problems("train", 200, seed=0, config=COUNTDOWN))
    rewards = countdown_reward(
        [p.completion() for p in problems], [list(p.numbers) for p in problems], [p.target for p in problems]
    )
    assert rewards == [1.0] * len(problems)


@pytest.fixture(scope="module")
def tiny_countdown(tmp_path_factory):
    # TINY's small vocabulary makes countdown prompts of 124-128 tokens: a longer context leaves room for the answers.
    config = dataclasses.replace(TINY, **COUNTDOWN_PRESET, max_position_embeddings=256)
    return config, embedded_path(cache_dir=tmp_path_factory.mktemp("cache"), config=config)


def test_tiny_countdown_build_and_one_nft_step(tiny_countdown, tmp_path):
    config, path = tiny_countdown
    model, tokenizer = load_embedded_model(cache_dir=path.parent.parent, config=config)
    # The task's tokenizer saw the countdown prompts: the operators are in its vocabulary's training text.
    text = tokenizer.apply_chat_template(make_dataset("test", 1, config=config)[0]["prompt"], tokenize=False)
    assert tokenizer.decode(tokenizer(text)["input_ids"]) == text
    args = NFTConfig(**cpu_training_args(tmp_path, max_steps=1, max_completion_length=8))
    trainer = NFTTrainer(
        model,
        reward_funcs=[task_reward(config)],
        args=args,
        train_dataset=make_dataset("train", 16, config=config),
        processing_class=tokenizer,
    )
    trainer.train()
    logged = [h for h in trainer.state.log_history if "reward" in h]
    assert logged and 0.0 <= logged[0]["reward"] <= 1.0


def test_recipes_name_it():
    from nft_trl.cli.train import resolve_reward_funcs

    assert resolve_reward_funcs(["countdown_reward"]) == [countdown_reward]
