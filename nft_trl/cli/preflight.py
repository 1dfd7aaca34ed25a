"""Preflight check of a recipe for a given launch: batch arithmetic, consistency, and a memory estimate per GPU.

Used by `nft-trl check` and, before launching, by `nft-trl train`. TRL's launcher builds `GRPOConfig` in the
launching process, where the world size is 1, so batch sizes are validated for the wrong process count. Here the
arithmetic is done for the launch's real process count (`config_class_for_world_size`) before `NFTConfig`'s own
validation runs, and each inconsistency is reported with the setting that fixes it.

The memory estimate is a rough, documented sum (weights, gradients, Adam states, activations, logits, the colocated
vLLM share); it is meant to catch recipes that cannot fit, not to predict the allocator's peak to the GB.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers.utils import is_torch_bf16_gpu_available
from trl import GRPOConfig

from nft_trl.algorithm.config import NFTConfig

from .train import read_recipe


GB = 1e9  # memory is reported in GB (10^9 bytes), as GPU vendors state it (an H100 has 80 GB)
BYTES_BF16 = 2
BYTES_FP32 = 4
#: Mixed-precision Adam under DeepSpeed: an fp32 master copy of the weights plus two fp32 moments.
DEEPSPEED_OPTIMIZER_BYTES_PER_PARAM = 12
#: Logits of the completion tokens: bf16 logits, their temperature-scaled copy, and their gradient (bf16 each).
LOGITS_BYTES_PER_ELEMENT = 6
#: CUDA context, NCCL buffers and allocator fragmentation: a flat allowance.
FRAMEWORK_OVERHEAD_GB = 3.0

ACCELERATE_CONFIGS_DIR = Path(__file__).parents[1] / "accelerate_configs"
RECIPES_DIR = Path(__file__).parents[1] / "recipes"


class PreflightError(ValueError):
    """A recipe is inconsistent for the launch. `problems` holds one message per issue, each naming its fix."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("\n".join(f"- {p}" for p in self.problems))


# --------------------------------------------------------------------------------------------------------------------
# Models


@dataclass(frozen=True)
class ModelShape:
    """The architecture numbers of a decoder-only transformer (Qwen2 / Llama layout) that set its memory needs."""

    num_layers: int
    hidden_size: int
    intermediate_size: int
    num_attention_heads: int
    num_key_value_heads: int
    vocab_size: int
    tie_word_embeddings: bool
    max_position_embeddings: int | None = None
    attention_bias: bool = True  # Qwen2 has biases on q, k, v

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def kv_dim(self) -> int:
        return self.num_key_value_heads * self.head_dim

    @property
    def params_per_layer(self) -> int:
        h, kv, i = self.hidden_size, self.kv_dim, self.intermediate_size
        attention = h * h + 2 * h * kv + h * h + ((h + 2 * kv) if self.attention_bias else 0)
        mlp = 3 * h * i  # gate, up, down
        return attention + mlp + 2 * h  # two RMSNorms

    def num_params(self) -> int:
        embeddings = self.vocab_size * self.hidden_size
        lm_head = 0 if self.tie_word_embeddings else embeddings
        return embeddings + lm_head + self.num_layers * self.params_per_layer + self.hidden_size

    def lora_params(self, r: int, target_modules: list[str] | str | None) -> int:
        """Trainable LoRA parameters: `r * (in + out)` per adapted linear layer."""
        h, kv, i = self.hidden_size, self.kv_dim, self.intermediate_size
        shapes = {
            "q_proj": (h, h),
            "k_proj": (h, kv),
            "v_proj": (h, kv),
            "o_proj": (h, h),
            "gate_proj": (h, i),
            "up_proj": (h, i),
            "down_proj": (i, h),
        }
        if target_modules is None:
            targets = ["q_proj", "v_proj"]  # PEFT's default for Qwen2 / Llama
        elif isinstance(target_modules, str) and target_modules == "all-linear":
            targets = list(shapes)
        else:
            targets = [target_modules] if isinstance(target_modules, str) else list(target_modules)
        return self.num_layers * sum(r * sum(shapes[t]) for t in targets if t in shapes)

    @classmethod
    def from_config_dict(cls, config: dict[str, Any]) -> ModelShape:
        return cls(
            num_layers=config["num_hidden_layers"],
            hidden_size=config["hidden_size"],
            intermediate_size=config["intermediate_size"],
            num_attention_heads=config["num_attention_heads"],
            num_key_value_heads=config.get("num_key_value_heads") or config["num_attention_heads"],
            vocab_size=config["vocab_size"],
            tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
            max_position_embeddings=config.get("max_position_embeddings"),
            attention_bias=config.get("model_type") == "qwen2" or bool(config.get("attention_bias", False)),
        )


