"""Input checks before the first step: the datasets' rows, the output folder, the prompts against the model's context.

A run that cannot learn should fail in seconds, naming the row or the setting and the fix, instead of running 0 steps
and saving the untrained model as if trained, failing after the first generation, or training on prompts that the
chat template silently mangled. `NFTTrainer` makes two calls:

- `check_before_model(args, reward_funcs, train_dataset, eval_dataset)`, before TRL loads the model: every dataset
  has a `prompt` column and rows (`check_dataset`), the training set at least the distinct prompts of one generation
  batch (TRL drops an incomplete batch, so fewer means 0 steps), every prompt is well formed (`prompt_problem`), every
  reward finds its columns (`rewards.columns`, including the ones a reward declares in `required_columns`), and the
  output folder is writable and not in use by another live run (`run_lock`). Returns the run lock, to hold.
- `check_prompt_lengths(trainer)`, once the trainer has its tokenizer and model: prompt + `max_completion_length`
  within the model's `max_position_embeddings`, on a seeded sample of `LENGTH_SAMPLE_SIZE` prompts per dataset.

`nft-trl train` adds `check_prompt_filter` after its `max_prompt_length` filter.

Why a sample for the lengths: rendering the chat template and tokenizing is the costly part (measured: about 2 ms per
300-token prompt on a shared CPU core, so half a minute for 17k prompts and half an hour for a million, on every
process), while 256 prompts (half a second) tell apart the cases that matter: every prompt too long (wrong dataset,
tokenizer or model: an error) and a share of them (a warning, with the count and the estimated share). A rare long
prompt that the sample misses (a share of 1% is missed with probability 0.99 ** 256, about 8%) costs only the steps
that draw it; `max_prompt_length` filters them all, exactly, when that matters. A lazy check per batch would need
another wrapped trainer method, and would warn only once training runs. The row checks need no tokenizer and read
every row (measured: about 2 s per 100,000 two-message prompts).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterator
from typing import Any

from datasets import Dataset

from ..rewards.columns import check_reward_columns
from .run_lock import RunLock, check_writable


logger = logging.getLogger(__name__)

#: Roles a prompt's message may have: those of the chat templates TRL ships (`developer`: gpt-oss, Gemma 4, Command
#: R7B). A template drops a message with another role without a word (Qwen2.5's) or fails at the first step.
CHAT_ROLES = ("system", "developer", "user", "assistant", "tool")
#: Prompts tokenised per dataset to compare their length with the model's context (see the module docstring).
LENGTH_SAMPLE_SIZE = 256
#: Rows read at a time by the row checks.
_ROW_BATCH = 1024

_PROMPT_FORMAT = (
    "A prompt is a non-empty string, or a non-empty list of messages, each a dict with a 'role' (one of "
    f"{', '.join(CHAT_ROLES)}) and a 'content' (text)."
)


def prompt_problem(prompt: Any) -> str | None:
    """What is wrong with one dataset prompt, or None when TRL can use it (see `_PROMPT_FORMAT`)."""
    if isinstance(prompt, str):
        return "the prompt is an empty string" if not prompt.strip() else None
    if not isinstance(prompt, list | tuple):
        return f"the prompt is a {type(prompt).__name__}, not a string or a list of messages"
    if not prompt:
        return "the prompt is an empty list of messages"
    for index, message in enumerate(prompt):
        if not isinstance(message, dict):
            return f"message {index} is a {type(message).__name__}, not a dict with 'role' and 'content'"
        role = message.get("role")  # a message without the key reads as None from an Arrow dataset
        if role is None:
            return f"message {index} has no 'role' (it has {sorted(k for k, v in message.items() if v is not None)})"
        if role not in CHAT_ROLES:
            return f"message {index} has role {role!r}, which chat templates do not know"
        content = message.get("content")
        if content is None and message.get("tool_calls") is None:
            return f"message {index} ({role}) has no 'content'"
        if content is not None and not isinstance(content, str | list):
            return f"message {index} ({role}) has a {type(content).__name__} as 'content', not text"
    return None


def check_dataset(dataset: Any, name: str = "train dataset", min_prompts: int = 1) -> None:
    """`ValueError` naming the dataset, the row and the fix when `dataset` cannot be trained or evaluated on: no
    `prompt` column, fewer than `min_prompts` rows, or a malformed prompt (`prompt_problem`). Datasets without a length
    (`IterableDataset`) get the column check only."""
    columns = getattr(dataset, "column_names", None)
    if columns is not None and "prompt" not in columns:
        raise ValueError(
            f"The {name} has no 'prompt' column (it has {list(columns)}); NFT and GRPO generate from 'prompt'. "
            "Rename yours, e.g. dataset.rename_column('question', 'prompt'), or load the data with "
            "nft_trl.data.load_math_dataset (it converts DAPO and verl formats)."
        )
    if not isinstance(dataset, Dataset):
        return
    if len(dataset) == 0:
        raise ValueError(
            f"The {name} has no rows: training would run 0 steps and save the untrained model. Check the split and "
            "any filter that produced it (max_prompt_length, max_train_samples, a dataset.filter)."
        )
    if len(dataset) < min_prompts:
        raise ValueError(
            f"The {name} has {len(dataset)} prompt(s), but one generation batch takes {min_prompts} distinct prompts "
            "(generation_batch_size / num_generations) and TRL drops an incomplete batch: training would run 0 steps "
            "and save the untrained model. Add prompts, or lower per_device_train_batch_size or steps_per_generation."
        )
    bad = [(row, problem) for row, prompt in _rows(dataset, "prompt") if (problem := prompt_problem(prompt))]
    if bad:
        row, problem = bad[0]
        others = f" ({len(bad) - 1} more rows have a problem too)" if len(bad) > 1 else ""
        raise ValueError(
            f"The {name}, row {row}: {problem}{others}. {_PROMPT_FORMAT} Fix the rows, or drop them, e.g. "
            "dataset.filter(lambda row: nft_trl.runtime.inputs.prompt_problem(row['prompt']) is None)."
        )


def check_prompt_filter(lengths: list[int], max_prompt_length: int, name: str = "training set") -> None:
    """`ValueError` when `max_prompt_length` keeps none of the prompts of token `lengths`, naming the shortest and the
    longest (a typo in the setting, or a tokenizer that is not the model's)."""
    if not lengths:
        raise ValueError(f"The {name} has no rows: there is nothing to train on (check dataset_train_split).")
    if min(lengths) > max_prompt_length:
        raise ValueError(
            f"max_prompt_length={max_prompt_length} drops every prompt of the {name}: its {len(lengths)} prompts have "
            f"{min(lengths)} (shortest) to {max(lengths)} (longest) tokens after the chat template. Raise "
            f"max_prompt_length to at least {min(lengths)} ({max(lengths)} keeps them all), or check that the "
            "tokenizer is the model's."
        )


def check_context(
    lengths: list[int], *, max_completion_length: int, context: int, num_rows: int, name: str = "train dataset"
) -> str | None:
    """Compare the token `lengths` of a sample of `num_rows` prompts, plus `max_completion_length`, with the model's
    `context` (`max_position_embeddings`). `ValueError` when every sampled prompt overflows; the warning to log when
    some do; None when none does."""
    budget = context - max_completion_length
    over = [length for length in lengths if length > budget]
    if not over:
        return None
    sample = f"{len(lengths)} prompts sampled from the {name}" if len(lengths) < num_rows else f"{name}'s prompts"
    what = (
        f"prompt + max_completion_length ({max_completion_length}) exceeds the model's context "
        f"(max_position_embeddings={context}), so prompts longer than {budget} tokens do not fit"
    )
    fix = (
        f"Drop prompts over {max(budget, 0)} tokens (nft-trl train's max_prompt_length, or "
        "nft_trl.data.filter_long_prompts), lower max_completion_length, or use a model with a longer context."
    )
    if len(over) == len(lengths):
        raise ValueError(
            f"Every one of the {sample} is too long: {what}; they have {min(lengths)} to {max(lengths)} tokens. "
            "Generation past the context is slow and unreliable (positions the model was not trained on; models "
            f"with learned positions fail outright). {fix}"
        )
    share = len(over) / len(lengths)
    estimate = f" (about {share:.0%} of its {num_rows} rows)" if len(lengths) < num_rows else ""
    return (
        f"{len(over)} of the {sample}{estimate} are too long (up to {max(over)} tokens): {what}. Steps that draw them "
        f"may generate past the context, where the model was not trained: slow and unreliable. {fix}"
    )


def check_before_model(args: Any, reward_funcs: list, train_dataset: Any, eval_dataset: Any) -> RunLock | None:
    """The checks that need neither tokenizer nor model (see the module docstring); `args` is the GRPOConfig.

    Returns the run lock of `args.output_dir` on the main process (None elsewhere), to hold for the trainer's life.
    """
    datasets = {"train": train_dataset, "eval": eval_dataset}
    for name, dataset in _named_datasets(datasets):
        min_prompts = args.generation_batch_size // args.num_generations if name == "train dataset" else 1
        check_dataset(dataset, name, min_prompts)
    check_reward_columns(reward_funcs, datasets, args.remove_unused_columns)
    if args.should_save:
        check_writable(args.output_dir)
    return RunLock(args.output_dir) if args.process_index == 0 else None


def check_prompt_lengths(trainer: Any) -> None:
    """`check_context` on a seeded sample of each dataset of a GRPOTrainer, tokenised as TRL does (its chat template,
    tools and `chat_template_kwargs`). Skipped for processors (vision-language models) and configs without
    `max_position_embeddings`."""
    from transformers import PreTrainedTokenizerBase

    tokenizer = trainer.processing_class
    context = getattr(trainer.model.config.get_text_config(), "max_position_embeddings", None)
    if not isinstance(tokenizer, PreTrainedTokenizerBase) or context is None:
        return
    datasets = {"train": trainer.train_dataset, "eval": trainer.eval_dataset}
    for name, dataset in _named_datasets(datasets):
        if not isinstance(dataset, Dataset) or len(dataset) == 0:
            continue
        rows = sorted(
            random.Random(trainer.args.seed).sample(range(len(dataset)), min(len(dataset), LENGTH_SAMPLE_SIZE))
        )
        prompts = list(dataset.select(rows)["prompt"])
        if isinstance(prompts[0], str):
            ids = tokenizer(text=prompts)["input_ids"]
        else:
            ids = tokenizer.apply_chat_template(
                prompts,
                tools=trainer.tools or None,
                chat_template=trainer.chat_template,
                add_generation_prompt=True,
                tokenize=True,
                return_dict=True,
                **trainer.chat_template_kwargs,
            )["input_ids"]
        warning = check_context(
            [len(row) for row in ids],
            max_completion_length=trainer.max_completion_length or 0,  # None: answers up to the context
            context=context,
            num_rows=len(dataset),
            name=name,
        )
        if warning is not None and trainer.accelerator.is_main_process:
            logger.warning(warning)


def _named_datasets(datasets: dict[str, Any]) -> Iterator[tuple[str, Any]]:
    """("train dataset", dataset), ("eval dataset 'name'", dataset) ... for the datasets that are not None."""
    for split, dataset in datasets.items():
        if isinstance(dataset, dict):  # a dict of eval datasets, or a DatasetDict
            for key, value in dataset.items():
                yield f"{split} dataset {key!r}", value
        elif dataset is not None:
            yield f"{split} dataset", dataset


def _rows(dataset: Dataset, column: str) -> Iterator[tuple[int, Any]]:
    """(row index, value) of one column, read in batches (no full copy of the dataset)."""
    row = 0
    for batch in dataset.with_format(None).select_columns([column]).iter(batch_size=_ROW_BATCH):
        for value in batch[column]:
            yield row, value
            row += 1
