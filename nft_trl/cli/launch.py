"""`nft-trl train`, `check` and `vllm-serve`: a recipe and flags, checked, then handed to `accelerate launch`.

    nft-trl train --config Qwen2.5-Math-7B/nft/config_paper [--accelerate_config zero3] [--num_processes 32] \
        [--any_field value ...] [--any accelerate launch flag ...]
    nft-trl check --config recipe.yaml [--num_processes N] [--gpu_memory_gb 80] [--num_params 7.6e9] [--recipe_only]
    nft-trl vllm-serve --model Qwen/Qwen2.5-Math-7B [--tensor_parallel_size 1] ...

`--config` takes a recipe file or the name of a shipped recipe (`nft_trl/recipes/<Model>/<method>/config_<variant>`),
`--accelerate_config` a file or the name of a shipped accelerate config (single_gpu, multi_gpu, zero2, zero3,
zero3_offload). A recipe may hold `accelerate_config` and `num_processes` too; flags override the recipe. The
recipe's `method` picks the training config: `NFTConfig` for nft, TRL's plain `GRPOConfig` for grpo. A key or flag
that is not a field of the script, the training config or `ModelConfig` must be an `accelerate launch` option
(e.g. `--num_machines`, `--machine_rank`, `--main_process_ip`, `--cpu`), which is passed on; anything else stops
the command before it launches, with the field it probably meant. `--help` shows the common options (`help.py`),
`--help-all` every one. Each function takes the arguments after the sub-command and returns an exit code;
`nft_trl.cli.main` dispatches to them. A launch of one local process trains in the `nft-trl` process itself, with the
environment `accelerate launch` would give it (no second start-up of torch and TRL).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .arguments import (
    CONFIG_CLASSES,
    LAUNCH_DESTS,
    LAUNCH_OPTIONS,
    RecipeError,
    make_parser,
    read_recipe,
    requested_method,
    script_arg_problems,
    unknown_key_problems,
)
from .common import exit_code, resolve_embedded_model
from .help import count_options, full_parser, short_help
from .memory import Launch
from .preflight import (
    PreflightError,
    Report,
    config_class_for_world_size,
    launch_from,
    preflight,
    resolve_accelerate_config,
    resolve_recipe,
)


TRAIN_SCRIPT = Path(__file__).with_name("train.py")
#: `nft-trl check` only: check the recipe, not this machine (for a cluster's recipe checked from a laptop).
RECIPE_ONLY = "--recipe_only"


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
    for flag, kind, _ in LAUNCH_OPTIONS:
        pre.add_argument(flag, type=kind)
    flags, _ = pre.parse_known_args(argv)
    options = {dest: recipe_values.get(dest) for dest in LAUNCH_DESTS}
    options.update({k: v for k, v in vars(flags).items() if v is not None})
    options["gpu_memory_gb"] = float(options["gpu_memory_gb"] or 80.0)
    launch = launch_from(options["accelerate_config"], options["num_processes"])

    parser = make_parser(config_class_for_world_size(launch.num_processes, config_class), prog=prog)
    for flag, kind, help_text in LAUNCH_OPTIONS:
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
    resolve_embedded_model(model_args)
    run.script_args, run.training_args, run.model_args = script_args, training_args, model_args
    run.accelerate_args = config_remaining + cli_remaining
    run.cli_unknown = cli_remaining
    run.errors = unknown_key_problems(config_remaining, cli_remaining, config_class, recipe)
    run.errors += script_arg_problems(script_args, model_args)
    return run


def _check(run: ParsedRun, memory_must_fit: bool, check_environment: bool = True) -> Report:
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
        check_environment=check_environment,
    )


def _without_launch_options(argv: list[str], unknown: list[str]) -> list[str]:
    """`argv` without the launcher's own options and without `unknown` (an ordered sub-sequence of `argv`)."""
    kept, skip = [], False
    for token in argv:
        if skip:
            skip = False
            continue
        name = token.removeprefix("--").split("=", 1)[0] if token.startswith("--") else None
        if name in LAUNCH_DESTS:
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


