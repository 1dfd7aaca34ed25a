"""The memory estimate per GPU of a launch: the model's shape, how the launch shards it, and a rough sum.

`ModelShape` holds the architecture numbers that set the memory needs (read from a local `config.json`, or from
`KNOWN_MODELS` for the models the recipes train); `Launch` is how many processes train and how DeepSpeed shards the
training state; `estimate_memory` sums, per GPU, the weights, gradients, Adam states, activations, logits and the
generation's share (colocated vLLM, or transformers' KV cache). It is a rough, documented sum, meant to catch recipes
that cannot fit, not to predict the allocator's peak to the GB.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


GB = 1e9  # memory is reported in GB (10^9 bytes), as GPU vendors state it (an H100 has 80 GB)
BYTES_BF16 = 2
BYTES_FP32 = 4
#: Mixed-precision Adam under DeepSpeed: an fp32 master copy of the weights plus two fp32 moments.
DEEPSPEED_OPTIMIZER_BYTES_PER_PARAM = 12
#: Logits of the completion tokens: bf16 logits, their temperature-scaled copy, and their gradient (bf16 each).
LOGITS_BYTES_PER_ELEMENT = 6
#: CUDA context, NCCL buffers and allocator fragmentation: a flat allowance.
FRAMEWORK_OVERHEAD_GB = 3.0


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


def params_text(num_params: float) -> str:
    """A parameter count as the model cards state it: 7.62B, or 3.3M below a billion."""
    return f"{num_params / 1e9:.2f}B" if num_params >= 1e9 else f"{num_params / 1e6:.1f}M"


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
    est.static[f"weights ({params_text(num_params)} params{', ZeRO-3 shard' if zero == 3 else ''})"] = weights
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
