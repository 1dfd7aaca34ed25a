"""`nft-trl train`, `check` and `vllm-serve`: a recipe and flags, checked, then handed to `accelerate launch`.

    nft-trl train --config Qwen2.5-Math-7B/nft/config_paper [--accelerate_config zero3] [--num_processes 32] \
        [--any_field value ...] [--any accelerate launch flag ...]
    nft-trl check --config recipe.yaml [--num_processes N] [--gpu_memory_gb 80] [--num_params 7.6e9]
    nft-trl vllm-serve --model Qwen/Qwen2.5-Math-7B [--tensor_parallel_size 1] ...

`--config` takes a recipe file or the name of a shipped recipe (`nft_trl/recipes/<Model>/<method>/config_<variant>`),
`--accelerate_config` a file or the name of a shipped accelerate config (single_gpu, multi_gpu, zero2, zero3,
zero3_offload). A recipe may hold `accelerate_config` and `num_processes` too; flags override the recipe. The
recipe's `method` picks the training config: `NFTConfig` for nft, TRL's plain `GRPOConfig` for grpo. A key or flag
that is not a field of the script, the training config or `ModelConfig` must be an `accelerate launch` option
(e.g. `--num_machines`, `--machine_rank`, `--main_process_ip`, `--cpu`), which is passed on; anything else stops
the command before it launches, with the field it probably meant. Each function takes the arguments after the
sub-command and returns an exit code; `nft_trl.cli.main` dispatches to them.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import functools
import re
import subprocess
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trl import GRPOConfig, ModelConfig

from nft_trl.algorithm.config import NFTConfig

from .main import exit_code
from .preflight import (
    Launch,
    PreflightError,
    Report,
    config_class_for_world_size,
    launch_from,
    preflight,
    resolve_accelerate_config,
    resolve_recipe,
)
from .train import CONFIG_CLASSES, NFTScriptArguments, RecipeError, make_parser, read_recipe, requested_method


TRAIN_SCRIPT = Path(__file__).with_name("train.py")

# Options of the launcher itself: (flag, type, help). They are registered on the script's parser so that `--help`
# lists them with the fields, and they are removed from the arguments that reach the training script.
_LAUNCH_OPTIONS = (
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
_LAUNCH_DESTS = {flag.removeprefix("--") for flag, _, _ in _LAUNCH_OPTIONS}
_KEY = re.compile(r"^--?[A-Za-z]")  # a flag (a value such as -1e-6 is not one)


@dataclass
class ParsedRun:
    """A recipe and flags parsed for a launch."""

    argv: list[str]
    launch: Launch
    options: dict[str, Any]
    script_args: Any = None
    training_args: Any = None
    model_args: Any = None
    accelerate_args: list[str] = field(default_factory=list)
    cli_unknown: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    recipe: Path | None = None


def parse_run(argv: list[str], prog: str) -> ParsedRun:
    """Parse `argv` (recipe + flags) with TRL's `TrlParser` for the launch's real number of processes.

    Raises `ValueError` (`RecipeError`) for a recipe or accelerate config that cannot be read, or an unknown method.
    """
    argv = list(argv)
    # GRPOConfig's own default sets the alias transformers 5 deprecates; the launcher's output should show the recipe.
    warnings.filterwarnings("ignore", message="`gradient_checkpointing` is deprecated", category=FutureWarning)
    recipe_values: dict[str, Any] = {}
    recipe = None
    if "--config" in argv:
        index = argv.index("--config")
        if index + 1 >= len(argv):
            raise RecipeError("--config needs a recipe file or the name of a shipped recipe.")
        recipe = resolve_recipe(argv[index + 1])
        argv[index + 1] = str(recipe)
        recipe_values = read_recipe(recipe)
    config_class = CONFIG_CLASSES[requested_method(argv, recipe_values)]

    # The world size must be known before the config is built, since the config validates its batch sizes with it.
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    for flag, kind, _ in _LAUNCH_OPTIONS:
        pre.add_argument(flag, type=kind)
    flags, _ = pre.parse_known_args(argv)
    options = {dest: recipe_values.get(dest) for dest in _LAUNCH_DESTS}
    options.update({k: v for k, v in vars(flags).items() if v is not None})
    options["gpu_memory_gb"] = float(options["gpu_memory_gb"] or 80.0)
    launch = launch_from(options["accelerate_config"], options["num_processes"])

    parser = make_parser(config_class_for_world_size(launch.num_processes, config_class), prog=prog)
    for flag, kind, help_text in _LAUNCH_OPTIONS:
        parser.add_argument(flag, type=kind, help=help_text)
    run = ParsedRun(argv=argv, launch=launch, options=options, recipe=recipe)
    try:
        script_args, training_args, model_args, _, config_remaining, cli_remaining = parser.parse_args_and_config(
            argv, return_remaining_strings=True, separate_remaining_strings=True
        )
    except PreflightError as error:
        run.errors = error.problems
        return run
    except ValueError as error:  # the training config's own validation
        run.errors = [str(error)]
        return run
    run.script_args, run.training_args, run.model_args = script_args, training_args, model_args
    run.accelerate_args = config_remaining + cli_remaining
    run.cli_unknown = cli_remaining
    run.errors = unknown_key_problems(config_remaining, cli_remaining, config_class, recipe)
    run.errors += _script_arg_problems(script_args)
    return run


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
    allowed = _LAUNCH_DESTS | accelerate_options()
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
        guess = difflib.get_close_matches(key, sorted(fields | _LAUNCH_DESTS), n=1, cutoff=0.6)
        hint = f"did you mean {guess[0]!r}?" if guess else "`nft-trl train --help` lists every field."
        problems.append(
            f"unknown key {key!r} ({where}): it is not a field of NFTScriptArguments, {config_class.__name__} or "
            f"ModelConfig, nor an option of nft-trl or of `accelerate launch`; {hint}"
        )
    return problems


def _script_arg_problems(script_args: Any) -> list[str]:
    if script_args.dataset_format not in ("auto", "dapo", "verl", "prompt_solution"):
        return [f"dataset_format={script_args.dataset_format!r}: use auto, dapo, verl or prompt_solution."]
    return []


def _check(run: ParsedRun, memory_must_fit: bool) -> Report:
    if run.errors:
        report = Report(errors=list(run.errors))
        report.lines.append(f"Launch: {run.launch.description}")
        return report
    num_params = run.options.get("num_params")
    return preflight(
        script_args=run.script_args,
        training_args=run.training_args,
        model_args=run.model_args,
        launch=run.launch,
        gpu_memory_gb=run.options["gpu_memory_gb"],
        num_params=int(num_params) if num_params else None,
        memory_must_fit=memory_must_fit,
    )


def _without_launch_options(argv: list[str], unknown: list[str]) -> list[str]:
    """`argv` without the launcher's own options and without `unknown` (an ordered sub-sequence of `argv`)."""
    kept, skip = [], False
    for token in argv:
        if skip:
            skip = False
            continue
        name = token.removeprefix("--").split("=", 1)[0] if token.startswith("--") else None
        if name in _LAUNCH_DESTS:
            skip = "=" not in token
            continue
        kept.append(token)
    result, pending = [], list(unknown)
    for token in kept:
        if pending and token == pending[0]:
            pending.pop(0)
        else:
            result.append(token)
    return result