#: Architectures of the models the recipes train, as stated in each model's `config.json` on the Hub
#: (num_hidden_layers, hidden_size, intermediate_size, num_attention_heads, num_key_value_heads, vocab_size,
#: tie_word_embeddings, max_position_embeddings). Parameter counts follow from them: 1.54B, 7.62B, 32.8B.
KNOWN_MODELS: dict[str, ModelShape] = {
    "Qwen/Qwen2.5-Math-1.5B": ModelShape(28, 1536, 8960, 12, 2, 151936, True, 4096),
    "Qwen/Qwen2.5-Math-7B": ModelShape(28, 3584, 18944, 28, 4, 152064, False, 4096),
    "Qwen/Qwen2.5-32B": ModelShape(64, 5120, 27648, 40, 8, 152064, False, 131072),
}


def missing_model_folder(name_or_path: str) -> str | None:
    """The problem with a model argument that names a local folder which does not exist, else `None`.

    The rule that tells a local path from a Hub id: a value that exists is local; a value that does not is read as a
    local path when it starts with `.`, `/` or `~`, ends with `/`, holds a backslash or the OS path separator beyond
    one `owner/name` slash (two or more slashes), or when its first part is an existing folder (`outputs/ckpt`
    with `outputs/` present); anything else (`name` or `owner/name`, e.g. `Qwen/Qwen2.5-Math-7B`) is a Hub id and is
    checked by the Hub when the model is loaded.
    """
    path = Path(name_or_path).expanduser()
    if path.exists():
        return None
    parts = name_or_path.split("/")
    local = (
        name_or_path.startswith((".", "/", "~"))
        or name_or_path.endswith("/")
        or "\\" in name_or_path
        or (os.sep != "/" and os.sep in name_or_path)
        or len(parts) > 2
        or (len(parts) == 2 and Path(parts[0]).expanduser().is_dir())
    )
    if not local:
        return None
    return (
        f"the model folder {name_or_path} does not exist ({path.resolve()}). Give an existing checkpoint folder, "
        "or a Hub id of the form owner/name."
    )


def model_shape(name_or_path: str | None) -> tuple[ModelShape | None, str]:
    """The shape of a model and where it came from: a local `config.json`, else `KNOWN_MODELS`, else `None`."""
    if not name_or_path:
        return None, "no model_name_or_path"
    config_file = Path(name_or_path).expanduser() / "config.json"
    if config_file.is_file():
        config = json.loads(config_file.read_text())
        config = config.get("text_config", config)
        return ModelShape.from_config_dict(config), f"{config_file}"
    for name, shape in KNOWN_MODELS.items():
        if (
            name.lower() == name_or_path.lower()
            or name.split("/")[-1].lower() == name_or_path.rstrip("/").split("/")[-1].lower()
        ):
            return shape, f"built-in table ({name}'s config.json)"
    return None, f"{name_or_path!r} is not a local folder nor a known model"


# --------------------------------------------------------------------------------------------------------------------
# Launch: accelerate configs, recipes, world size