def print_help(argv: list[str], command: str) -> None:
    """The short help (`-h`, `--help`), or every option (`--help-all`); defaults of the recipe's method's config."""
    try:
        config_class = CONFIG_CLASSES[requested_method([a for a in argv if a not in ("-h", "--help", "--help-all")])]
    except (ValueError, OSError):  # an unreadable recipe or an unknown method: the help of the default method
        config_class = CONFIG_CLASSES["nft"]
    parser = full_parser(config_class, prog=f"nft-trl {command}")
    if "--help-all" in argv:
        parser.print_help()
    else:
        print(short_help(command, config_class, count_options(parser)))


def _parse(argv: list[str], prog: str) -> ParsedRun | int:
    """`parse_run`, or the exit code once it has said why it cannot run (the help: 0)."""
    if any(token in ("-h", "--help", "--help-all") for token in argv):
        print_help(argv, prog.split()[-1])
        return 0
    try:
        return parse_run(argv, prog=prog)
    except SystemExit as exit_:  # --help, or an argparse error
        return exit_code(exit_)
    except ValueError as error:  # a recipe or accelerate config that is unknown or unreadable, an unknown method
        print(f"ERROR: {error}", file=sys.stderr)
        return 1


def check_main(argv: list[str]) -> int:
    """`nft-trl check`: print the effective arithmetic and memory estimate, and what this machine lacks for the run
    (not with `--recipe_only`); exit 1 on any problem."""
    recipe_only = RECIPE_ONLY in argv
    run = _parse([a for a in argv if a != RECIPE_ONLY], prog="nft-trl check")
    if isinstance(run, int):
        return run
    print(f"nft-trl check: {run.recipe or 'flags only'}")
    report = _check(run, memory_must_fit=True, check_environment=not recipe_only)
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
    launch_argv = launch_args + [str(TRAIN_SCRIPT)] + script_args
    if _train_in_this_process(launch_command_parser().parse_args(launch_argv)):
        return 0
    try:
        launch_command(launch_command_parser().parse_args(launch_argv))
    except subprocess.CalledProcessError as error:
        return error.returncode or 1
    return 0


def _train_in_this_process(accelerate_args: argparse.Namespace) -> bool:
    """Train here when `accelerate launch` would start one plain local process (its simple launcher): with the
    environment that launcher gives its child, but without a second start-up of torch, transformers and TRL (6 s of
    the 55 s of `nft-trl train --config embedded/nft/config_cpu --max_steps 2` on one CPU core). False, having done nothing, for every other launch (several processes or machines, DeepSpeed, FSDP,
    Megatron, TPU, MPI, a cloud environment), which `accelerate launch` starts as usual."""
    from accelerate.commands.launch import _validate_launch_command
    from accelerate.utils import ComputeEnvironment, prepare_simple_launcher_cmd_env

    args, defaults, _ = _validate_launch_command(accelerate_args)
    launcher_of_its_own = args.use_deepspeed or args.use_fsdp or args.use_megatron_lm or args.multi_gpu or args.tpu
    elsewhere = defaults is not None and defaults.compute_environment != ComputeEnvironment.LOCAL_MACHINE
    several = (args.num_processes or 1) != 1 or args.num_machines > 1 or args.mpirun_hostfile is not None
    if launcher_of_its_own or elsewhere or several or args.no_python or args.module:
        return False
    _, environment = prepare_simple_launcher_cmd_env(args)
    os.environ.update(environment)
    import torch

    if environment.get("OMP_NUM_THREADS"):  # torch read OMP_NUM_THREADS when it was imported
        torch.set_num_threads(int(environment["OMP_NUM_THREADS"]))

    from .train import main, parse_args

    main(*parse_args(list(args.training_script_args)))
    return True


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
