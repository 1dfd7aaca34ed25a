"""A faulty reward function fails naming itself: raises, non-numbers, NaN, inf, wrong length (rewards/checked.py)."""

import asyncio
import functools
import inspect
import math
import re
from decimal import Decimal
from fractions import Fraction

import numpy as np
import pytest
import torch
from test_nft_trainer import config, make_trainer, math_dataset

from nft_trl.rewards.checked import (
    RewardFunctionError,
    check_reward_values,
    checked_reward,
    prompt_start,
    value_problem,
)


PROMPTS = [[{"role": "user", "content": f"What is {i} + {i}?"}] for i in range(8)]
PROMPT = r"\(prompt 'What is \d \+ \d\?'\)"  # a row's prompt in a message (TRL's sampler shuffles the rows)


# ------------------------------------------------------------------------------------------------- pure functions
def test_valid_values_pass():
    for value in (None, True, False, 0, 1, 1.0, -1.0, Fraction(1, 2), np.float32(0.5), np.int64(1), np.bool_(True)):
        assert value_problem(value) is None, value
    assert value_problem(torch.tensor(1.0)) is None and value_problem(torch.tensor(True)) is None
    check_reward_values("ok", [1.0, 0, True, None, np.float64(0.5), 1, 0.0, -1], PROMPTS)
    check_reward_values("ok", torch.tensor([1.0, 0.0] * 4), PROMPTS)  # a tensor: TRL iterates it too
    check_reward_values("ok", (1.0,) * 8, PROMPTS)


@pytest.mark.parametrize(
    "value, problem",
    [
        ("1", "a str ('1')"),
        ([1.0], "a list ([1.0])"),
        ({"score": 1}, "a dict"),
        (Decimal("1"), "a Decimal"),
        (1j, "a complex"),
        (torch.tensor([1.0]), "a Tensor of shape (1,)"),
        (np.array(1.0), "a ndarray of shape ()"),  # torch.tensor cannot read a 0-dim array inside a list
        (float("nan"), "NaN"),
        (float("inf"), "inf"),
        (-math.inf, "-inf"),
        (np.float32("nan"), "NaN"),
    ],
)
def test_invalid_value_names_reward_row_and_type(value, problem):
    values = [1.0, 0.0, 1.0, value, 0.0, 0.0, 1.0, 0.0]
    error = ValueError if problem in ("NaN", "inf", "-inf") else TypeError
    with pytest.raises(error) as info:
        check_reward_values("my_reward", values, PROMPTS)
    message = str(info.value)
    assert message.startswith(f"The reward function 'my_reward' returned {problem}")
    assert "for row 3 of 8 (prompt 'What is 3 + 3?')" in message
    assert "other row" not in message  # one bad value: no count
    assert "None for a completion the reward cannot judge" in message


def test_count_of_invalid_values_and_nan_advice():
    with pytest.raises(ValueError) as info:
        check_reward_values("judge", [float("nan")] * 8, PROMPTS)
    message = str(info.value)
    assert (
        "'judge' returned NaN for row 0 of 8" in message
        and "row 0 of 8 (prompt 'What is 0 + 0?') and 7 other rows." in message
    )
    assert "Return None" in message and "does not treat it as None" in message


@pytest.mark.parametrize("values", [1.0, "10101010", {"a": 1}, {1.0, 0.0}, None])
def test_not_a_list_names_reward(values):
    with pytest.raises(TypeError, match=r"^The reward function 'judge' returned a \w+ .*one reward per completion"):
        check_reward_values("judge", values, PROMPTS)


def test_wrong_length_names_reward():
    with pytest.raises(ValueError, match="'judge' returned 7 rewards for 8 completions"):
        check_reward_values("judge", [1.0] * 7, PROMPTS)


def test_prompt_start_reads_plain_conversational_and_multimodal_prompts():
    assert prompt_start("What is\n2 + 3?") == "What is 2 + 3?"
    assert prompt_start([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]) == "Hi"
    parts = [{"type": "image"}, {"type": "text", "text": "Describe it."}]
    assert prompt_start([{"role": "user", "content": parts}]) == "Describe it."
    long = prompt_start("x" * 500)
    assert len(long) == 60 and long.endswith("...")


def test_wrapper_keeps_name_signature_and_async_kind():
    def graded(completions, solution, scale=1.0, **kwargs):
        return [scale] * len(completions)

    async def judged(completions, **kwargs):
        return [1.0] * len(completions)

    class Judge:
        def __call__(self, completions, **kwargs):
            return ["yes"] * len(completions)

    wrapped = checked_reward(functools.partial(graded, scale=0.5), "graded")
    assert wrapped.__name__ == "graded"
    assert list(inspect.signature(wrapped).parameters) == ["completions", "solution", "scale", "kwargs"]
    assert wrapped(completions=["a"], solution=["1"], prompts=["p"]) == [0.5]
    assert checked_reward(wrapped, "graded") is wrapped, "wrapped once"

    async_wrapped = checked_reward(judged, "judged")
    assert inspect.iscoroutinefunction(async_wrapped)
    assert asyncio.run(async_wrapped(completions=["a"], prompts=["p"])) == [1.0]

    with pytest.raises(TypeError, match=r"'Judge' returned a str \('yes'\) for row 0 of 1 \(prompt 'p'\)"):
        checked_reward(Judge(), "Judge")(completions=["a"], prompts=["p"])


# ----------------------------------------------------------------------------------------- a real NFTTrainer step
def zero_division(completions, **kwargs):
    return [1 / 0 for _ in completions]


