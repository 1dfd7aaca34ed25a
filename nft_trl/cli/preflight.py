"""Preflight check of a recipe for a given launch: batch arithmetic, consistency, the machine, a memory estimate.

Used by `nft-trl check` and, before launching, by `nft-trl train`. The launch (`Launch`: processes, sharding) comes
from the accelerate config and `num_processes`; the training config is built for the launch's real process count
(`config_class_for_world_size`), so the batch arithmetic (`batch.py`) is checked for it before `NFTConfig`'s own
validation runs. `preflight` then adds what this machine lacks (`environment.py`: Hub access for Hub ids, vLLM), a
warm-up that outlasts the run, and the memory estimate (`memory.py`); each problem is reported with the setting that
fixes it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers.utils import is_torch_bf16_gpu_available
from trl import GRPOConfig

from nft_trl.algorithm.config import NFTConfig

from .arguments import read_recipe
from .batch import arithmetic, batch_problems, planned_steps, warmup_warning
from .common import EMBEDDED
from .environment import environment_problems, missing_model_folder
from .memory import GB, Launch, estimate_memory, model_shape, params_text


ACCELERATE_CONFIGS_DIR = Path(__file__).parents[1] / "accelerate_configs"
RECIPES_DIR = Path(__file__).parents[1] / "recipes"


class PreflightError(ValueError):
    """A recipe is inconsistent for the launch. `problems` holds one message per issue, each naming its fix."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("\n".join(f"- {p}" for p in self.problems))


# --------------------------------------------------------------------------------------------------------------------
# Launch: accelerate configs, recipes, world size


def resolve_accelerate_config(name_or_path: str) -> Path:
    """A path to an accelerate config file, or the name of one shipped in `nft_trl/accelerate_configs`."""
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    shipped = ACCELERATE_CONFIGS_DIR / f"{name_or_path.removesuffix('.yaml')}.yaml"
    if shipped.is_file():
        return shipped
    names = ", ".join(sorted(p.stem for p in ACCELERATE_CONFIGS_DIR.glob("*.yaml")))
    raise ValueError(f"Accelerate config {name_or_path!r} is neither a file nor a shipped config ({names}).")


def resolve_recipe(name_or_path: str) -> Path:
    """A path to a recipe file, or a recipe shipped in `nft_trl/recipes` (e.g. `Qwen2.5-Math-7B/nft/config_paper`)."""
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    stem = name_or_path.removesuffix(".yaml").removeprefix("recipes/")
    shipped = RECIPES_DIR / f"{stem}.yaml"
    if shipped.is_file():
        return shipped
    raise ValueError(
        f"Recipe {name_or_path!r} is neither a file nor a shipped recipe. Shipped recipes: "
        + ", ".join(shipped_recipes())
    )


def shipped_recipes() -> list[str]:
    return sorted(str(p.relative_to(RECIPES_DIR).with_suffix("")) for p in RECIPES_DIR.rglob("*.yaml"))


def launch_from(accelerate_config: str | None, num_processes: int | None) -> Launch:
    """The launch an accelerate config describes; `num_processes` overrides the config's count."""
    if accelerate_config is None:
        return Launch(num_processes=num_processes or 1)
    config = read_recipe(resolve_accelerate_config(accelerate_config))
    ds = config.get("deepspeed_config") or {}
    is_deepspeed = config.get("distributed_type") == "DEEPSPEED"
    return Launch(
        num_processes=num_processes or int(config.get("num_processes", 1)),
        accelerate_config=accelerate_config,
        zero_stage=int(ds.get("zero_stage", 0)) if is_deepspeed else 0,
        offload_optimizer=is_deepspeed and str(ds.get("offload_optimizer_device", "none")) not in ("none", "None"),
        offload_params=is_deepspeed and str(ds.get("offload_param_device", "none")) not in ("none", "None"),
    )


def config_class_for_world_size(world_size: int, config_class: type[GRPOConfig] = NFTConfig) -> type[GRPOConfig]:
    """`config_class` (`NFTConfig`, or `GRPOConfig` for the baselines) as the launched processes will see it:
    `world_size` processes, and the batch arithmetic checked (with fixes named) before the config's own
    `__post_init__` validates it.

    The launcher process is a single process: building the config there directly would check the batch sizes as if
    the launch had one process. This subclass reports `world_size` without starting any process group. The launching
    machine may have no GPU (a login node, a laptop running `nft-trl check`): GRPOConfig's default bf16 is then left
    off here, since the launched processes check their own hardware.
    """

    class LaunchConfig(config_class):
        @property
        def world_size(self) -> int:
            return world_size

        def __post_init__(self):
            problems = batch_problems(self, world_size)
            if problems:
                raise PreflightError(problems)
            if self.bf16 is None and not self.fp16 and not is_torch_bf16_gpu_available():
                self.bf16 = False
            super().__post_init__()

    LaunchConfig.__name__ = LaunchConfig.__qualname__ = config_class.__name__
    return LaunchConfig


# --------------------------------------------------------------------------------------------------------------------
# The whole check


