"""Math training data for NFT: DAPO-Math-17k, verl-format parquet, and plain `prompt`/`solution` datasets.

Every loader returns a `datasets.Dataset` with the columns the trainer and the verifier need:
`prompt` (a chat list of messages, or a string) and `solution` (the gold answer as a string), plus `data_source`.

>>> from nft_trl.data import load_math_dataset
>>> train = load_math_dataset("BytedTsinghua-SIA/DAPO-Math-17k")  # or a local .parquet / .jsonl, or a folder
>>> train[0]["prompt"], train[0]["solution"]

Formats (`dataset_format`):
- `dapo`: DAPO-Math-17k (`prompt` chat list whose user message wraps the problem in DAPO's "Answer:" instruction,
  `reward_model.ground_truth`, `data_source`, `extra_info`). The public copy repeats each problem about 100 times;
  the repeats are dropped, and the prompt is rebuilt with the paper's instruction (final answer in `\\boxed{}`).
- `verl`: any verl-format dataset (`prompt`, `reward_model.ground_truth`, `data_source`); the prompt is kept as is.
- `prompt_solution`: columns `prompt` and `solution` already; kept as is (the gold is cast to a string).
- `auto`: `prompt_solution` when those columns exist, else `dapo` when the prompts carry DAPO's instruction, else
  `verl`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from datasets import Dataset, DatasetDict, load_dataset


logger = logging.getLogger(__name__)

DAPO_MATH_HUB_ID = "BytedTsinghua-SIA/DAPO-Math-17k"
DATASET_FORMATS = ("auto", "dapo", "verl", "prompt_solution")

#: The instruction appended to every problem: the final answer in `\boxed{}`, which the verifier extracts.
#: It is the instruction of Qwen2.5-Math's own chat prompt, which the paper's models were trained and evaluated with.
BOXED_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."

# DAPO-Math-17k wraps each problem in an instruction asking for a last line "Answer: $Answer". Its first paragraph
# starts with the prefix below and its last paragraph with the suffix; the problem is what lies between.
_DAPO_PREFIX = "Solve the following math problem step by step."
_DAPO_SUFFIX = "Remember to put your answer on its own line after"

_LOCAL_BUILDERS = {".parquet": "parquet", ".jsonl": "json", ".json": "json", ".csv": "csv", ".arrow": "arrow"}


class MissingColumnError(ValueError):
    """A dataset lacks a column its format needs. The message names the column, the format and the columns found."""


def load_math_dataset(
    name_or_path: str,
    dataset_format: str = "auto",
    split: str = "train",
    config: str | None = None,
) -> Dataset:
    """Load a math dataset (Hub id, local file or folder) and convert it to `prompt` / `solution` / `data_source`."""
    raw = load_raw_dataset(name_or_path, split=split, config=config)
    return to_prompt_solution(raw, dataset_format, name=name_or_path)


def load_raw_dataset(name_or_path: str, split: str = "train", config: str | None = None) -> Dataset:
    """One split of a dataset: a local `.parquet`/`.jsonl`/`.json`/`.csv` file (its only split), a local folder of such
    files or a saved dataset, or a Hub id."""
    path = Path(name_or_path).expanduser()
    if path.is_file():
        builder = _LOCAL_BUILDERS.get(path.suffix.lower())
        if builder is None:
            raise ValueError(
                f"Cannot read {path}: unknown file type {path.suffix!r}. Use one of {', '.join(_LOCAL_BUILDERS)}."
            )
        return load_dataset(builder, data_files=str(path), split="train")
    if path.is_dir() and any((path / marker).exists() for marker in ("state.json", "dataset_dict.json")):
        from datasets import load_from_disk

        loaded = load_from_disk(str(path))
        return loaded[split] if isinstance(loaded, DatasetDict) else loaded
    return load_dataset(str(path) if path.is_dir() else name_or_path, name=config, split=split)


def to_prompt_solution(dataset: Dataset, dataset_format: str = "auto", name: str = "dataset") -> Dataset:
    """Convert `dataset` from `dataset_format` to the `prompt` / `solution` / `data_source` columns."""
    if dataset_format not in DATASET_FORMATS:
        raise ValueError(
            f"dataset_format={dataset_format!r} is not supported; use one of {', '.join(DATASET_FORMATS)}."
        )
    if dataset_format == "auto":
        dataset_format = detect_format(dataset, name=name)
        logger.info("%s: detected dataset_format=%r", name, dataset_format)
    if dataset_format == "dapo":
        return from_dapo(dataset, name=name)
    if dataset_format == "verl":
        return from_verl(dataset, name=name)
    return from_prompt_solution(dataset, name=name)


def detect_format(dataset: Dataset, name: str = "dataset") -> str:
    """`prompt_solution`, `dapo` or `verl` from the columns (and the first prompt); `MissingColumnError` otherwise."""
    columns = set(dataset.column_names)
    if {"prompt", "reward_model"} <= columns and "solution" not in columns:
        first = _user_text(dataset[0]["prompt"]) if len(dataset) else ""
        return "dapo" if first.lstrip().startswith(_DAPO_PREFIX) else "verl"
    require_columns(dataset, ("prompt", "solution"), "auto (prompt_solution, dapo or verl)", name)
    return "prompt_solution"


def require_columns(dataset: Dataset, columns: Sequence[str], dataset_format: str, name: str = "dataset") -> None:
    """Raise `MissingColumnError` naming the first column of `columns` that `dataset` lacks."""
    for column in columns:
        if column not in dataset.column_names:
            raise MissingColumnError(
                f"{name}: column {column!r} is missing for dataset_format={dataset_format!r} (which needs "
                f"{', '.join(repr(c) for c in columns)}). Columns found: {', '.join(dataset.column_names) or 'none'}. "
                "Rename the column, or choose the matching --dataset_format (dapo, verl, prompt_solution)."
            )


def from_prompt_solution(dataset: Dataset, name: str = "dataset") -> Dataset:
    require_columns(dataset, ("prompt", "solution"), "prompt_solution", name)
    if getattr(dataset.features["solution"], "dtype", None) != "string":
        dataset = dataset.map(lambda row: {"gold": str(row["solution"])}, remove_columns=["solution"])
        dataset = dataset.rename_column("gold", "solution")
    if "data_source" not in dataset.column_names:
        dataset = dataset.add_column("data_source", [name] * len(dataset))
    return dataset


def from_verl(dataset: Dataset, name: str = "dataset") -> Dataset:
    """verl format: `prompt` kept as is, `solution = str(reward_model["ground_truth"])`."""
    require_columns(dataset, ("prompt", "reward_model"), "verl", name)
    _require_ground_truth(dataset, "verl", name)
    has_source = "data_source" in dataset.column_names

    def convert(row):
        return {
            "prompt": row["prompt"],
            "solution": str(row["reward_model"]["ground_truth"]),
            "data_source": row["data_source"] if has_source else name,
        }

    return dataset.map(convert, remove_columns=dataset.column_names)


def from_dapo(dataset: Dataset, name: str = "dataset") -> Dataset:
    """DAPO-Math-17k: drop the repeated rows, rebuild the prompt with `BOXED_INSTRUCTION`, gold in `solution`.

    Two rows are repeats when their problem text and their ground truth are equal; the first one is kept.
    """
    require_columns(dataset, ("prompt", "reward_model"), "dapo", name)
    _require_ground_truth(dataset, "dapo", name)
    has_source = "data_source" in dataset.column_names
    num_rows = len(dataset)

    def convert(batch):
        problems = [dapo_problem(_user_text(prompt)) for prompt in batch["prompt"]]
        return {
            "problem": problems,
            "solution": [str(rm["ground_truth"]) for rm in batch["reward_model"]],
            "data_source": batch["data_source"] if has_source else [name] * len(problems),
        }

    converted = dataset.map(convert, batched=True, remove_columns=dataset.column_names)
    keys = converted.select_columns(["problem", "solution"]).to_pandas()
    keep = (~keys.duplicated(keep="first")).to_numpy().nonzero()[0]
    deduplicated = converted.select(keep)
    logger.info("%s: %d rows, %d distinct problems kept", name, num_rows, len(deduplicated))
    return deduplicated.map(
        lambda row: {"prompt": boxed_prompt(row["problem"])}, remove_columns=["problem"]
    ).select_columns(["prompt", "solution", "data_source"])


def dapo_problem(text: str) -> str:
    """The problem inside DAPO-Math-17k's instruction (the text itself when it does not carry that instruction)."""
    paragraphs = text.strip().split("\n\n")
    if len(paragraphs) >= 3 and paragraphs[0].startswith(_DAPO_PREFIX) and paragraphs[-1].startswith(_DAPO_SUFFIX):
        return "\n\n".join(paragraphs[1:-1]).strip()
    return text.strip()


