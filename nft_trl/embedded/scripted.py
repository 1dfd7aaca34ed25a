"""Scripted generation: `generate` replaced by fixed completions, for runs that must see exactly the same answers.

The tests check NFT against TRL's GRPO on identical completions, and the benchmarks time both trainers doing
identical work; sampling from a random tiny model would give neither (and such a model rarely emits EOS). A scripted
completion has varied regular tokens and an EOS at a row-dependent position, or none (a truncated answer).

>>> from nft_trl.embedded.scripted import scripted_generation
>>> with scripted_generation():
...     trainer.train()  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from transformers.generation.utils import GenerationMixin

from .tokenizer import SPECIAL_TOKENS


FIRST_REGULAR_ID = len(SPECIAL_TOKENS)  # the tokenizers of nft_trl.embedded put their special tokens first
DEFAULT_LENGTH = 8  # completion length when `generate` gets no generation config


def eos_position(row: int, length: int, *, earliest: int = 2, stride: int = 1) -> int | None:
    """Where row `row`'s EOS goes: `earliest + (row * stride) % (length - earliest + 1)`; `None` (no EOS: the answer
    is cut at `length`) when that lands on `length`."""
    position = earliest + (row * stride) % (length - earliest + 1)
    return position if position < length else None


def scripted_completion(
    row: int, length: int, num_ids: int, eos_id: int, *, earliest_eos: int = 2, eos_stride: int = 1
) -> list[int]:
    """The `length` token ids of batch row `row`: regular ids below `num_ids`, EOS at `eos_position`."""
    span = num_ids - FIRST_REGULAR_ID
    tokens = [FIRST_REGULAR_ID + (row * 7 + t * 13 + row * t) % span for t in range(length)]
    stop = eos_position(row, length, earliest=earliest_eos, stride=eos_stride)
    if stop is not None:
        tokens[stop] = eos_id
    return tokens


@contextlib.contextmanager
def scripted_generation(num_ids: int | None = None, *, earliest_eos: int = 2, eos_stride: int = 1) -> Iterator[None]:
    """Within the block, every model's `generate` returns its prompts followed by `scripted_completion` rows.

    `num_ids` bounds the ids used (default: the model's vocabulary; pass the tokenizer's size when the model's
    vocabulary is padded beyond it). The original `generate` is put back on exit.
    """
    original = GenerationMixin.generate

    def generate(self, input_ids=None, attention_mask=None, generation_config=None, **kwargs):
        length = generation_config.max_new_tokens if generation_config is not None else DEFAULT_LENGTH
        ids, eos = num_ids or self.config.vocab_size, self.config.eos_token_id
        rows = [
            scripted_completion(b, length, ids, eos, earliest_eos=earliest_eos, eos_stride=eos_stride)
            for b in range(input_ids.size(0))
        ]
        return torch.cat([input_ids, torch.tensor(rows, device=input_ids.device)], dim=1)

    GenerationMixin.generate = generate
    try:
        yield
    finally:
        GenerationMixin.generate = original
