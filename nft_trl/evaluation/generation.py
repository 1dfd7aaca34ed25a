"""Prompt building and sampling: vLLM when installed, else batched `transformers` generation.

Both backends take the same prompt strings and the same `SamplingSettings` and return, per prompt, `n` `Sample`s.
Prompts are tokenized the same way in both: a chat-templated prompt already holds its special tokens, so none are
added (`add_special_tokens=False`); a raw prompt gets the tokenizer's usual ones (a BOS token for Llama-style models).
Sampling uses only the settings given here (`top_k` off, no repetition penalty): a model's own
`generation_config.json` defaults are deliberately ignored so that the two backends and the paper's setup agree.

>>> from nft_trl.embedded.tokenizer import build_tiny_model, build_tiny_tokenizer
>>> tokenizer = build_tiny_tokenizer()
>>> generator = TransformersGenerator(build_tiny_model(tokenizer), tokenizer)
>>> prompt = build_prompt("What is 1 + 1?", tokenizer)
>>> samples = generator.generate([prompt], SamplingSettings(n=2, max_tokens=8), seeds=[0])
>>> len(samples[0])
2
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch

from nft_trl.data import BOXED_INSTRUCTION
from nft_trl.sampling import generate_per_prompt


logger = logging.getLogger(__name__)

PROMPT_TEMPLATES = ("chat", "raw")
DEFAULT_TRANSFORMERS_BATCH = 8  # problems per `generate` call (each expands to n sequences)
DEFAULT_VLLM_BATCH = 256  # problems per `LLM.generate` call; also how often results are checkpointed


@dataclass(frozen=True)
class SamplingSettings:
    """How completions are sampled. `temperature == 0` means greedy decoding."""

    n: int = 1
    temperature: float = 0.6
    top_p: float = 1.0
    max_tokens: int = 4096
    seed: int = 0

    def __post_init__(self):
        if self.n < 1:
            raise ValueError(f"n must be >= 1, got {self.n}.")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}.")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must lie in (0, 1], got {self.top_p}.")
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}.")

    def to_dict(self) -> dict:
        """Plain dict for JSON and settings hashes."""
        return asdict(self)


@dataclass(frozen=True)
class Sample:
    """One completion: its text, its length in tokens and whether it hit `max_tokens` before the end token."""

    text: str
    num_tokens: int
    truncated: bool


def build_prompt(problem: str, tokenizer=None, *, template: str = "chat", instruction: str = BOXED_INSTRUCTION) -> str:
    """The prompt for one problem: the problem, a newline and `instruction` (the paper's `\\boxed{}` request).

    `template="chat"` wraps it as one user turn with the tokenizer's chat template and the generation prompt (the
    template's default system prompt, if any, is kept); `template="raw"` returns the text itself, for base models.
    """
    if template not in PROMPT_TEMPLATES:
        raise ValueError(f"Unknown prompt template {template!r}; use one of {PROMPT_TEMPLATES}.")
    content = f"{problem}\n{instruction}" if instruction else problem
    if template == "raw":
        return content + "\n"
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        raise ValueError("The tokenizer has no chat template; pass --prompt_template raw for a base model.")
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True
    )


def is_vllm_available() -> bool:
    """Whether vLLM can be imported (without importing it)."""
    return importlib.util.find_spec("vllm") is not None


class TransformersGenerator:
    """Batched `model.generate` with left padding; `num_return_sequences=n`; greedy when `temperature == 0`.

    The RNG is seeded with the seed of the first prompt of every batch, so results are reproducible for a given batch
    composition (a resumed run batches the remaining problems differently and draws other, equally valid, samples).
    """

    name = "transformers"
    default_batch_size = DEFAULT_TRANSFORMERS_BATCH

    def __init__(self, model, tokenizer, *, batch_size: int | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size or self.default_batch_size

    @classmethod
    def from_pretrained(cls, path: str, *, dtype: str = "auto", device: str | None = None, **kwargs):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(path)
        if device == "auto":  # spread a model too large for one GPU over all visible ones
            return cls(AutoModelForCausalLM.from_pretrained(path, dtype=dtype, device_map="auto"), tokenizer, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        return cls(model.to(device), tokenizer, **kwargs)

    @torch.no_grad()
    def generate(
        self,
        prompts: Sequence[str],
        sampling: SamplingSettings,
        seeds: Sequence[int] | None,
        *,
        add_special_tokens: bool = False,
    ) -> list[list[Sample]]:
        """`n` samples per prompt; the RNG is seeded with `seeds[i]` before the batch that starts at prompt `i`
        (`seeds=None` samples from the current RNG state)."""
        from transformers import GenerationConfig

        greedy = sampling.temperature == 0
        if greedy and sampling.n > 1:
            logger.warning("temperature=0 is greedy: the %d samples of each problem are identical copies.", sampling.n)
        returned = 1 if greedy else sampling.n
        eos = self.model.generation_config.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [eos]) | {self.tokenizer.eos_token_id}
        eos_ids.discard(None)
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else min(eos_ids)
        config = GenerationConfig(
            max_new_tokens=sampling.max_tokens,
            do_sample=not greedy,
            temperature=sampling.temperature if not greedy else None,
            top_p=sampling.top_p if not greedy else None,
            top_k=0 if not greedy else None,
            pad_token_id=pad_id,
            eos_token_id=sorted(eos_ids),
        )
        was_training = self.model.training
        padding_side = self.tokenizer.padding_side
        self.model.eval()
        self.tokenizer.padding_side = "left"
        results: list[list[Sample]] = []
        try:
            for start in range(0, len(prompts), self.batch_size):
                batch = list(prompts[start : start + self.batch_size])
                inputs = self.tokenizer(
                    batch, return_tensors="pt", padding=True, add_special_tokens=add_special_tokens
                )
                inputs = inputs.to(self.model.device)
                if seeds is not None:
                    torch.manual_seed(seeds[start])
                output = generate_per_prompt(
                    self.model, inputs["input_ids"], inputs["attention_mask"], returned, generation_config=config
                )
                completions = output[:, inputs["input_ids"].shape[1] :].cpu()
                for i in range(len(batch)):
                    rows = completions[i * returned : (i + 1) * returned]
                    samples = [self._to_sample(row, eos_ids, pad_id, sampling.max_tokens) for row in rows]
                    results.append(samples * sampling.n if greedy else samples)
        finally:
            self.tokenizer.padding_side = padding_side
            self.model.train(was_training)
        return results

    def _to_sample(self, row: torch.Tensor, eos_ids: set[int], pad_id: int, max_tokens: int) -> Sample:
        tokens = row.tolist()
        ended = next((j for j, t in enumerate(tokens) if t in eos_ids), None)
        kept = tokens[:ended] if ended is not None else [t for t in tokens if t != pad_id]
        text = self.tokenizer.decode(kept, skip_special_tokens=True)
        return Sample(text=text, num_tokens=len(kept), truncated=ended is None and len(kept) >= max_tokens)


class VLLMGenerator:
    """`vllm.LLM.generate` with one `SamplingParams` per prompt, each carrying that problem's seed.

    Per-request seeds make every problem's samples independent of batching, so a resumed run reproduces exactly what
    an uninterrupted run would have drawn (for a given vLLM version and hardware).
    """

    name = "vllm"
    default_batch_size = DEFAULT_VLLM_BATCH

    def __init__(self, model: str, *, batch_size: int | None = None, seed: int = 0, **llm_kwargs):
        from vllm import LLM

        self.llm = LLM(model=model, seed=seed, **llm_kwargs)
        self.batch_size = batch_size or self.default_batch_size

    def generate(
        self,
        prompts: Sequence[str],
        sampling: SamplingSettings,
        seeds: Sequence[int],
        *,
        add_special_tokens: bool = False,
    ) -> list[list[Sample]]:
        from vllm import SamplingParams

        # Token ids rather than text, so that vLLM does not add a second BOS to a chat-templated prompt.
        tokenizer = self.llm.get_tokenizer()
        inputs = [
            {"prompt_token_ids": tokenizer(p, add_special_tokens=add_special_tokens)["input_ids"]} for p in prompts
        ]

        params = [
            SamplingParams(
                n=sampling.n,
                temperature=sampling.temperature,
                top_p=sampling.top_p,
                max_tokens=sampling.max_tokens,
                seed=seed,
            )
            for seed in seeds
        ]
        outputs = self.llm.generate(inputs, params, use_tqdm=False)
        return [
            [
                Sample(text=o.text, num_tokens=len(o.token_ids), truncated=o.finish_reason == "length")
                for o in out.outputs
            ]
            for out in outputs
        ]