def boxed_prompt(problem: str) -> list[dict[str, str]]:
    """The paper's prompt: the problem, then the instruction to put the final answer in `\\boxed{}`."""
    return [{"role": "user", "content": f"{problem}\n\n{BOXED_INSTRUCTION}"}]


def prompt_length(prompt: Any, tokenizer: Any) -> int:
    """Tokens of one prompt: a chat list after the chat template (with the generation prompt), or a plain string."""
    if isinstance(prompt, str):
        return len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    ids = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True)
    if isinstance(ids, dict) or hasattr(ids, "keys"):
        ids = ids["input_ids"]
    return len(ids)


def prompt_lengths(dataset: Dataset, tokenizer: Any) -> list[int]:
    """`prompt_length` of every row of `dataset` (a `Dataset.map`, so cached for the next run on the same files)."""
    counted = dataset.map(
        lambda row: {"prompt_tokens": prompt_length(row["prompt"], tokenizer)},
        remove_columns=dataset.column_names,
        desc="Counting prompt tokens",
    )
    return list(counted["prompt_tokens"])


def filter_long_prompts(
    dataset: Dataset, tokenizer: Any, max_prompt_length: int, lengths: Sequence[int] | None = None
) -> Dataset:
    """Drop the rows whose prompt (after the chat template) is longer than `max_prompt_length` tokens, with a warning
    that counts them; `lengths` are the rows' `prompt_lengths` when already computed.

    TRL does not truncate prompts; the paper's recipes drop over-long prompts instead (verl's
    `data.filter_overlong_prompts`), so the prompt + answer budget holds.
    """
    lengths = prompt_lengths(dataset, tokenizer) if lengths is None else lengths
    keep = [row for row, length in enumerate(lengths) if length <= max_prompt_length]
    if len(keep) < len(dataset):
        logger.warning(
            "max_prompt_length=%d: dropped %d of %d prompts longer than that (the longest has %d tokens); %d left.",
            max_prompt_length,
            len(dataset) - len(keep),
            len(dataset),
            max(lengths),
            len(keep),
        )
        return dataset.select(keep)
    return dataset


def _user_text(prompt: Any) -> str:
    """The text of the last user message of a chat list (or the prompt itself when it is a string)."""
    if isinstance(prompt, str):
        return prompt
    for message in reversed(list(prompt)):
        if message.get("role") == "user":
            return message["content"]
    return prompt[-1]["content"] if len(prompt) else ""


def _require_ground_truth(dataset: Dataset, dataset_format: str, name: str) -> None:
    feature = dataset.features["reward_model"]
    if not isinstance(feature, dict) or "ground_truth" not in feature:
        raise MissingColumnError(
            f"{name}: column 'reward_model.ground_truth' is missing for dataset_format={dataset_format!r}: "
            f"'reward_model' has {sorted(feature) if isinstance(feature, dict) else type(feature).__name__}. "
            "verl-format data stores the gold answer in reward_model['ground_truth']."
        )
