"""The arguments of the `nft-trl` command and of the training script: their dataclasses, recipes, unknown keys.

The bottom layer of `nft_trl.cli`: it imports no other module of the package's command line, and every one of them
(the launcher, the preflight check, the help, the training script) reads its arguments from here.

A run's arguments are three dataclasses parsed by TRL's `TrlParser`: `NFTScriptArguments` (data, rewards, which
trainer), the training config (`CONFIG_CLASSES[method]`: `NFTConfig` for nft, TRL's plain `GRPOConfig` for grpo) and
TRL's `ModelConfig`. The launcher adds its own options (`LAUNCH_OPTIONS`); any other key must be an option of
`accelerate launch`, else `unknown_key_problems` names the field it probably meant.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import functools
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from trl import GRPOConfig, ModelConfig, TrlParser

from nft_trl.algorithm.config import NFTConfig
from nft_trl.data import DATASET_FORMATS


#: The training config of each `method`.
CONFIG_CLASSES: dict[str, type[GRPOConfig]] = {"nft": NFTConfig, "grpo": GRPOConfig}
#: The name that stands for the embedded model (`model_name_or_path`) or the embedded addition task (`dataset_name`):
#: offline, shipped with the package (`nft_trl.embedded`).
#: Options of the launcher itself: (flag, type, help). They are registered on the script's parser so that
#: `--help-all` lists them with the fields, and they are removed from the arguments that reach the training script.
LAUNCH_OPTIONS = (
    (
        "--accelerate_config",
        str,
        "Accelerate config: a file, or a shipped one by name (single_gpu, multi_gpu, zero2, zero3, zero3_offload). "
        "Default: the recipe's accelerate_config, else accelerate's own default.",
    ),
    (
        "--num_processes",
        int,
        "Total number of training processes (GPUs) over all machines. Default: the recipe's num_processes, else the "
        "accelerate config's, else 1.",
    ),
    ("--gpu_memory_gb", float, "Memory of one GPU in GB, for the memory estimate (default 80)."),
    (
        "--num_params",
        float,
        "Parameter count for the memory estimate when the model is neither a local folder nor a known model.",
    ),
)
LAUNCH_DESTS = frozenset(flag.removeprefix("--") for flag, _, _ in LAUNCH_OPTIONS)
_KEY = re.compile(r"^--?[A-Za-z]")  # a flag (a value such as -1e-6 is not one)


class RecipeError(ValueError):
    """A recipe or a flag that cannot be used; the message names the file or key and what to change."""


@dataclass
class NFTScriptArguments:
    """Data, rewards and trainer choice of the training script (training hyper-parameters: the training config)."""

    dataset_name: str | None = field(
        default=None,
        metadata={
            "help": "Hub id (e.g. BytedTsinghua-SIA/DAPO-Math-17k), local path (a .parquet/.jsonl/.json/.csv file, "
            "a folder of such files, or a dataset saved with save_to_disk), or 'embedded': the embedded two-digit "
            "addition task (offline; its held-out accuracy is reported before and after training)."
        },
    )
    dataset_format: str = field(
        default="auto",
        metadata={
            "help": "'dapo' (DAPO-Math-17k: repeats dropped, the paper's \\boxed{} prompt), 'verl' (prompt, "
            "reward_model.ground_truth, data_source), 'prompt_solution' (columns prompt and solution), or 'auto'.",
            "choices": list(DATASET_FORMATS),
        },
    )
    dataset_config: str | None = field(default=None, metadata={"help": "Dataset configuration name on the Hub."})
    dataset_train_split: str = field(default="train", metadata={"help": "Split to train on."})
    dataset_test_split: str | None = field(
        default=None,
        metadata={"help": "Split to evaluate on (used when eval_strategy is not 'no'); see also eval_fraction."},
    )
    eval_fraction: float = field(
        default=0.0,
        metadata={"help": "Without dataset_test_split: fraction of the training questions held out for evaluation."},
    )
    eval_limit: int | None = field(default=None, metadata={"help": "Evaluate on at most this many questions."})
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Train on at most this many questions (smoke tests)."}
    )
    max_prompt_length: int | None = field(
        default=None,
        metadata={
            "help": "Drop the questions whose prompt is longer than this many tokens (TRL does not truncate "
            "prompts; verl's filter_overlong_prompts). The paper: 512 (7B), 2048 (32B)."
        },
    )
    reward_funcs: list[str] = field(
        default_factory=lambda: ["math_verifier"],
        metadata={
            "help": "Reward functions by name (math_verifier: math-verify equivalence; dapo_strict_box: the NFT "
            "authors' verdict; countdown_reward: Countdown problems, with 'numbers' and 'target' columns) or dotted "
            "import path (my_pkg.rewards.fn). The first "
            "one gives NFT's correct/wrong verdict unless correctness_reward names another."
        },
    )
    method: str = field(
        default="nft",
        metadata={
            "help": "'nft': NFTTrainer with NFTConfig (NFT, or RFT with negative_weight 0). 'grpo': TRL's "
            "GRPOTrainer with a plain GRPOConfig, for the GRPO / Dr. GRPO / DAPO baselines (loss_type, epsilon_high, "
            "scale_rewards); NFT-only fields are unknown keys there.",
            "choices": ["nft", "grpo"],
        },
    )


#: Fields transformers 5 renamed (new name: old name). The recipes use the new names: under transformers 5 the old ones
#: warn at every config (and go in v6); transformers 4 has only the old ones, which `RecipeParser` then reads them as.
RENAMED_FIELDS = {
    "activation_checkpointing": "gradient_checkpointing",
    "activation_checkpointing_kwargs": "gradient_checkpointing_kwargs",
}


class RecipeParser(TrlParser):
    """TRL's parser, reading a recipe key or flag named as in `RENAMED_FIELDS` by the old name when the dataclasses
    have only that one (transformers 4)."""

    def _renames(self) -> dict[str, str]:
        dests = {action.dest for action in self._actions}
        return {new: old for new, old in RENAMED_FIELDS.items() if new not in dests and old in dests}

    def set_defaults_with_config(self, **kwargs) -> list[str]:
        renames = self._renames()
        return super().set_defaults_with_config(**{renames.get(key, key): value for key, value in kwargs.items()})

    def parse_args_into_dataclasses(self, args=None, **kwargs):
        flags = {f"--{new}": f"--{old}" for new, old in self._renames().items()}
        if flags and args is not None:
            args = [flags.get(name, name) + sep + value for name, sep, value in (arg.partition("=") for arg in args)]
        return super().parse_args_into_dataclasses(args, **kwargs)


def make_parser(config_class: type[GRPOConfig] = NFTConfig, prog: str | None = None) -> TrlParser:
    return RecipeParser((NFTScriptArguments, config_class, ModelConfig), prog=prog)


def read_recipe(path: str | os.PathLike) -> dict[str, Any]:
    """The mapping of a YAML file (a recipe, an accelerate config); `RecipeError` with the file, line and column when
    the YAML is malformed."""
    try:
        values = yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None) or getattr(error, "context_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        problem = getattr(error, "problem", None) or str(error)
        context = getattr(error, "context", None)
        raise RecipeError(f"{where}: malformed YAML: {problem}{f' ({context})' if context else ''}.") from None
    except OSError as error:
        raise RecipeError(f"Cannot read {path}: {error.strerror or error}.") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise RecipeError(f"{path}: expected a YAML mapping of `key: value` lines, not a {type(values).__name__}.")
    return values


def requested_method(argv: list[str], recipe: dict[str, Any] | None = None) -> str:
    """The `method` of a run: the `--method` flag, else the recipe's `method` (`recipe`, else read from `--config`),
    else "nft"."""
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    pre.add_argument("--method")
    pre.add_argument("--config")
    flags, _ = pre.parse_known_args(argv)
    if recipe is None:
        recipe = read_recipe(flags.config) if flags.config else {}
    method = flags.method if flags.method is not None else recipe.get("method", "nft")
    if method not in CONFIG_CLASSES:
        raise RecipeError(f"method={method!r} is not supported: use 'nft' or 'grpo'.")
    return method


@functools.cache
def accelerate_options() -> frozenset[str]:
    """The options of `accelerate launch`, without their dashes (both spellings: `num_machines`, `num-machines`)."""
    from accelerate.commands.launch import launch_command_parser

    actions = launch_command_parser()._actions
    return frozenset(s.lstrip("-") for action in actions for s in action.option_strings if s.startswith("--"))


def unknown_key_problems(
    config_remaining: list[str],
    cli_remaining: list[str],
    config_class: type[GRPOConfig],
    recipe: str | Path | None = None,
) -> list[str]:
    """One message per key (recipe `key: value` or `--flag`) that is neither a field of the script arguments,
    `config_class` or `ModelConfig` (those were consumed by the parser, so `*_remaining` holds none of them), nor an
    option of the launcher or of `accelerate launch`; each names the field it probably meant."""
    recipe_keys = [(token, f"in {recipe or 'the recipe'}") for token in config_remaining[::2]]
    flag_keys = [(token, f"flag {token.split('=', 1)[0]}") for token in cli_remaining if _KEY.match(token)]
    allowed = LAUNCH_DESTS | accelerate_options()
    fields = {f.name for cls in (NFTScriptArguments, config_class, ModelConfig) for f in dataclasses.fields(cls)}
    problems = []
    for token, where in recipe_keys + flag_keys:
        key = token.lstrip("-").split("=", 1)[0]
        if key in allowed:
            continue
        if config_class is not NFTConfig and key in {f.name for f in dataclasses.fields(NFTConfig)}:
            problems.append(
                f"unknown key {key!r} ({where}): it is a field of NFTConfig, and method 'grpo' trains with TRL's "
                "GRPOConfig, which has none. Remove it, or use method: nft."
            )
            continue
        guess = difflib.get_close_matches(key, sorted(fields | LAUNCH_DESTS), n=1, cutoff=0.6)
        hint = f"did you mean {guess[0]!r}?" if guess else "`nft-trl train --help-all` lists every field."
        problems.append(
            f"unknown key {key!r} ({where}): it is not a field of NFTScriptArguments, {config_class.__name__} or "
            f"ModelConfig, nor an option of nft-trl or of `accelerate launch`; {hint}"
        )
    return problems


def script_arg_problems(script_args: Any, model_args: Any) -> list[str]:
    """Script arguments the training script would stop on: an unknown format, a model without a dataset."""
    problems = []
    if script_args.dataset_format not in DATASET_FORMATS:
        problems.append(
            f"dataset_format={script_args.dataset_format!r}: use {', '.join(DATASET_FORMATS[:-1])} or "
            f"{DATASET_FORMATS[-1]}."
        )
    if model_args.model_name_or_path is not None and script_args.dataset_name is None:
        problems.append(
            "dataset_name is not set, and a model_name_or_path is: give --dataset_name (a local .parquet/.jsonl/"
            ".json/.csv file or folder, a Hub id, or 'embedded' for the embedded addition task)."
        )
    return problems
