"""Checked reward functions: a faulty reward fails naming itself, the row and what it returned.

TRL calls each reward function once per generation batch and turns its list into a tensor. When the function raises,
the user sees their own traceback without the reward's name; a string becomes "too many dimensions 'str'"; `inf` and
`NaN` pass silently (NaN reads as "unscored", the meaning of `None`). `checked_rewards` wraps every callable reward
once, keeping the name, the signature and the sync/async kind TRL reads, so that:

- an exception inside the reward is re-raised as `RewardFunctionError` naming the reward, chained to the original;
- a result that is not one number per completion (a scalar, a string, the wrong length) is a `TypeError` or
  `ValueError` naming the reward;
- each value must be a finite real number (bool and int included) or `None`, the documented "cannot judge"; anything
  else (a string, a list, NaN, inf) names the reward, the row (its index in the batch and the prompt's start) and the
  value's type.

NaN is an error, not "unscored": a reward that cannot judge an answer says so with `None`, so a NaN comes from a
computation gone wrong (0/0, a failed float parse), and counting it as unscored would hide that bug for a whole run.

Reward models (`nn.Module`) are left to TRL: their scores come out of a forward pass, not user code.
"""

from __future__ import annotations

import functools
import math
import numbers
import sys
from collections.abc import Callable, Mapping, Set
from typing import Any

import numpy as np

from .columns import TRL_REWARD_KWARGS, is_torch_module


#: How much of a prompt an error message shows.
PROMPT_PREVIEW_CHARS = 60
_NON_FINITE = ("NaN", "inf", "-inf")  # what `value_problem` says of a float that is not finite


class RewardFunctionError(RuntimeError):
    """A reward function raised while scoring a batch; the original exception is its `__cause__`."""


def prompt_start(prompt: Any, limit: int = PROMPT_PREVIEW_CHARS) -> str:
    """The start of a prompt, plain text or conversational (its last message's text), for an error message."""
    if isinstance(prompt, list) and prompt and isinstance(prompt[-1], Mapping):
        content = prompt[-1].get("content", "")
        if isinstance(content, list):  # multimodal content blocks: keep the text parts
            content = " ".join(str(part.get("text", "")) for part in content if isinstance(part, Mapping))
        prompt = content
    text = " ".join(str(prompt).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def describe_row(index: int, prompts: list | None) -> str:
    """`row 3 of 8 (prompt 'What is 2 + 3?')`: where in the batch a value came from."""
    if not prompts or index >= len(prompts):
        return f"row {index}"
    return f"row {index} of {len(prompts)} (prompt {prompt_start(prompts[index])!r})"


def value_problem(value: Any) -> str | None:
    """None for a valid reward value (a finite real number, a bool, None); else what is wrong with it."""
    if value is None or isinstance(value, bool):
        return None
    torch = sys.modules.get("torch")  # a tensor means torch is imported; the rewards alone do not import it
    tensor = (torch.Tensor,) if torch is not None else ()
    if isinstance(value, (np.generic, *tensor)) and value.ndim == 0:  # numpy scalars, 0-dim tensors
        value = value.item()  # (a 0-dim numpy array is not among them: torch.tensor cannot read it in a list)
    if isinstance(value, bool):
        return None
    if not isinstance(value, numbers.Real):
        shape = getattr(value, "shape", None)
        what = f"a {type(value).__name__}" + (f" of shape {tuple(shape)}" if shape is not None else "")
        return f"{what} ({_preview(value)})"
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return f"{value}"
    return None


def _preview(value: Any, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_reward_values(name: str, values: Any, prompts: list | None) -> None:
    """Raise, naming the reward `name`, unless `values` holds one valid reward per prompt (see `value_problem`)."""
    if isinstance(values, str | bytes | Mapping | Set) or not (
        hasattr(values, "__len__") and hasattr(values, "__iter__")
    ):
        raise TypeError(
            f"The reward function {name!r} returned a {type(values).__name__} ({_preview(values)}); it must return a "
            "list with one reward per completion (a number, or None for a completion it cannot judge)."
        )
    if prompts is not None and len(values) != len(prompts):
        raise ValueError(
            f"The reward function {name!r} returned {len(values)} rewards for {len(prompts)} completions; it must "
            "return exactly one reward per completion, in the order it received them (None where it cannot judge)."
        )
    problems = [
        (index, problem) for index, value in enumerate(values) if (problem := value_problem(value)) is not None
    ]
    if not problems:
        return
    index, problem = problems[0]
    more = f" and {len(problems) - 1} other row" + "s" * (len(problems) > 2) if len(problems) > 1 else ""
    if problem == "NaN":
        fix = (
            "Return None for a completion the reward cannot judge (NFT leaves it out of the loss); a NaN usually "
            "means a computation went wrong (0/0, float('nan') from a failed parse), so NFT does not treat it as None."
        )
    elif problem in _NON_FINITE:
        fix = "Rewards must be finite: clip the value, or return None for a completion the reward cannot judge."
    else:
        fix = "Each reward must be a number (float, int or bool), or None for a completion the reward cannot judge."
    raise (ValueError if problem in _NON_FINITE else TypeError)(
        f"The reward function {name!r} returned {problem} for {describe_row(index, prompts)}{more}. {fix}"
    )


def raised_message(name: str, error: BaseException, kwargs: dict) -> str:
    """What to say when the reward `name` raised `error` while scoring the batch it got as `kwargs`."""
    prompts = kwargs.get("prompts") or []
    columns = sorted(key for key in kwargs if key not in TRL_REWARD_KWARGS)
    first = f", the first prompt {prompt_start(prompts[0])!r}" if prompts else ""
    return (
        f"The reward function {name!r} raised {type(error).__name__}: {error} (scoring a batch of {len(prompts)} "
        f"completions{first}; it was given prompts, completions, completion_ids and the columns {columns}). Its own "
        "traceback is above. Fix the reward, or make it return None for a completion it cannot judge."
    )


def checked_reward(func: Callable, name: str) -> Callable:
    """`func` with its results checked and its exceptions named; sync or async like `func`, named `name`."""
    if getattr(func, "__nft_checked__", False):
        return func
    from trl.trainer.utils import is_async_callable  # TRL's own test of what it awaits (imported here: see columns)

    if is_async_callable(func):

        @functools.wraps(func, updated=())
        async def checked(*args, **kwargs):
            try:
                values = await func(*args, **kwargs)
            except Exception as err:
                raise RewardFunctionError(raised_message(name, err, kwargs)) from err
            check_reward_values(name, values, kwargs.get("prompts"))
            return values

    else:

        @functools.wraps(func, updated=())
        def checked(*args, **kwargs):
            try:
                values = func(*args, **kwargs)
            except Exception as err:
                raise RewardFunctionError(raised_message(name, err, kwargs)) from err
            check_reward_values(name, values, kwargs.get("prompts"))
            return values

    checked.__name__ = name  # TRL's name for partials and callable objects, which `wraps` cannot copy
    checked.__nft_checked__ = True
    return checked


def checked_rewards(reward_funcs: list, names: list[str]) -> list:
    """Each callable reward wrapped by `checked_reward` under its TRL name; reward models (`nn.Module`) as they are."""
    return [
        func if is_torch_module(func) else checked_reward(func, name)
        for func, name in zip(reward_funcs, names, strict=True)
    ]
