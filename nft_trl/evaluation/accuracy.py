"""Accuracy of a policy on a prompt dataset, graded by a TRL-style reward function.

The held-out measure of the embedded demo, of the embedded model's warm-up and of `benchmarks/compare_algorithms.py`.
Sampling goes through `TransformersGenerator`, the same generation path as `nft-trl eval`'s transformers backend.

>>> from nft_trl.embedded import load_embedded_model, make_dataset
>>> model, tokenizer = load_embedded_model()
>>> result = evaluate_accuracy(model, tokenizer, make_dataset("test", 200), num_samples=8)  # doctest: +SKIP
>>> result.accuracy, result.mixed_fraction  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from .generation import SamplingSettings, TransformersGenerator


@dataclass
class EvalResult:
    """Outcome of `evaluate_accuracy`.

    Attributes:
        accuracy: mean reward over all graded completions (rewards of `None` are left out).
        per_prompt_accuracy: mean reward per prompt, `(num_prompts,)`; NaN where no completion could be graded.
        mixed_fraction: fraction of prompts whose samples are neither all right nor all wrong (the groups that give
            GRPO/NFT a learning signal); 0.0 with one sample per prompt.
        num_prompts, num_samples: prompts evaluated and completions per prompt.
        num_ungraded: completions for which the reward function returned `None`.
        examples: a few `{"prompt", "completion", "reward", <other columns>}` dicts for display.
    """

    accuracy: float
    per_prompt_accuracy: list[float]
    mixed_fraction: float
    num_prompts: int
    num_samples: int
    num_ungraded: int = 0
    examples: list[dict[str, Any]] = field(default_factory=list)


def prompt_text(tokenizer, prompt: Any) -> str:
    """A standard prompt as is; a conversational one rendered with the chat template and the generation prompt."""
    if isinstance(prompt, str):
        return prompt
    return tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)


def evaluate_accuracy(
    model: torch.nn.Module,
    tokenizer,
    dataset,
    *,
    num_samples: int = 1,
    temperature: float = 1.0,
    max_new_tokens: int = 40,
    batch_size: int = 64,
    reward_fn: Callable[..., list[float | None]] | None = None,
    seed: int | None = 0,
    num_examples: int = 4,
) -> EvalResult:
    """Sample `num_samples` completions per prompt and grade them with `reward_fn`.

    The reward function is called like a TRL reward: `reward_fn(prompts=..., completions=..., **other_columns)`, with
    conversational completions when the prompts are conversational; it returns 1.0 (right), 0.0 (wrong) or `None`
    (ungradable).

    Args:
        model, tokenizer: the policy to evaluate (left in the training mode it came in).
        dataset: rows with a `prompt` column and the columns `reward_fn` needs (e.g. `solution`).
        num_samples: completions per prompt. Must be 1 with greedy decoding.
        temperature: sampling temperature, with top-k and top-p disabled; 0.0 means greedy decoding.
        max_new_tokens: generation budget; answers cut off before their box count as wrong.
        batch_size: prompts per `generate` call.
        reward_fn: defaults to `nft_trl.rewards.verifier.math_verifier`.
        seed: seeds sampling (the global RNG state is restored afterwards); `None` keeps the current RNG.
        num_examples: how many completions to return in `examples`.
    """
    if reward_fn is None:
        from nft_trl.rewards.verifier import math_verifier as reward_fn
    if temperature == 0.0 and num_samples != 1:
        raise ValueError("Greedy decoding (temperature=0.0) gives identical samples: use num_samples=1.")
    prompts = list(dataset["prompt"])
    texts = [prompt_text(tokenizer, prompt) for prompt in prompts]
    sampling = SamplingSettings(n=num_samples, temperature=temperature, top_p=1.0, max_tokens=max_new_tokens)
    generator = TransformersGenerator(model, tokenizer, batch_size=batch_size)
    device = next(model.parameters()).device
    # One seed for the whole run (not one per batch), in a forked RNG so that training's random stream is untouched.
    forked = torch.random.fork_rng(devices=[device] if device.type == "cuda" else [])
    with forked if seed is not None else contextlib.nullcontext():
        if seed is not None:
            torch.manual_seed(seed)
        samples = generator.generate(texts, sampling, seeds=None)

    # Row i * num_samples + j is sample j of prompt i.
    completions = [sample.text for per_prompt in samples for sample in per_prompt]
    repeat = [i for i in range(len(prompts)) for _ in range(num_samples)]
    conversational = bool(prompts) and not isinstance(prompts[0], str)
    graded = [[{"role": "assistant", "content": c}] for c in completions] if conversational else completions
    columns = {name: dataset[name] for name in dataset.column_names if name != "prompt"}
    kwargs = {name: [values[i] for i in repeat] for name, values in columns.items()}
    rewards = reward_fn(prompts=[prompts[i] for i in repeat], completions=graded, **kwargs) if completions else []
    examples = [
        {"prompt": texts[repeat[i]], "completion": completions[i], "reward": rewards[i]}
        | {name: kwargs[name][i] for name in kwargs}
        for i in range(min(num_examples, len(completions)))
    ]

    per_prompt: list[float] = []
    mixed = 0
    for i in range(len(prompts)):
        graded_rewards = [r for r in rewards[i * num_samples : (i + 1) * num_samples] if r is not None]
        per_prompt.append(sum(graded_rewards) / len(graded_rewards) if graded_rewards else math.nan)
        mixed += len(set(graded_rewards)) > 1
    graded_all = [r for r in rewards if r is not None]
    return EvalResult(
        accuracy=sum(graded_all) / len(graded_all) if graded_all else math.nan,
        per_prompt_accuracy=per_prompt,
        mixed_fraction=mixed / len(prompts) if prompts else 0.0,
        num_prompts=len(prompts),
        num_samples=num_samples,
        num_ungraded=len(rewards) - len(graded_all),
        examples=examples,
    )
