"""Local byte-level BPE tokenizers in the Qwen2.5 style: no Hub, no download.

One builder, `train_bpe_tokenizer`, makes every tokenizer of the package: the embedded task's (trained on the task's
chat-formatted examples, see `nft_trl.embedded.model`) and the tiny one of the tests and benchmarks
(`build_tiny_tokenizer`, trained on `default_corpus()`). Each gets TRL's shipped Qwen2.5 chat template.

>>> from nft_trl.embedded.tokenizer import build_tiny_tokenizer
>>> tokenizer = build_tiny_tokenizer()
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from pathlib import Path

from transformers import PreTrainedTokenizerFast


IM_START, IM_END, PAD = "<|im_start|>", "<|im_end|>", "<|endoftext|>"
#: Ids 0, 1 and 2 of every tokenizer built here, in this order; the first regular token has id 3.
SPECIAL_TOKENS = [PAD, IM_START, IM_END]
TINY_VOCAB_SIZE = 512


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


def train_bpe_tokenizer(corpus: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """A byte-level BPE of `vocab_size` tokens trained on `corpus`, wrapped as a Qwen2.5-style tokenizer.

    It is trained with the normalizer and pre-tokenizer of `transformers`' `Qwen2Tokenizer` (digits split one by one),
    because `AutoTokenizer.from_pretrained` rebuilds a saved Qwen2 model's tokenizer with those: a tokenizer trained
    with anything else would tokenize differently once saved and reloaded (as TRL does from `model_name_or_path`).
    Deterministic for a given corpus; takes about a second.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import Qwen2Tokenizer

    qwen2 = Qwen2Tokenizer(vocab={"a": 0}, merges=[]).backend_tokenizer  # a throw-away instance, for its parts
    tok = Tokenizer(models.BPE())
    tok.normalizer = qwen2.normalizer
    tok.pre_tokenizer = qwen2.pre_tokenizer
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(corpus), trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token=IM_END, pad_token=PAD, bos_token=None, unk_token=None
    )
    tokenizer.chat_template = qwen2_5_chat_template()
    return tokenizer


def chat_renderer() -> PreTrainedTokenizerFast:
    """A tokenizer with no vocabulary that only renders the chat template (to build a corpus before training)."""
    from tokenizers import Tokenizer, models

    renderer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.BPE()), eos_token=IM_END, pad_token=PAD)
    renderer.chat_template = qwen2_5_chat_template()
    return renderer


def build_tiny_tokenizer(vocab_size: int = TINY_VOCAB_SIZE) -> PreTrainedTokenizerFast:
    """The tests' and benchmarks' tokenizer: `train_bpe_tokenizer` on `default_corpus()`."""
    return train_bpe_tokenizer(default_corpus(), vocab_size)
