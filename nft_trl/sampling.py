"""`model.generate` with `n` samples per prompt, each prompt read once.

`generate(..., num_return_sequences=n)` copies every prompt `n` times before it reads them: its prefill costs `n`
times what one reading does, and with short answers the prefill is most of the cost (the embedded model's held-out
evaluation, 256 prompts x 4 samples: 12.5 s -> 4.6 s on one CPU core). Here the prompts but their last token go
through the model once, the cache is copied `n` times in `generate`'s own order, and `generate` continues from the
last prompt token: the same logits, and the same random draws in the same order (tests/test_eval.py checks the
tokens against plain `generate`). Used by `nft_trl.evaluation` (`TransformersGenerator`) and `nft-trl generate`.
"""

from __future__ import annotations

import copy
import inspect
from typing import Any

import torch


def generate_per_prompt(
    model, input_ids: torch.Tensor, attention_mask: torch.Tensor, n: int, **generate_kwargs
) -> Any:
    """What `model.generate(input_ids=..., attention_mask=..., num_return_sequences=n, **generate_kwargs)` returns
    (left-padded prompts; `generation_config` and any other `generate` argument pass through)."""
    if n == 1 or input_ids.shape[1] < 2:  # nothing to share
        return model.generate(input_ids=input_ids, attention_mask=attention_mask, **_returning(n, generate_kwargs))
    from transformers import DynamicCache

    try:
        cache = DynamicCache(config=model.config)  # the model's layer types (sliding windows)
    except TypeError:  # a transformers without the argument
        cache = DynamicCache()
    # transformers 5 renamed `past_key_values` to `cache` (and warns on the old name); 4.x knows only the old one.
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # a PEFT model's own
    name = "cache" if "cache" in inspect.signature(type(base).forward).parameters else "past_key_values"
    positions = (attention_mask.long().cumsum(-1) - 1).masked_fill(attention_mask == 0, 1)  # as `generate` numbers
    with torch.no_grad():
        model(
            input_ids=input_ids[:, :-1],
            attention_mask=attention_mask[:, :-1],
            position_ids=positions[:, :-1],
            use_cache=True,
            logits_to_keep=1,
            **{name: cache},
        )
    cache.batch_repeat_interleave(n)
    return model.generate(
        input_ids=input_ids.repeat_interleave(n, dim=0),
        attention_mask=attention_mask.repeat_interleave(n, dim=0),
        **_returning(1, generate_kwargs),
        **{name: cache},
    )


def _returning(n: int, generate_kwargs: dict[str, Any]) -> dict[str, Any]:
    """`generate_kwargs` asking for `n` sequences per prompt: in the `generation_config` when one is given (transformers
    5 warns when it comes with generation arguments beside it), else as `num_return_sequences`."""
    if "generation_config" not in generate_kwargs:
        return {**generate_kwargs, "num_return_sequences": n}
    config = copy.deepcopy(generate_kwargs["generation_config"])
    config.num_return_sequences = n
    return {**generate_kwargs, "generation_config": config}
