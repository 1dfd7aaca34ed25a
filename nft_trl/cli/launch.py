"""`nft-trl` sub-commands: `train` (launch a recipe through accelerate), `check` (preflight), `vllm-serve`.

    nft-trl train --config Qwen2.5-Math-7B/nft/config_paper [--accelerate_config zero3] [--num_processes 32] \
        [--any_field value ...] [--any accelerate launch flag ...]
    nft-trl check --config recipe.yaml [--num_processes N] [--gpu_memory_gb 80] [--num_params 7.6e9]
    nft-trl vllm-serve --model Qwen/Qwen2.5-Math-7B [--tensor_parallel_size 1] ...

`--config` takes a recipe file or the name of a shipped recipe (`nft_trl/recipes/<Model>/<method>/config_<variant>`),
`--accelerate_config` a file or the name of a shipped accelerate config (single_gpu, multi_gpu, zero2, zero3,
zero3_offload). A recipe may hold `accelerate_config` and `num_processes` too; flags override the recipe. Any
other key or flag that is not a field of the script, `NFTConfig` or `ModelConfig` goes to `accelerate launch`
(e.g. `--num_machines`, `--machine_rank`, `--main_process_ip`, `--cpu`).

Each function takes the arguments after the sub-command and returns an exit code; `python -m nft_trl.commands
<train|check|vllm-serve> ...` runs them without the console script.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .preflight import (
    Launch,
    PreflightError,
    Report,
    config_class_for_world_size,
    launch_from,
    preflight,
    resolve_recipe,
)


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
    """Parse `argv` (recipe + flags) with TRL's `TrlParser` for the launch's real number of processes."""
    from .train import make_parser

    argv = list(argv)
    # GRPOConfig's own default sets the alias transformers 5 deprecates; the launcher's output should show the recipe.
    warnings.filterwarnings("ignore", message="`gradient_checkpointing` is deprecated", category=FutureWarning)
    recipe_values: dict[str, Any] = {}
    recipe = None
    if "--config" in argv:
        index = argv.index("--config")
        if index + 1 >= len(argv):
            raise SystemExit(f"{prog}: --config needs a recipe file or name")
        recipe = resolve_recipe(argv[index + 1])
        argv[index + 1] = str(recipe)
        recipe_values = yaml.safe_load(recipe.read_text()) or {}

    # The world size must be known before the config is built, since the config validates its batch sizes with it.
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    for flag, kind, _ in _LAUNCH_OPTIONS:
        pre.add_argument(flag, type=kind)
    flags, _ = pre.parse_known_args(argv)
    options = {dest: recipe_values.get(dest) for dest in _LAUNCH_DESTS}
    options.update({k: v for k, v in vars(flags).items() if v is not None})
    options["gpu_memory_gb"] = float(options["gpu_memory_gb"] or 80.0)
    launch = launch_from(options["accelerate_config"], options["num_processes"])

    parser = make_parser(config_class_for_world_size(launch.num_processes), prog=prog)
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
    except ValueError as error:  # NFTConfig's / GRPOConfig's own validation
        run.errors = [str(error)]
        return run
    run.script_args, run.training_args, run.model_args = script_args, training_args, model_args
    run.accelerate_args = config_remaining + cli_remaining
    run.cli_unknown = cli_remaining
    run.errors = _script_arg_problems(script_args)
    return run


def _script_arg_problems(script_args: Any) -> list[str]:
    problems = []
    if script_args.method not in ("nft", "grpo"):
        problems.append(f"method={script_args.method!r} is not supported: use 'nft' or 'grpo'.")
    if script_args.dataset_format not in ("auto", "dapo", "verl", "prompt_solution"):
        problems.append(f"dataset_format={script_args.dataset_format!r}: use auto, dapo, verl or prompt_solution.")
    return problems


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


def check_main(argv: list[str]) -> int:
    """`nft-trl check`: print the effective arithmetic and memory estimate; exit 1 on any problem."""
    try:
        run = parse_run(argv, prog="nft-trl check")
    except SystemExit as exit_:  # --help, or an argparse error
        return _exit_code(exit_)
    except ValueError as error:  # an unknown recipe or accelerate config
        print(f"ERROR: {error}", file=sys.stderr)
        return 1
    print(f"nft-trl check: {run.recipe or 'flags only'}")
    report = _check(run, memory_must_fit=True)
    print(report.text())
    return 0 if report.ok else 1


def train_main(argv: list[str]) -> int:
    """`nft-trl train`: check the recipe for the launch's process count, then `accelerate launch` the script."""
    try:
        run = parse_run(argv, prog="nft-trl train")
    except SystemExit as exit_:
        return _exit_code(exit_)
    except ValueError as error:
        print(f"ERROR: {error}", file=sys.stderr)
        return 1
    # The estimate is rough: a recipe that does not fit is reported, but only inconsistent settings stop the launch.
    report = _check(run, memory_must_fit=False)
    print(report.text())
    if not report.ok:
        print("nft-trl train: not launched; fix the problems above (see `nft-trl check`).", file=sys.stderr)
        return 1

    from accelerate.commands.launch import launch_command, launch_command_parser

    launch_args = list(run.accelerate_args)
    if run.launch.accelerate_config is not None:
        from .preflight import resolve_accelerate_config

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
        return _exit_code(exit_)
    main(script_args, extra_args)  # unknown flags go to `vllm serve`
    return 0


def _exit_code(exit_: SystemExit) -> int:
    return exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)


COMMANDS = {"train": train_main, "check": check_main, "vllm-serve": vllm_serve_main}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        print(f"usage: python -m nft_trl.commands {{{','.join(COMMANDS)}}} ...", file=sys.stderr)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    return COMMANDS[argv[0]](argv[1:])


if __name__ == "__main__":
    raise SystemExit(main())