async def async_zero_division(completions, **kwargs):
    await asyncio.sleep(0)
    return [1 / 0 for _ in completions]


def strings(completions, **kwargs):
    return ["1"] * len(completions)


def nan_in_row_5(completions, **kwargs):
    return [float("nan") if i == 5 else 0.0 for i in range(len(completions))]


def infinite(completions, **kwargs):
    return [0.0, math.inf] * (len(completions) // 2)


def one_short(completions, **kwargs):
    return [0.0] * (len(completions) - 1)


def scalar(completions, **kwargs):
    return 1.0


class Judge:
    """A callable object: TRL names it after its class."""

    def __call__(self, completions, solution, **kwargs):
        return [int(s) / 0 for s in solution]


@pytest.mark.parametrize(
    "reward, error, pattern",
    [
        (zero_division, RewardFunctionError, r"'zero_division' raised ZeroDivisionError: division by zero"),
        (async_zero_division, RewardFunctionError, r"'async_zero_division' raised ZeroDivisionError"),
        (Judge(), RewardFunctionError, r"'Judge' raised ZeroDivisionError.*the columns \['solution'\]"),
        (
            strings,
            TypeError,
            r"'strings' returned a str \('1'\) for row 0 of 8 \(prompt 'What is \d \+ \d\?'\) and 7 other rows\.",
        ),
        (
            nan_in_row_5,
            ValueError,
            r"'nan_in_row_5' returned NaN for row 5 of 8 \(prompt 'What is \d \+ \d\?'\)\. Return None",
        ),
        (
            infinite,
            ValueError,
            r"'infinite' returned inf for row 1 of 8 \(prompt '.*'\) and 3 other rows\. Rewards must be finite",
        ),
        (one_short, ValueError, r"'one_short' returned 7 rewards for 8 completions"),
        (scalar, TypeError, r"'scalar' returned a float \(1.0\); it must return a list"),
    ],
    ids=["raises", "async_raises", "callable_object_raises", "str", "nan", "inf", "wrong_length", "not_a_list"],
)
def test_faulty_reward_fails_the_step_naming_itself(
    tmp_path, tiny_model, tiny_tokenizer, scripted_generation, reward, error, pattern
):
    trainer = make_trainer(tiny_model, tiny_tokenizer, config(tmp_path, max_steps=1), reward=[reward])
    with pytest.raises(error, match=pattern) as info:
        trainer.train()
    if error is RewardFunctionError:
        assert isinstance(info.value.__cause__, ZeroDivisionError), "chained to the reward's own exception"
        assert re.search(
            r"batch of 8 completions, the first prompt 'What is \d \+ \d\?'; it was given", str(info.value)
        )


def test_a_faulty_second_reward_is_named_not_the_verdict(tmp_path, tiny_model, tiny_tokenizer, scripted_generation):
    def verdict(completions, **kwargs):
        return [1.0, 0.0] * (len(completions) // 2)

    trainer = make_trainer(tiny_model, tiny_tokenizer, config(tmp_path, max_steps=1), reward=[verdict, strings])
    with pytest.raises(TypeError, match="^The reward function 'strings' returned a str"):
        trainer.train()


def test_valid_rewards_of_every_kind_train(tmp_path, tiny_model, tiny_tokenizer, scripted_generation):
    def mixed_types(completions, completion_ids, **kwargs):
        kinds = [True, 0, np.float32(1.0), torch.tensor(0.0), None, 1, False, np.bool_(True)]
        return [kinds[i % len(kinds)] for i in range(len(completions))]

    async def async_verdict(completions, completion_ids, **kwargs):
        await asyncio.sleep(0)
        return [float(ids[0] % 3 == 0) for ids in completion_ids]

    args = config(tmp_path, max_steps=1, correctness_reward="async_verdict")
    trainer = make_trainer(tiny_model, tiny_tokenizer, args, reward=[mixed_types, async_verdict])
    assert trainer.reward_func_names == ["mixed_types", "async_verdict"]
    assert trainer._has_async_funcs and inspect.iscoroutinefunction(trainer.reward_funcs[1])
    assert list(inspect.signature(trainer.reward_funcs[0]).parameters) == ["completions", "completion_ids", "kwargs"]
    trainer.train()
    log = next(h for h in trainer.state.log_history if "nft/correct_rate" in h)
    assert log["nft/correct_rate"] == pytest.approx(3 / 8)  # the scripted groups' verdicts, through the async path
    assert log["rewards/mixed_types/mean"] == pytest.approx(4 / 7)  # 7 scored of 8, None left out


def test_all_unscored_batch_is_called_a_gold_problem(
    tmp_path, tiny_model, tiny_tokenizer, scripted_generation, caplog
):
    def unparsable_gold(completions, solution, **kwargs):
        return [None] * len(completions)

    args = config(tmp_path, max_steps=2, warn_no_signal_steps=2)
    trainer = make_trainer(tiny_model, tiny_tokenizer, args, reward=[unparsable_gold], train_dataset=math_dataset())
    with caplog.at_level("WARNING", logger="nft_trl.algorithm"):
        trainer.train()
    (message,) = [r.getMessage() for r in caplog.records if "Nothing to learn" in r.getMessage()]
    assert "'unparsable_gold' returned None (cannot judge) for all 16 answers" in message
    assert "gold-answer or verdict problem" in message and "gold column" in message
    assert "easier prompts" not in message and "harder prompts" not in message