@dataclass(frozen=True)
class Launch:
    """What the launch does with the processes: how many, and how DeepSpeed shards the training state."""

    num_processes: int = 1
    accelerate_config: str | None = None
    zero_stage: int = 0  # 0: no ZeRO (single GPU or DDP)
    offload_optimizer: bool = False
    offload_params: bool = False

    @property
    def description(self) -> str:
        name = self.accelerate_config or "no accelerate config"
        if self.zero_stage == 0:
            return f"{_processes(self.num_processes)}, {name} (no ZeRO: full training state on every GPU)"
        offload = [
            what for what, on in (("optimizer", self.offload_optimizer), ("weights", self.offload_params)) if on
        ]
        offload_text = f", {' and '.join(offload)} offloaded to CPU" if offload else ""
        return f"{_processes(self.num_processes)}, {name} (DeepSpeed ZeRO-{self.zero_stage}{offload_text})"


def _processes(n: int) -> str:
    return "1 process" if n == 1 else f"{n} processes"


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
# Batch arithmetic


def batch_problems(args: Any, num_processes: int) -> list[str]:
    """Inconsistent batch settings for `num_processes`, each with its fix. Reads the values as given (before
    `GRPOConfig.__post_init__` derives `generation_batch_size` / `steps_per_generation`)."""
    problems = []
    per_device, ga, k = args.per_device_train_batch_size, args.gradient_accumulation_steps, args.num_generations
    spg, gbs = args.steps_per_generation, args.generation_batch_size
    global_micro = per_device * num_processes
    if k < 2:
        problems.append(
            f"num_generations={k}: NFT needs at least 2 answers per question to tell correct from wrong ones "
            "(the paper uses 16). Set num_generations >= 2."
        )
        return problems
    if spg is not None and gbs is not None:
        problems.append(
            f"generation_batch_size ({gbs}) and steps_per_generation ({spg}) are both set; they say the same thing "
            f"(generation_batch_size = per_device_train_batch_size x processes x steps_per_generation). Remove "
            "generation_batch_size and keep steps_per_generation."
        )
        return problems
    if gbs is not None:
        if gbs % global_micro:
            problems.append(
                f"generation_batch_size ({gbs}) is not a multiple of per_device_train_batch_size x processes "
                f"({per_device} x {num_processes} = {global_micro}). Set steps_per_generation instead (e.g. "
                f"{max(1, round(gbs / global_micro))}) and remove generation_batch_size."
            )
            return problems
        spg = gbs // global_micro
    elif spg is None:
        spg = ga
    answers = global_micro * spg
    if answers % k:
        step = k // math.gcd(global_micro, k)
        problems.append(
            f"answers per generation step ({per_device} x {num_processes} processes x {spg} steps_per_generation = "
            f"{answers}) is not a multiple of num_generations ({k}), so a question's answers would be split across "
            f"generation steps. Set steps_per_generation to a multiple of {step} (e.g. {_round_up(spg, step)})."
        )
    if spg % ga:
        problems.append(
            f"steps_per_generation ({spg}) is not a multiple of gradient_accumulation_steps ({ga}): an optimizer step "
            "would mix answers from two generation steps. Set steps_per_generation to a multiple of "
            f"{ga} (e.g. {_round_up(spg, ga)}), or gradient_accumulation_steps to a divisor of {spg}."
        )
    if getattr(args, "do_eval", False) and str(args.eval_strategy) not in ("no", "IntervalStrategy.NO"):
        k_eval = args.num_generations_eval or k
        eval_batch = args.per_device_eval_batch_size * num_processes
        if eval_batch % k_eval:
            step = k_eval // math.gcd(num_processes, k_eval)
            problems.append(
                f"the global eval batch ({args.per_device_eval_batch_size} x {num_processes} processes = {eval_batch}) "
                f"is not a multiple of num_generations_eval ({k_eval}). Set per_device_eval_batch_size to a multiple "
                f"of {step}."
            )
    return problems


