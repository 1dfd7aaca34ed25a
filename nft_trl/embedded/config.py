"""`EmbeddedConfig`: every setting that determines the embedded task and model; their hash names the build."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass


# Bump when the task, the build recipe or the saved layout changes in a way the settings hash does not capture.
BUILD_FORMAT_VERSION = 3
TASKS = ("addition", "countdown")
# Fields added after the builds of this format existed: left out of the hash while at these values.
HASH_EXEMPT_DEFAULTS = {"task": "addition", "countdown_operators": "+-*"}
# The countdown preset (see `EmbeddedConfig.countdown`).
COUNTDOWN_PRESET = {
    "task": "countdown",
    "num_operands": 3,
    "min_operand": 1,
    "max_operand": 19,
    "countdown_operators": "+-",
}


@dataclass(frozen=True)
class EmbeddedConfig:
    """Every setting that determines the embedded model; their hash names the cache directory.

    Args:
        task: "addition" (the default: `a + b`, or `a + b - c`) or "countdown" (reach a target from a few numbers;
            use the preset `EmbeddedConfig.countdown()`). See `nft_trl.embedded.task`.
        num_operands: 2 for `a + b`, 3 for `a + b - c` (with `c <= a + b`); for countdown, how many numbers.
        worked_answer: warm up on a worked line before the box (`a + b = s, s - c = r. \\boxed{r}`) instead of the
            bare `\\boxed{r}` (addition only).
        min_operand, max_operand: range of the operands, or of countdown's numbers (inclusive).
        countdown_operators: the operators of countdown's targets and prompts (a subset of "+-*").
        vocab_size: size of the byte-level BPE vocabulary (256 bytes + 3 special tokens + merges).
        tokenizer_corpus_size: number of chat-formatted training examples the tokenizer is trained on.
        hidden_size, num_hidden_layers, num_attention_heads, num_key_value_heads, intermediate_size,
        max_position_embeddings: the Qwen2 architecture.
        seed: seeds the weights, the supervised data stream and the validation prompts.
        batch_size, learning_rate, warmup_steps, weight_decay, max_grad_norm: supervised warm-up (AdamW, linear
            warm-up then constant learning rate).
        max_steps: hard cap on supervised steps.
        eval_every: evaluate the validation accuracy every this many steps (and stop once it reaches the target).
        num_validation_prompts, num_validation_samples: the validation set (drawn from the train split, never from
            the held-out split) and the samples per prompt at temperature 1.0.
        target_accuracy: stop the warm-up once the sampled validation accuracy reaches this value.
        max_new_tokens: generation budget during validation.
    """

    task: str = "addition"
    num_operands: int = 2
    worked_answer: bool = False
    min_operand: int = 10
    max_operand: int = 99
    countdown_operators: str = "+-*"
    vocab_size: int = 384
    tokenizer_corpus_size: int = 2_000
    hidden_size: int = 384
    num_hidden_layers: int = 2
    num_attention_heads: int = 6
    num_key_value_heads: int = 2
    intermediate_size: int = 1024
    max_position_embeddings: int = 128
    seed: int = 1
    batch_size: int = 32
    learning_rate: float = 1e-3
    warmup_steps: int = 20
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    max_steps: int = 2_500
    eval_every: int = 50
    num_validation_prompts: int = 128
    num_validation_samples: int = 2
    target_accuracy: float = 0.45
    max_new_tokens: int = 40

    def __post_init__(self):
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {self.task!r}.")
        if self.task == "countdown" and self.worked_answer:
            raise ValueError("worked_answer=True is for the addition task; countdown answers are the bare expression.")
        if self.task == "addition" and self.num_operands not in (2, 3):
            raise ValueError(f"The addition task takes num_operands 2 or 3, got {self.num_operands}.")
        if self.task == "countdown" and not 2 <= self.num_operands <= 4:
            raise ValueError(f"The countdown task takes 2 to 4 numbers (num_operands), got {self.num_operands}.")
        if not self.countdown_operators or set(self.countdown_operators) - set("+-*"):
            raise ValueError(f"countdown_operators must be a subset of '+-*', got {self.countdown_operators!r}.")
        if not 0 <= self.min_operand <= self.max_operand:
            raise ValueError(f"Need 0 <= min_operand <= max_operand, got {self.min_operand} and {self.max_operand}.")

    @classmethod
    def countdown(cls, **overrides) -> EmbeddedConfig:
        """The countdown preset: three numbers from 1 to 19, `+` and `-` (`overrides` change any field).

        With `+ - *` and numbers up to 9 the embedded model stays at the random-plan accuracy through its warm-up
        (see `benchmarks/README.md`); with `+ -` it learns.
        """
        return cls(**{**COUNTDOWN_PRESET, **overrides})

    def settings(self) -> dict:
        """The fields that name a build: all of them, less those of `HASH_EXEMPT_DEFAULTS` still at their default.

        Fields added after a format's first builds are left out while at their default, so those builds, the shipped
        one included, keep their names and manifests.
        """
        return {
            name: value
            for name, value in dataclasses.asdict(self).items()
            if not (name in HASH_EXEMPT_DEFAULTS and HASH_EXEMPT_DEFAULTS[name] == value)
        }

    def version_hash(self) -> str:
        """Short hash of `settings()` and `BUILD_FORMAT_VERSION`: the cache directory name."""
        payload = json.dumps({"format": BUILD_FORMAT_VERSION, **self.settings()}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:12]

    def architecture(self) -> dict[str, int]:
        """The Qwen2 architecture fields of this config, for `nft_trl.embedded.model.random_qwen2`."""
        names = (
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "num_key_value_heads",
            "intermediate_size",
            "max_position_embeddings",
        )
        return {name: getattr(self, name) for name in names}


DEFAULT_CONFIG = EmbeddedConfig()
