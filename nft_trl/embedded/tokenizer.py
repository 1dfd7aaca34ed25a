"""Tiny, fully local models and tokenizers: no Hub, no download.

Used by the test suite and the offline demos. A byte-level BPE tokenizer is trained with the `tokenizers` library on a
small corpus, given TRL's shipped Qwen2.5 chat template, and paired with a randomly initialised Qwen2 model.

>>> from nft_trl.tiny import build_tiny_tokenizer, build_tiny_model
>>> tokenizer = build_tiny_tokenizer()
>>> model = build_tiny_model(tokenizer, seed=0)
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM


IM_START, IM_END, PAD = "<|im_start|>", "<|im_end|>", "<|endoftext|>"
SPECIAL_TOKENS = [PAD, IM_START, IM_END]


def qwen2_5_chat_template() -> str:
    """TRL's shipped Qwen2.5 chat template (read from the installed `trl` package)."""
    import trl

    return (Path(trl.__file__).parent / "chat_templates" / "qwen2_5.jinja").read_text()


def default_corpus(num_lines: int = 400, seed: int = 0) -> list[str]:
    """A few hundred short math-flavoured strings: enough for a byte-level BPE to learn digits, LaTeX and chat words."""
    rng = random.Random(seed)
    words = [
        "the",
        "answer",
        "is",
        "what",
        "compute",
        "sum",
        "of",
        "and",
        "so",
        "we",
        "get",
        "user",
        "assistant",
        "system",
        "You",
        "are",
        "a",
        "helpful",
        "Solve",
        "Put",
        "final",
        "in",
        "boxed",
        "step",
        "by",
    ]
    lines = []
    for _ in range(num_lines):
        a, b = rng.randint(0, 99), rng.randint(0, 99)
        lines.append(f"What is {a} + {b}? The answer is \\boxed{{{a + b}}}.")
        lines.append(" ".join(rng.choice(words) for _ in range(8)))
    return lines


def build_tiny_tokenizer(corpus: Iterable[str] | None = None, vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on `corpus` (default: `default_corpus()`) and wrap it as a Qwen2.5-style tokenizer.

    Deterministic for a given corpus. Takes well under a second.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(corpus) if corpus is not None else default_corpus(), trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token=IM_END, pad_token=PAD, bos_token=None, unk_token=None
    )
    tokenizer.chat_template = qwen2_5_chat_template()
    return tokenizer


def build_tiny_model(
    tokenizer: PreTrainedTokenizerFast,
    *,
    hidden_size: int = 32,
    num_hidden_layers: int = 2,
    num_attention_heads: int = 4,
    num_key_value_heads: int = 2,
    intermediate_size: int = 64,
    max_position_embeddings: int = 512,
    seed: int = 0,
) -> Qwen2ForCausalLM:
    """A randomly initialised Qwen2 causal LM sized for `tokenizer` (fp32, eval-free, CPU)."""
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        num_key_value_heads=num_key_value_heads,
        intermediate_size=intermediate_size,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model


def save_tiny_model(path: str | Path, seed: int = 0) -> Path:
    """Build a tiny tokenizer and model and save both to `path` (a local directory usable as `model_name_or_path`)."""
    path = Path(path)
    tokenizer = build_tiny_tokenizer()
    model = build_tiny_model(tokenizer, seed=seed)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
