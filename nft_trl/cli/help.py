"""`nft-trl train --help` and `nft-trl check --help`: the common options on one screen; `--help-all` lists them all.

The short help names the options most runs set (NFT's own fields, the model, the data, the batch, the learning rate,
the run's length, logging and saving, vLLM) with their defaults, read from the dataclasses so that they stay true;
every other field of the training config, `ModelConfig` and the training script, and `accelerate launch`'s options,
are accepted too and listed by `--help-all` (the full parser, over a thousand lines).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from trl import GRPOConfig, ModelConfig

from .arguments import LAUNCH_OPTIONS, NFTScriptArguments, make_parser


#: The option `--config` (TrlParser reads it before parsing, so the dataclasses' parser does not list it).
CONFIG_HELP = (
    "Recipe: a YAML file of `field: value` lines, or a shipped recipe by name (e.g. embedded/nft/config_cpu, "
    "Qwen2.5-Math-7B/nft/config_paper). Flags override the recipe's values."
)
#: Options of `nft-trl check` only.
CHECK_OPTIONS = (
    ("--gpu_memory_gb", "GB", "memory of one GPU, for the memory estimate (default: 80)"),
    ("--num_params", "N", "parameter count, when the model is neither a local folder nor a known model"),
    ("--recipe_only", "", "the recipe only, not this machine (Hub access, vLLM): a cluster's recipe"),
)

#: (title, ((flag, metavar, short description), ...)); the default is read from the dataclasses.
SECTIONS: tuple[tuple[str, tuple[tuple[str, str, str], ...]], ...] = (
    (
        "Recipe and launch",
        (
            ("--config", "RECIPE", "a recipe file, or a shipped one by name (embedded/nft/config_cpu, ...)"),
            ("--accelerate_config", "NAME", "single_gpu, multi_gpu, zero2, zero3, zero3_offload, or a file"),
            ("--num_processes", "N", "processes (GPUs) over all machines (default: the recipe's, else 1)"),
        ),
    ),
    (
        "Model and data",
        (
            ("--model_name_or_path", "PATH", "local folder, Hub id, or 'embedded' (the model shipped with nft-trl)"),
            ("--dataset_name", "PATH", ".parquet/.jsonl/.json/.csv file or folder, Hub id, 'embedded' (addition)"),
            ("--dataset_format", "FORMAT", "auto, dapo, verl or prompt_solution"),
            ("--max_prompt_length", "N", "drop the questions whose prompt is longer (tokens)"),
            ("--reward_funcs", "NAME", "math_verifier, dapo_strict_box, countdown_reward, pkg.fn"),
            ("--method", "nft|grpo", "NFTTrainer, or TRL's GRPOTrainer for the GRPO / DAPO baselines"),
        ),
    ),
    (
        "Batch (answers per generation step = per_device_train_batch_size x processes x steps_per_generation)",
        (
            ("--num_generations", "K", "answers per question"),
            ("--per_device_train_batch_size", "N", "answers per micro-batch on each process"),
            ("--gradient_accumulation_steps", "N", "micro-batches per optimizer step"),
            (
                "--steps_per_generation",
                "N",
                "micro-batches per generation step (default: gradient_accumulation_steps)",
            ),
            ("--max_completion_length", "N", "tokens per answer"),
        ),
    ),
    (
        "Optimization and length of the run",
        (
            ("--learning_rate", "LR", ""),
            ("--lr_scheduler_type", "NAME", "linear, constant, constant_with_warmup, cosine, ..."),
            ("--warmup_steps", "N", "linear warm-up from 0 (below 1: a share of the run)"),
            ("--max_steps", "N", "optimizer steps (-1: num_train_epochs)"),
            ("--num_train_epochs", "N", ""),
            ("--beta", "B", "KL coefficient (0: no reference model)"),
        ),
    ),
    (
        "NFT",
        (
            ("--negative_weight", "W", "weight of the loss on wrong answers (0: RFT)"),
            ("--prompt_weighting", "NAME", "per-question weight of the loss"),
            ("--negative_clip", "C", "floor of the implicit negative's likelihood ratio"),
            ("--loss_type", "NAME", "aggregation of the per-token loss"),
            ("--dynamic_sampling", "BOOL", "refill the batch with questions of mixed answers"),
        ),
    ),
    (
        "Generation",
        (
            ("--use_vllm", "BOOL", "generate with vLLM (needs nft-trl[vllm] and a GPU)"),
            ("--vllm_mode", "MODE", "colocate (on the training GPUs) or server (nft-trl vllm-serve)"),
            ("--temperature", "T", "sampling temperature"),
        ),
    ),
    (
        "Output and hardware",
        (
            ("--output_dir", "PATH", "checkpoints and the final model"),
            ("--logging_steps", "N", ""),
            ("--save_strategy", "NAME", "no, steps or epoch"),
            ("--save_steps", "N", ""),
            ("--report_to", "NAME", "none, wandb, tensorboard, ..."),
            ("--resume_from_checkpoint", "PATH", "a checkpoint folder to resume from"),
            ("--use_cpu", "BOOL", "train on the CPU even with a GPU"),
            ("--bf16", "BOOL", "bfloat16 mixed precision (default: on with a GPU)"),
        ),
    ),
)


def _defaults(config_class: type[GRPOConfig]) -> dict[str, Any]:
    values = {}
    for cls in (NFTScriptArguments, config_class, ModelConfig):
        for f in dataclasses.fields(cls):
            if f.default is not dataclasses.MISSING:
                values[f.name] = f.default
            elif f.default_factory is not dataclasses.MISSING:
                values[f.name] = f.default_factory()
    return values


def short_help(command: str, config_class: type[GRPOConfig], total_options: int) -> str:
    """The short help of `nft-trl <command>` (train or check), defaults from `config_class`'s fields."""
    defaults = _defaults(config_class)
    what = (
        ["Check a recipe for its launch (as `nft-trl check` does), then `accelerate launch` the training."]
        if command == "train"
        else [
            "Check a recipe for its launch, without launching: batch arithmetic, consistency, what this machine",
            "lacks (the Hub for Hub ids, vLLM), the warm-up against the run's length, memory per GPU.",
        ]
    )
    lines = [
        f"usage: nft-trl {command} [--config RECIPE] [--FIELD VALUE ...] [--ACCELERATE_OPTION ...]",
        "",
        *what,
        "Flags override the recipe. The common options:",
    ]
    sections = list(SECTIONS)
    if command == "check":
        sections.insert(1, ("Check", CHECK_OPTIONS))
    for title, options in sections:
        lines += ["", f"{title}:"]
        for flag, metavar, text in options:
            default = defaults.get(flag.removeprefix("--"))
            shown = " ".join(map(str, default)) if isinstance(default, list) else default
            if default in (None, "", []) or "default:" in text:
                description = text
            else:
                description = f"{text} (default: {shown})" if text else f"default: {shown}"
            lines.append(f"  {(flag + ' ' + metavar).strip():<33} {description}".rstrip())
    lines += [
        "",
        f"Every other field of {config_class.__name__}, ModelConfig and the training script, and every option of",
        "`accelerate launch` (--num_machines, --machine_rank, --main_process_ip, --cpu, ...), is accepted too:",
        f"`nft-trl {command} --help-all` lists all {total_options} options. A CPU example, offline, in a few minutes:",
        "  nft-trl train --config embedded/nft/config_cpu",
    ]
    return "\n".join(lines)


def full_parser(config_class: type[GRPOConfig], prog: str):
    """The parser that `--help-all` prints: every field, the launcher's options and `--config` (for display only:
    `--config` is read by TrlParser before parsing)."""
    parser = make_parser(config_class, prog=prog)
    parser.add_argument("--config", metavar="RECIPE", help=CONFIG_HELP)
    for flag, kind, help_text in LAUNCH_OPTIONS:
        parser.add_argument(flag, type=kind, help=help_text)
    if prog.endswith("check"):
        parser.add_argument("--recipe_only", action="store_true", help=CHECK_OPTIONS[-1][2])
    return parser


def count_options(parser) -> int:
    return sum(1 for action in parser._actions if action.option_strings and action.dest != "help")
