"""Which dataset columns a reward function needs, checked before training starts.

TRL calls a reward function with the keyword arguments in `TRL_REWARD_KWARGS` plus every dataset column by name. A
reward parameter without a default that TRL does not supply must therefore be a column. A reward may also declare the
columns it needs in a `required_columns` attribute (a tuple of names): `math_verifier` does, because its `solution`
parameter has a default (`None`) yet it cannot grade without the column. Custom rewards can declare theirs the same
way::

    def my_reward(completions, answer=None, **kwargs): ...
    my_reward.required_columns = ("answer",)

`check_reward_columns` fails at construction, naming the column and the fix, instead of at the first generation step.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable, Iterable


def is_torch_module(obj) -> bool:
    """Whether `obj` is a `torch.nn.Module` (a reward model), without importing torch: the rewards package stays
    light for processes that only verify answers (the verifier's tests start such processes by the dozen)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(obj, torch.nn.Module)


#: Keyword arguments TRL itself passes to every reward function (not dataset columns).
TRL_REWARD_KWARGS = frozenset(
    {"prompts", "completions", "completion_ids", "trainer_state", "log_extra", "log_metric", "environments"}
)


#: The attribute in which a reward function declares the dataset columns it needs (a tuple of column names).
REQUIRED_COLUMNS_ATTRIBUTE = "required_columns"


def required_columns(func: Callable) -> list[str]:
    """Dataset columns a reward function requires: the ones it declares in `required_columns`, then its parameters
    without default that TRL does not supply."""
    declared = list(getattr(func, REQUIRED_COLUMNS_ATTRIBUTE, ()))
    try:
        parameters = inspect.signature(func).parameters.values()
    except (TypeError, ValueError):  # builtins or C callables: only what they declare
        return declared
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    undefaulted = [
        p.name
        for p in parameters
        if p.kind in kinds and p.default is inspect.Parameter.empty and p.name not in TRL_REWARD_KWARGS
    ]
    return declared + [name for name in undefaulted if name not in declared]


def _dataset_columns(dataset) -> Iterable[tuple[str, list[str]]]:
    if isinstance(dataset, dict):  # DatasetDict or a dict of eval datasets
        for name, split in dataset.items():
            for _, columns in _dataset_columns(split):
                yield name, columns
        return
    columns = getattr(dataset, "column_names", None)
    if columns is not None:
        yield "", list(columns)


def check_reward_columns(reward_funcs: list, datasets: dict, remove_unused_columns: bool | None) -> None:
    """Fail, naming the column, when a reward function needs a column that a dataset lacks."""
    for func in reward_funcs:
        if isinstance(func, str) or is_torch_module(func) or not callable(func):
            continue
        required = required_columns(func)
        if not required:
            continue
        func_name = getattr(func, "__name__", type(func).__name__)
        if remove_unused_columns:
            raise ValueError(
                f"Reward function {func_name!r} needs the dataset column(s) {required}, but remove_unused_columns=True "
                "drops every column except the prompt. Set remove_unused_columns=False (the NFTConfig default)."
            )
        for split_name, dataset in datasets.items():
            for sub_name, columns in _dataset_columns(dataset):
                missing = [column for column in required if column not in columns]
                if missing:
                    where = f"{split_name} dataset" + (f" {sub_name!r}" if sub_name else "")
                    raise ValueError(
                        f"Reward function {func_name!r} needs the dataset column(s) {missing}, which the {where} lacks "
                        f"(it has {columns}). Add the column (for math_verifier: the gold answer as 'solution') or "
                        "rename yours, e.g. dataset.rename_column('answer', 'solution')."
                    )