@dataclass
class Report:
    lines: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    fits: bool | None = None

    @property
    def ok(self) -> bool:
        return not self.errors

    def text(self) -> str:
        out = list(self.lines)
        out.extend(f"WARNING: {w}" for w in self.warnings)
        out.extend(f"ERROR: {e}" for e in self.errors)
        warned = (
            f" ({len(self.warnings)} warning{'s' if len(self.warnings) > 1 else ''} above)" if self.warnings else ""
        )
        out.append(f"Result: OK{warned}" if self.ok else f"Result: {len(self.errors)} problem(s) to fix")
        return "\n".join(out)


def known_questions(script_args: Any) -> int | None:
    """The number of training questions when it is known without loading the data (the embedded task, or
    `max_train_samples` as an upper bound), else `None`."""
    known = None
    if script_args.dataset_name == EMBEDDED:
        from nft_trl.embedded.demo import DEMO_TRAIN_PROMPTS

        known = DEMO_TRAIN_PROMPTS
    limit = getattr(script_args, "max_train_samples", None)
    if limit is not None:
        known = limit if known is None else min(known, limit)
    return known


def preflight(
    *,
    script_args: Any,
    training_args: Any,
    model_args: Any,
    launch: Launch,
    gpu_memory_gb: float = 80.0,
    num_params: int | None = None,
    memory_must_fit: bool = True,
    check_environment: bool = True,
) -> Report:
    """Check parsed arguments for `launch`: arithmetic, consistency with the model and vLLM, the warm-up against the
    run's length, memory per GPU, and (`check_environment`) what this machine lacks for the run."""
    report = Report()
    n = launch.num_processes
    max_prompt_length = getattr(script_args, "max_prompt_length", None)
    model = model_args.model_name_or_path
    shape, source = model_shape(model)
    report.lines.append(f"Launch: {launch.description}")
    report.lines.append(f"Trainer: {getattr(script_args, 'method', 'nft')}; model: {model}")
    missing = missing_model_folder(model) if model else None
    if missing:
        report.errors.append(f"model_name_or_path: {missing}")
    if check_environment:
        report.errors.extend(environment_problems(script_args, training_args, model_args))
    report.lines.append("Batch arithmetic:")
    arith = arithmetic(training_args, n, max_prompt_length)
    report.lines.extend(f"  {line}" for line in arith.lines())

    seq = arith.sequence_length
    if max_prompt_length is None:
        report.warnings.append(
            "max_prompt_length is not set: prompts are not length-filtered, and the token counts above are for the "
            "answers only. Set max_prompt_length (the paper: 512 for 7B, 2048 for 32B)."
        )
    if shape is not None and shape.max_position_embeddings and seq > shape.max_position_embeddings:
        report.errors.append(
            f"max_prompt_length + max_completion_length = {seq} exceeds the model's context "
            f"({shape.max_position_embeddings} tokens, {source}). Lower max_completion_length to "
            f"{shape.max_position_embeddings - (max_prompt_length or 0)}."
        )
    if training_args.use_vllm:
        if training_args.vllm_mode == "colocate" and n % training_args.vllm_tensor_parallel_size:
            report.errors.append(
                f"vllm_tensor_parallel_size ({training_args.vllm_tensor_parallel_size}) must divide the number of "
                f"processes ({n}) in colocate mode. Set it to a divisor of {n} (1, 2, 4 or 8 within a node)."
            )
        max_len = training_args.vllm_max_model_length
        if max_len is not None and max_len < seq:
            report.errors.append(
                f"vllm_max_model_length ({max_len}) is shorter than max_prompt_length + max_completion_length "
                f"({seq}): vLLM would reject or cut long prompts. Set vllm_max_model_length: {seq}."
            )
    if launch.zero_stage and getattr(model_args, "use_peft", False) and launch.zero_stage == 3 and n == 1:
        report.warnings.append("ZeRO-3 on one process shards nothing; use --accelerate_config single_gpu.")
    warmup = warmup_warning(training_args, planned_steps(training_args, n, known_questions(script_args)))
    if warmup:
        report.warnings.append(warmup)

    if num_params is None and shape is not None:
        num_params = shape.num_params()
    if num_params is None:
        report.warnings.append(f"memory not estimated: model size unknown ({source}). Pass --num_params.")
        return report
    report.lines.append(
        f"Memory per GPU (rough estimate; model {params_text(num_params)} params from "
        f"{source if shape else '--num_params'}):"
    )
    estimate = estimate_memory(
        training_args=training_args,
        model_args=model_args,
        launch=launch,
        num_params=num_params,
        shape=shape,
        max_prompt_length=max_prompt_length,
        gpu_memory_gb=gpu_memory_gb,
    )
    report.lines.extend(estimate.lines(gpu_memory_gb))
    report.fits = estimate.fits(gpu_memory_gb)
    if not report.fits:
        message = (
            f"the estimated peak ({estimate.peak / GB:.1f} GB) exceeds {gpu_memory_gb:g} GB per GPU. Shard more "
            "(--accelerate_config zero3, or zero3_offload), lower per_device_train_batch_size (raising "
            "gradient_accumulation_steps and steps_per_generation by the same factor keeps the arithmetic), keep "
            "activation_checkpointing on, or with colocated vLLM set vllm_enable_sleep_mode / lower "
            "vllm_gpu_memory_utilization."
        )
        (report.errors if memory_must_fit else report.warnings).append(message)
    return report
