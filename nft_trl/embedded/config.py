"""`EmbeddedConfig`: every setting that determines the embedded task and model; their hash names the build."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass


# Bump when the task, the build recipe or the saved layout changes in a way the settings hash does not capture.
BUILD_FORMAT_VERSION = 3


@dataclass(frozen=True)
class EmbeddedConfig:
    """Every setting that determines the embedded model; their hash names the cache directory.

    Args:
        num_operands: 2 for `a + b`, 3 for `a + b - c` (with `c <= a + b`).
        worked_answer: warm up on a worked line before the box (`a + b = s, s - c = r. \\boxed{r}`) instead of the
            bare `\\boxed{r}`.
        min_operand, max_operand: range of the operands (inclusive).
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

    num_operands: int = 2
    worked_answer: bool = False
    min_operand: int = 10
    max_operand: int = 99
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

    def version_hash(self) -> str:
        """Short hash of the settings and `BUILD_FORMAT_VERSION`: the cache directory name."""
        payload = json.dumps({"format": BUILD_FORMAT_VERSION, **dataclasses.asdict(self)}, sort_keys=True)
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