def _round_up(value: int, multiple: int) -> int:
    return max(multiple, -(-value // multiple) * multiple)


@dataclass
class Arithmetic:
    """The effective batch arithmetic of a parsed config for a launch, in TRL's and in verl's terms."""

    num_processes: int
    per_device: int
    gradient_accumulation_steps: int
    steps_per_generation: int
    num_generations: int
    num_iterations: int
    max_prompt_length: int | None
    max_completion_length: int
    max_steps: int

    @property
    def answers_per_generation(self) -> int:
        return self.per_device * self.num_processes * self.steps_per_generation

    @property
    def questions_per_generation(self) -> int:
        return self.answers_per_generation // self.num_generations

    @property
    def answers_per_optimizer_step(self) -> int:
        return self.per_device * self.num_processes * self.gradient_accumulation_steps

    @property
    def optimizer_steps_per_generation(self) -> float:
        return self.steps_per_generation * self.num_iterations / self.gradient_accumulation_steps

    @property
    def on_policy(self) -> bool:
        return self.optimizer_steps_per_generation <= 1

    @property
    def sequence_length(self) -> int:
        return (self.max_prompt_length or 0) + self.max_completion_length

    def lines(self) -> list[str]:
        k, opt = self.num_generations, self.optimizer_steps_per_generation
        seq = self.sequence_length
        prompt_note = "" if self.max_prompt_length else " (no max_prompt_length: answers only)"
        policy = (
            "on-policy (one optimizer step per generated batch: ratio R = 1, NFT's gradient equals Dr. GRPO's)"
            if self.on_policy
            else f"off-policy ({opt:g} optimizer steps per generated batch: ratio R != 1 after the first; the paper: 16)"
        )
        lines = [
            f"questions per generation step      {self.questions_per_generation:>10,}   (verl: data.train_batch_size)",
            f"answers per question               {k:>10,}   (num_generations; verl: rollout.n)",
            f"answers per generation step        {self.answers_per_generation:>10,}   (= per_device_train_batch_size "
            f"{self.per_device} x {self.num_processes} processes x steps_per_generation {self.steps_per_generation})",
            f"answers per optimizer step         {self.answers_per_optimizer_step:>10,}   (= {self.per_device} x "
            f"{self.num_processes} x gradient_accumulation_steps {self.gradient_accumulation_steps}; "
            f"{self.answers_per_optimizer_step / k:g} questions; verl: ppo_mini_batch_size)",
            f"optimizer steps per generation     {opt:>10g}   {policy}",
            f"tokens per micro-batch per GPU  <= {self.per_device * seq:>10,}   (per_device_train_batch_size x "
            f"(max_prompt_length + max_completion_length = {seq}){prompt_note})",
            f"tokens per optimizer step       <= {self.answers_per_optimizer_step * seq:>10,}",
            f"tokens per generation step      <= {self.answers_per_generation * seq:>10,}",
        ]
        if self.max_steps > 0:
            generations = self.max_steps / opt
            lines.append(
                f"generation steps in max_steps={self.max_steps:,}: {generations:g} "
                f"({generations * self.questions_per_generation:,.0f} questions drawn)"
            )
        return lines


def arithmetic(training_args: Any, num_processes: int, max_prompt_length: int | None) -> Arithmetic:
    return Arithmetic(
        num_processes=num_processes,
        per_device=training_args.per_device_train_batch_size,
        gradient_accumulation_steps=training_args.gradient_accumulation_steps,
        steps_per_generation=training_args.steps_per_generation,
        num_generations=training_args.num_generations,
        num_iterations=training_args.num_iterations,
        max_prompt_length=max_prompt_length,
        max_completion_length=training_args.max_completion_length,
        max_steps=training_args.max_steps,
    )


# --------------------------------------------------------------------------------------------------------------------
# Memory


@dataclass
class MemoryEstimate:
    """Bytes per GPU by item. `static` items stay for the whole run; `training` items live during forward/backward;
    `generation` items live while generating (with vLLM's sleep mode, not at the same time as `training`)."""

    static: dict[str, float] = field(default_factory=dict)
    training: dict[str, float] = field(default_factory=dict)
    generation: dict[str, float] = field(default_factory=dict)
    generation_overlaps_training: bool = True
    notes: list[str] = field(default_factory=list)

    @property
    def peak(self) -> float:
        static = sum(self.static.values())
        train, gen = sum(self.training.values()), sum(self.generation.values())
        if self.generation_overlaps_training:
            return static + train + gen
        return static + max(train, gen)

    def lines(self, gpu_memory_gb: float) -> list[str]:
        lines = []
        for title, items in (("held", self.static), ("training", self.training), ("generation", self.generation)):
            for name, value in items.items():
                lines.append(f"  {name:<58} {value / GB:>7.1f} GB   [{title}]")
        how = (
            "held + training + generation" if self.generation_overlaps_training else "held + max(training, generation)"
        )
        lines.append(f"  {'peak (' + how + ')':<58} {self.peak / GB:>7.1f} GB")
        verdict = "fits" if self.fits(gpu_memory_gb) else "DOES NOT FIT"
        lines.append(f"  -> {verdict} in {gpu_memory_gb:g} GB per GPU")
        lines.extend(f"  note: {n}" for n in self.notes)
        return lines

    def fits(self, gpu_memory_gb: float) -> bool:
        return self.peak <= gpu_memory_gb * 1e9


def _dtype_bytes(dtype: str | None) -> int:
    return BYTES_FP32 if str(dtype) in ("float32", "torch.float32") else BYTES_BF16


def estimate_memory(
    *,
    training_args: Any,
    model_args: Any,
    launch: Launch,
    num_params: int,
    shape: ModelShape | None,
    max_prompt_length: int | None,
    gpu_memory_gb: float,
) -> MemoryEstimate:
    """A rough per-GPU memory estimate for training `num_params` parameters under `launch` with `training_args`."""
    est = MemoryEstimate()
    n = launch.num_processes
    zero = launch.zero_stage
    use_peft = bool(getattr(model_args, "use_peft", False))
    trainable = num_params
    if use_peft:
        if shape is None:
            trainable = int(0.01 * num_params)
            est.notes.append("LoRA size unknown without the model's architecture: assumed 1% of the weights.")
        else:
            trainable = shape.lora_params(model_args.lora_r, model_args.lora_target_modules)

    # Weights. DeepSpeed runs the model in bf16 (the fp32 master copy lives in the optimizer); without DeepSpeed the
    # model keeps the dtype it was loaded in (ModelConfig.dtype, float32 by default).
    weight_bytes = BYTES_BF16 if zero else _dtype_bytes(getattr(model_args, "dtype", None))
    weights = weight_bytes * num_params / (n if zero == 3 else 1)
    if launch.offload_params:
        weights = 0.0
    est.static[f"weights ({num_params / 1e9:.2f}B params{', ZeRO-3 shard' if zero == 3 else ''})"] = weights
    if zero == 3 and shape is not None:
        # ZeRO-3 gathers a layer's full weights to compute it and prefetches the next one.
        est.static["ZeRO-3 gathered layers (current + prefetched)"] = 2 * BYTES_BF16 * shape.params_per_layer
    if training_args.beta > 0:
        est.static["reference model (beta > 0)"] = weights

    trainable_text = f"{trainable / 1e6:.1f}M LoRA params" if use_peft else "all params"
    if zero:
        grads = BYTES_BF16 * trainable / (n if zero >= 2 else 1)
        optim = DEEPSPEED_OPTIMIZER_BYTES_PER_PARAM * trainable / n
        optim_name = f"Adam: fp32 master + 2 moments ({trainable_text}, ZeRO shard)"
    else:
        grad_bytes = BYTES_FP32 if use_peft else weight_bytes  # PEFT keeps adapters in fp32
        grads = grad_bytes * trainable
        optim = 2 * grad_bytes * trainable
        optim_name = f"Adam: 2 moments ({trainable_text})"
    if launch.offload_optimizer:
        optim = 0.0
        optim_name += ", offloaded"
    est.static[f"gradients ({trainable_text}{', ZeRO shard' if zero >= 2 else ''})"] = grads
    est.static[optim_name] = optim

    per_device = training_args.per_device_train_batch_size
    seq = (max_prompt_length or 0) + training_args.max_completion_length
    tokens = per_device * seq
    if shape is None:
        est.notes.append(
            "activations, logits and KV cache not estimated: the architecture is unknown (pass a local model path)."
        )
    else:
        h, kv, i, layers = shape.hidden_size, shape.kv_dim, shape.intermediate_size, shape.num_layers
        # One decoder layer keeps its input, q/k/v, attention output, residual and norm outputs (~6 h + 2 kv values
        # per token) and the MLP's gate, up and activated values (3 i); memory-efficient attention stores no T x T.
        layer_activations = tokens * (6 * h + 2 * kv + 3 * i) * BYTES_BF16
        if training_args.gradient_checkpointing:
            est.training["activations: layer inputs kept by checkpointing"] = layers * tokens * h * BYTES_BF16
            est.training["activations: one layer recomputed in backward"] = layer_activations
        else:
            est.training["activations: all layers (no gradient checkpointing)"] = layers * layer_activations
        est.training["logits of the answers (vocab x answer tokens)"] = (
            per_device * training_args.max_completion_length * shape.vocab_size * LOGITS_BYTES_PER_ELEMENT
        )

    if training_args.use_vllm and training_args.vllm_mode == "colocate":
        share = training_args.vllm_gpu_memory_utilization * gpu_memory_gb * 1e9
        est.generation[
            f"vLLM colocated share (vllm_gpu_memory_utilization={training_args.vllm_gpu_memory_utilization})"
        ] = share
        est.generation_overlaps_training = not training_args.vllm_enable_sleep_mode
        if shape is not None:
            vllm_weights = BYTES_BF16 * num_params / training_args.vllm_tensor_parallel_size
            if vllm_weights > 0.9 * share:
                est.notes.append(
                    f"vLLM's share ({share / GB:.1f} GB) cannot hold its weights ({vllm_weights / GB:.1f} GB at "
                    f"tensor parallel {training_args.vllm_tensor_parallel_size}) plus a KV cache: raise "
                    "vllm_gpu_memory_utilization or vllm_tensor_parallel_size."
                )
    elif training_args.use_vllm:
        est.notes.append(
            "vLLM in server mode: generation runs on separate GPUs (`nft-trl vllm-serve`), not counted here nor in "
            "num_processes."
        )
    elif shape is not None:
        # transformers' generate() runs on the whole local generation batch at once.
        sequences = per_device * training_args.steps_per_generation
        kv_cache = sequences * seq * 2 * layers * kv * BYTES_BF16
        est.generation[f"KV cache of generate() ({sequences} sequences x {seq} tokens)"] = kv_cache
        est.generation_overlaps_training = False
        if zero == 3:
            est.generation["full weights gathered for generate() (ZeRO-3)"] = BYTES_BF16 * num_params - weights
    est.static["CUDA context, NCCL, allocator slack (flat allowance)"] = FRAMEWORK_OVERHEAD_GB * GB
    return est


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
        out.append("Result: OK" if self.ok else f"Result: {len(self.errors)} problem(s) to fix")
        return "\n".join(out)


def preflight(
    *,
    script_args: Any,
    training_args: Any,
    model_args: Any,
    launch: Launch,
    gpu_memory_gb: float = 80.0,
    num_params: int | None = None,
    memory_must_fit: bool = True,
) -> Report:
    """Check parsed arguments for `launch`: arithmetic, consistency with the model and vLLM, memory per GPU."""
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

    if num_params is None and shape is not None:
        num_params = shape.num_params()
    if num_params is None:
        report.warnings.append(f"memory not estimated: model size unknown ({source}). Pass --num_params.")
        return report
    report.lines.append(
        f"Memory per GPU (rough estimate; model {num_params / 1e9:.2f}B params from {source if shape else '--num_params'}):"
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
            "gradient_checkpointing on, or with colocated vLLM set vllm_enable_sleep_mode / lower "
            "vllm_gpu_memory_utilization."
        )
        (report.errors if memory_must_fit else report.warnings).append(message)
    return report