def _parse(argv: list[str], prog: str) -> ParsedRun | int:
    """`parse_run`, or the exit code once it has said why it cannot run."""
    try:
        return parse_run(argv, prog=prog)
    except SystemExit as exit_:  # --help, or an argparse error
        return exit_code(exit_)
    except ValueError as error:  # a recipe or accelerate config that is unknown or unreadable, an unknown method
        print(f"ERROR: {error}", file=sys.stderr)
        return 1


def check_main(argv: list[str]) -> int:
    """`nft-trl check`: print the effective arithmetic and memory estimate; exit 1 on any problem."""
    run = _parse(argv, prog="nft-trl check")
    if isinstance(run, int):
        return run
    print(f"nft-trl check: {run.recipe or 'flags only'}")
    report = _check(run, memory_must_fit=True)
    print(report.text())
    return 0 if report.ok else 1


def train_main(argv: list[str]) -> int:
    """`nft-trl train`: check the recipe for the launch's process count, then `accelerate launch` the script."""
    run = _parse(argv, prog="nft-trl train")
    if isinstance(run, int):
        return run
    # The estimate is rough: a recipe that does not fit is reported, but only inconsistent settings stop the launch.
    report = _check(run, memory_must_fit=False)
    print(report.text())
    if not report.ok:
        print("nft-trl train: not launched; fix the problems above (see `nft-trl check`).", file=sys.stderr)
        return 1

    from accelerate.commands.launch import launch_command, launch_command_parser

    launch_args = list(run.accelerate_args)
    if run.launch.accelerate_config is not None:
        launch_args = ["--config_file", str(resolve_accelerate_config(run.launch.accelerate_config))] + launch_args
    launch_args += ["--num_processes", str(run.launch.num_processes)]
    script_args = _without_launch_options(run.argv, run.cli_unknown)
    accelerate_args = launch_command_parser().parse_args(launch_args + [str(TRAIN_SCRIPT)] + script_args)
    try:
        launch_command(accelerate_args)
    except subprocess.CalledProcessError as error:
        return error.returncode or 1
    return 0


def vllm_serve_main(argv: list[str]) -> int:
    """`nft-trl vllm-serve`: TRL's vLLM server for `vllm_mode: server` (needs `pip install nft-trl[vllm]`)."""
    from trl.scripts.vllm_serve import main, make_parser

    parser = make_parser(prog="nft-trl vllm-serve")
    try:
        script_args, extra_args = parser.parse_args_and_config(args=argv, return_remaining_strings=True)
    except SystemExit as exit_:
        return exit_code(exit_)
    main(script_args, extra_args)  # unknown flags go to `vllm serve`
    return 0
