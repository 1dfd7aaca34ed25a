"""The embedded default: an offline math task and a small model that is mediocre at it, built once and cached.

The demo (`accelerate launch examples/train_nft.py`), the notebooks and the algorithm benchmark need a model and a
task that run on a laptop CPU, download nothing, and leave room for reinforcement learning to show an improvement.
This module provides both:

* **Task**: two-digit addition, `Compute a + b. Put the final answer in \\boxed{}.` (operands 10..99), answered
  with the bare box, e.g. `\\boxed{57}`. `EmbeddedConfig(num_operands=3)` gives the harder `a + b - c` (with
  `c <= a + b`) and `worked_answer=True` a worked line before the box; the default is the one that reaches the
  accuracy band in minutes on two CPU cores. Prompts are TRL conversational prompts (`[{"role": "user", ...}]`) and
  the gold answer is in the `solution` column, as TRL's accuracy rewards expect. Every problem belongs to exactly one
  split (decided by a hash of the problem), so train and held-out sets are disjoint for any seed.
* **Model**: a byte-level BPE tokenizer trained on the task's chat-formatted corpus with Qwen2's pre-tokenizer
  (digits are single tokens), TRL's Qwen2.5 chat template, and a two-layer Qwen2 causal LM of about 3M parameters,
  warmed up with supervised steps until its accuracy with sampling at temperature 1.0 on validation prompts (from
  the train split) reaches about 45%: good enough that groups of sampled answers mix right and wrong ones (the signal
  GRPO and NFT learn from), bad enough to leave room to learn.

The build takes a few minutes on two CPU cores and is cached under `~/.cache/nft_trl/embedded/<settings-hash>/`
(root overridable with the `NFT_TRL_CACHE` environment variable or the `cache_dir` argument). It is written to a
temporary directory and renamed into place, so an interrupted build never leaves a broken cache.

>>> from nft_trl.embedded import embedded_path, evaluate_accuracy, load_embedded_model, make_dataset
>>> model, tokenizer = load_embedded_model()  # builds on first use, then loads in about a second
>>> result = evaluate_accuracy(model, tokenizer, make_dataset("test", 200), num_samples=8)
>>> result.accuracy, result.mixed_fraction
>>> path = embedded_path()  # a local directory for `model_name_or_path`

From the shell, `python -m nft_trl.embedded` builds the model (if needed) and prints its directory.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import os
import random
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

from nft_trl.embedded.tokenizer import IM_END, PAD, SPECIAL_TOKENS, qwen2_5_chat_template


logger = logging.getLogger(__name__)

# Bump when the task, the build recipe or the saved layout changes in a way the settings hash does not capture.
BUILD_FORMAT_VERSION = 3
CACHE_ENV_VAR = "NFT_TRL_CACHE"
DEFAULT_CACHE_ROOT = Path("~/.cache/nft_trl")
MANIFEST_NAME = "embedded.json"

SPLITS = ("train", "test")
# Every problem is assigned to one split by a hash of its operands: this many percent go to "test".
HELD_OUT_PERCENT = 10
PERCENT = 100
# `make_dataset` gives up after this many draws per requested row (the problem space has ~600k problems).
MAX_DRAWS_PER_ROW = 50

INSTRUCTION = "Put the final answer in \\boxed{}."

# Seeds of the internal streams, offset from the build seed so they never coincide with a user's `make_dataset` seed.
TOKENIZER_CORPUS_SEED_OFFSET = 1_000
SFT_DATA_SEED_OFFSET = 2_000
VALIDATION_SEED_OFFSET = 3_000

LOSS_LOG_EVERY = 10  # warm-up steps between debug log lines
IGNORE_INDEX = -100  # label value that `transformers` causal-LM losses skip


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


DEFAULT_CONFIG = EmbeddedConfig()


# --------------------------------------------------------------------------------------------------------------------
# Task
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    """One `a + b` problem, or `a + b - c` when `c` is given."""

    a: int
    b: int
    c: int | None = None

    @property
    def answer(self) -> int:
        return self.a + self.b - (self.c or 0)

    @property
    def expression(self) -> str:
        return f"{self.a} + {self.b}" if self.c is None else f"{self.a} + {self.b} - {self.c}"

    @property
    def split(self) -> str:
        """The split this problem belongs to, fixed by a hash of its operands (independent of any seed)."""
        digest = hashlib.sha256(self.expression.encode()).digest()
        return "test" if int.from_bytes(digest[:4], "big") % PERCENT < HELD_OUT_PERCENT else "train"

    def prompt(self) -> list[dict[str, str]]:
        return [{"role": "user", "content": f"Compute {self.expression}. {INSTRUCTION}"}]

    def completion(self, worked: bool = False) -> str:
        """The reference answer of the warm-up: the boxed result, after one worked line if `worked`."""
        boxed = f"\\boxed{{{self.answer}}}"
        if not worked:
            return boxed
        if self.c is None:
            return f"{self.expression} = {self.answer}. {boxed}"
        total = self.a + self.b
        return f"{self.a} + {self.b} = {total}, {total} - {self.c} = {self.answer}. {boxed}"


def _random_problem(rng: random.Random, config: EmbeddedConfig) -> Problem:
    while True:
        a, b = rng.randint(config.min_operand, config.max_operand), rng.randint(config.min_operand, config.max_operand)
        if config.num_operands == 2:
            return Problem(a, b)
        c = rng.randint(config.min_operand, config.max_operand)
        if c <= a + b:  # keep answers non-negative
            return Problem(a, b, c)


def _split_rng(split: str, seed: int) -> random.Random:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}.")
    # A string seed is hashed deterministically by `random.Random` (unlike `hash()`, it is not salted per process).
    return random.Random(f"{split}-{seed}")


def _iter_problems(split: str, seed: int, config: EmbeddedConfig) -> Iterator[Problem]:
    """Endless deterministic stream of problems of `split` (with repeats): the supervised warm-up data."""
    rng = _split_rng(split, seed)
    while True:
        problem = _random_problem(rng, config)
        if problem.split == split:
            yield problem


def make_problems(
    split: str = "train", n: int = 1_000, seed: int = 0, config: EmbeddedConfig | None = None
) -> list[Problem]:
    """`n` distinct problems of `split` ("train" or "test"), deterministic in `seed`."""
    config = config or DEFAULT_CONFIG
    rng = _split_rng(split, seed)
    problems: list[Problem] = []
    seen: set[Problem] = set()
    for _ in range(n * MAX_DRAWS_PER_ROW):
        if len(problems) == n:
            break
        problem = _random_problem(rng, config)
        if problem.split == split and problem not in seen:
            seen.add(problem)
            problems.append(problem)
    if len(problems) < n:
        raise ValueError(f"Could not draw {n} distinct {split!r} problems from the operand range; ask for fewer.")
    return problems


def make_dataset(split: str = "train", n: int = 1_000, seed: int = 0, config: EmbeddedConfig | None = None) -> Dataset:
    """The task as a `datasets.Dataset` with TRL's columns: `prompt` (conversational) and `solution` (gold answer).

    Args:
        split: "train" or "test". The two are disjoint whatever the seeds.
        n: number of rows (distinct problems).
        seed: selects which problems are drawn; the same `(split, n, seed)` always gives the same rows.
        config: operand range; defaults to the embedded default.
    """
    problems = make_problems(split, n, seed, config)
    return Dataset.from_dict({"prompt": [p.prompt() for p in problems], "solution": [str(p.answer) for p in problems]})


# --------------------------------------------------------------------------------------------------------------------
# Tokenizer and model
# --------------------------------------------------------------------------------------------------------------------


def _chat_text(tokenizer: PreTrainedTokenizerFast, problem: Problem, config: EmbeddedConfig) -> str:
    messages = [*problem.prompt(), {"role": "assistant", "content": problem.completion(config.worked_answer)}]
    return tokenizer.apply_chat_template(messages, tokenize=False)


def build_tokenizer(config: EmbeddedConfig | None = None) -> PreTrainedTokenizerFast:
    """Byte-level BPE trained on chat-formatted task examples; digits stay single tokens (as in Qwen2).

    It is trained with the normalizer and pre-tokenizer of `transformers`' `Qwen2Tokenizer`, because
    `AutoTokenizer.from_pretrained` rebuilds a saved Qwen2 model's tokenizer with those: a tokenizer trained with
    anything else would tokenize differently once saved and reloaded (as TRL does from `model_name_or_path`).

    Deterministic for a given config; takes about a second.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import Qwen2Tokenizer

    config = config or DEFAULT_CONFIG
    # A throw-away tokenizer renders the chat template so the corpus has exactly the text the model will see.
    renderer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.BPE()), eos_token=IM_END, pad_token=PAD)
    renderer.chat_template = qwen2_5_chat_template()
    stream = _iter_problems("train", config.seed + TOKENIZER_CORPUS_SEED_OFFSET, config)
    corpus = [_chat_text(renderer, next(stream), config) for _ in range(config.tokenizer_corpus_size)]

    # Borrow Qwen2's normalizer and pre-tokenizer (digits split one by one) from a throw-away instance.
    qwen2 = Qwen2Tokenizer(vocab={"a": 0}, merges=[]).backend_tokenizer
    tok = Tokenizer(models.BPE())
    tok.normalizer = qwen2.normalizer
    tok.pre_tokenizer = qwen2.pre_tokenizer
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=config.vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token=IM_END, pad_token=PAD, bos_token=None, unk_token=None
    )
    tokenizer.chat_template = qwen2_5_chat_template()
    return tokenizer


def build_model(tokenizer: PreTrainedTokenizerFast, config: EmbeddedConfig | None = None) -> Qwen2ForCausalLM:
    """A randomly initialised Qwen2 causal LM (fp32) sized by `config`, seeded by `config.seed`."""
    config = config or DEFAULT_CONFIG
    model_config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=config.hidden_size,
        num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads,
        num_key_value_heads=config.num_key_value_heads,
        intermediate_size=config.intermediate_size,
        max_position_embeddings=config.max_position_embeddings,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    torch.manual_seed(config.seed)
    model = Qwen2ForCausalLM(model_config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = None
    return model


def _sft_batch(tokenizer: PreTrainedTokenizerFast, problems: list[Problem], worked: bool) -> dict[str, torch.Tensor]:
    """Right-padded prompt + completion + EOS; the loss covers the completion and its EOS only.

    Prompt and completion are tokenized separately, as they are at generation time (no merge across the boundary).
    """
    prompts = tokenizer.apply_chat_template([p.prompt() for p in problems], add_generation_prompt=True, tokenize=False)
    prompt_ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    completion_ids = tokenizer([p.completion(worked) for p in problems], add_special_tokens=False)["input_ids"]
    rows = [(p, c + [tokenizer.eos_token_id]) for p, c in zip(prompt_ids, completion_ids, strict=True)]
    length = max(len(p) + len(c) for p, c in rows)
    input_ids = torch.full((len(rows), length), tokenizer.pad_token_id, dtype=torch.long)
    labels = torch.full((len(rows), length), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), length), dtype=torch.long)
    for i, (p, c) in enumerate(rows):
        n = len(p) + len(c)
        input_ids[i, :n] = torch.tensor(p + c)
        labels[i, len(p) : n] = torch.tensor(c)
        attention_mask[i, :n] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def warm_up(
    model: Qwen2ForCausalLM, tokenizer: PreTrainedTokenizerFast, config: EmbeddedConfig | None = None
) -> dict[str, Any]:
    """Supervised warm-up until the sampled validation accuracy reaches `config.target_accuracy`.

    Returns a log with the steps taken and the validation accuracy at each check.
    """
    from tqdm.auto import tqdm

    config = config or DEFAULT_CONFIG
    validation = make_dataset("train", config.num_validation_prompts, config.seed + VALIDATION_SEED_OFFSET, config)
    stream = _iter_problems("train", config.seed + SFT_DATA_SEED_OFFSET, config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / config.warmup_steps))
    history: list[dict[str, float]] = []
    step = 0
    start = time.perf_counter()
    model.train()
    progress = tqdm(total=config.max_steps, desc="nft_trl: warming up the embedded model", unit="step")
    with progress:
        while step < config.max_steps:
            batch = _sft_batch(tokenizer, [next(stream) for _ in range(config.batch_size)], config.worked_answer)
            loss = model(**batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            progress.update(1)
            if step % LOSS_LOG_EVERY == 0:
                logger.debug("warm-up step %d: loss %.4f", step, loss.item())
            if step % config.eval_every == 0 or step == config.max_steps:
                result = evaluate_accuracy(
                    model,
                    tokenizer,
                    validation,
                    num_samples=config.num_validation_samples,
                    temperature=1.0,
                    max_new_tokens=config.max_new_tokens,
                    seed=config.seed + step,
                )
                model.train()
                history.append(
                    {
                        "step": step,
                        "seconds": round(time.perf_counter() - start, 1),
                        "loss": loss.item(),
                        "accuracy": result.accuracy,
                    }
                )
                progress.set_postfix(loss=f"{loss.item():.3f}", accuracy=f"{result.accuracy:.2f}")
                logger.info("warm-up step %d: loss %.3f, validation accuracy %.3f", step, loss.item(), result.accuracy)
                if result.accuracy >= config.target_accuracy:
                    break
    model.eval()
    return {"steps": step, "history": history}


# --------------------------------------------------------------------------------------------------------------------
# Cache
# --------------------------------------------------------------------------------------------------------------------


def _cache_root(cache_dir: str | os.PathLike | None) -> Path:
    root = cache_dir if cache_dir is not None else os.environ.get(CACHE_ENV_VAR) or DEFAULT_CACHE_ROOT
    return Path(root).expanduser()


def _is_complete(path: Path) -> bool:
    return (path / MANIFEST_NAME).is_file()


@contextlib.contextmanager
def _build_lock(lock_path: Path) -> Iterator[None]:
    """Serialise builds of one version across processes (e.g. ranks of `accelerate launch`), where `fcntl` exists."""
    try:
        import fcntl
    except ImportError:  # not POSIX: the atomic rename alone keeps the cache consistent
        yield
        return
    with open(lock_path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _check_reloaded_tokenizer(tokenizer: PreTrainedTokenizerFast, path: str | os.PathLike, config: EmbeddedConfig):
    """Fail the build if `AutoTokenizer` reloads the saved tokenizer with a different tokenization."""
    reloaded = AutoTokenizer.from_pretrained(path)
    problem = next(_iter_problems("train", config.seed, config))
    text = _chat_text(tokenizer, problem, config)
    if reloaded(text, add_special_tokens=False)["input_ids"] != tokenizer(text, add_special_tokens=False)["input_ids"]:
        raise RuntimeError(f"The tokenizer saved in {path} tokenizes differently once reloaded with AutoTokenizer.")


def build_embedded(path: str | os.PathLike, config: EmbeddedConfig | None = None) -> dict[str, Any]:
    """Build the tokenizer and warmed-up model and save them to `path` (which must not exist yet).

    Returns the manifest (settings, parameter count, build time, warm-up log), also saved as `embedded.json`.
    """
    config = config or DEFAULT_CONFIG
    start = time.perf_counter()
    tokenizer = build_tokenizer(config)
    model = build_model(tokenizer, config)
    num_parameters = sum(p.numel() for p in model.parameters())
    logger.info("Building the embedded model (%.2fM parameters) in %s", num_parameters / 1e6, path)
    log = warm_up(model, tokenizer, config)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    _check_reloaded_tokenizer(tokenizer, path, config)
    manifest = {
        "format": BUILD_FORMAT_VERSION,
        "version": config.version_hash(),
        "config": dataclasses.asdict(config),
        "num_parameters": num_parameters,
        "build_seconds": round(time.perf_counter() - start, 1),
        "torch_threads": torch.get_num_threads(),
        **log,
    }
    # The manifest is written last: its presence marks a complete build.
    (Path(path) / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2))
    return manifest


def embedded_path(
    cache_dir: str | os.PathLike | None = None, rebuild: bool = False, config: EmbeddedConfig | None = None
) -> Path:
    """Local directory holding the embedded model and tokenizer, built on first use.

    Usable as `model_name_or_path` / `AutoModelForCausalLM.from_pretrained(...)`.

    Args:
        cache_dir: cache root; the model lives in `<cache_dir>/embedded/<settings-hash>/`. Defaults to the
            `NFT_TRL_CACHE` environment variable, else `~/.cache/nft_trl`.
        rebuild: build again even if a cached copy exists (the new build replaces it atomically).
        config: settings of the build; defaults to the embedded default.
    """
    config = config or DEFAULT_CONFIG
    parent = _cache_root(cache_dir) / "embedded"
    final = parent / config.version_hash()
    if _is_complete(final) and not rebuild:
        return final
    parent.mkdir(parents=True, exist_ok=True)
    with _build_lock(parent / f"{final.name}.lock"):
        if _is_complete(final) and not rebuild:  # another process built it while we waited
            return final
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=parent))
        try:
            build_embedded(tmp, config)
            if final.exists():  # `rebuild`, or a leftover without manifest
                shutil.rmtree(final)
            os.replace(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def load_embedded_model(
    cache_dir: str | os.PathLike | None = None, rebuild: bool = False, config: EmbeddedConfig | None = None
) -> tuple[Qwen2ForCausalLM, PreTrainedTokenizerFast]:
    """The embedded `(model, tokenizer)`, built and cached on first use (a few minutes), then loaded in seconds.

    Arguments as in `embedded_path`. The model is returned in eval mode, fp32, on CPU.
    """
    path = embedded_path(cache_dir=cache_dir, rebuild=rebuild, config=config)
    model = AutoModelForCausalLM.from_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model.eval()
    return model, tokenizer


def load_manifest(cache_dir: str | os.PathLike | None = None, config: EmbeddedConfig | None = None) -> dict[str, Any]:
    """The build manifest (`embedded.json`) of the cached model, building it first if needed."""
    return json.loads((embedded_path(cache_dir=cache_dir, config=config) / MANIFEST_NAME).read_text())


# --------------------------------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------------------------------


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
        examples: a few `{"prompt", "completion", "solution", "reward"}` dicts for display.
    """

    accuracy: float
    per_prompt_accuracy: list[float]
    mixed_fraction: float
    num_prompts: int
    num_samples: int
    num_ungraded: int = 0
    examples: list[dict[str, Any]] = field(default_factory=list)


def _prompt_text(tokenizer: PreTrainedTokenizerFast, prompt: Any) -> str:
    if isinstance(prompt, str):  # standard (non-conversational) prompt
        return prompt
    return tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)


@torch.inference_mode()
def evaluate_accuracy(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerFast,
    dataset: Dataset,
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

    Prompts are rendered with the tokenizer's chat template and left-padded, as TRL does. The reward function is
    called like a TRL reward: `reward_fn(prompts=..., completions=..., **other_columns)`, with conversational
    completions when the prompts are conversational; it returns 1.0 (right), 0.0 (wrong) or `None` (ungradable).

    Args:
        model, tokenizer: the policy to evaluate (left in the training mode it came in).
        dataset: rows with a `prompt` column and the columns `reward_fn` needs (e.g. `solution`).
        num_samples: completions per prompt. Must be 1 with greedy decoding.
        temperature: sampling temperature, with top-k and top-p disabled; 0.0 means greedy decoding.
        max_new_tokens: generation budget; answers cut off before their box count as wrong.
        batch_size: prompts per `generate` call.
        reward_fn: defaults to `nft_trl.math_verifier.math_verifier`.
        seed: seeds sampling (the global RNG state is restored afterwards); `None` keeps the current RNG.
        num_examples: how many completions to return in `examples`.
    """
    if reward_fn is None:
        from nft_trl.math_verifier import math_verifier as reward_fn
    greedy = temperature == 0.0
    if greedy and num_samples != 1:
        raise ValueError("Greedy decoding (temperature=0.0) gives identical samples: use num_samples=1.")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    extra_columns = [name for name in dataset.column_names if name != "prompt"]
    rewards: list[float | None] = []
    examples: list[dict[str, Any]] = []
    rng_context = torch.random.fork_rng(devices=[]) if seed is not None else contextlib.nullcontext()
    with rng_context:
        if seed is not None:
            torch.manual_seed(seed)
        for start in range(0, len(dataset), batch_size):
            rows = dataset[start : start + batch_size]
            texts = [_prompt_text(tokenizer, prompt) for prompt in rows["prompt"]]
            inputs = tokenizer(
                texts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False
            ).to(device)
            sampling = {} if greedy else {"temperature": temperature, "top_k": 0, "top_p": 1.0}
            output = model.generate(
                **inputs,
                do_sample=not greedy,
                num_return_sequences=num_samples,
                max_new_tokens=max_new_tokens,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
                **sampling,
            )
            completions = tokenizer.batch_decode(output[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
            # `generate` returns the samples of each prompt next to each other: repeat each row `num_samples` times.
            repeat = [i for i in range(len(texts)) for _ in range(num_samples)]
            prompts = [rows["prompt"][i] for i in repeat]
            conversational = not isinstance(prompts[0], str)
            graded = [[{"role": "assistant", "content": c}] for c in completions] if conversational else completions
            kwargs = {name: [rows[name][i] for i in repeat] for name in extra_columns}
            batch_rewards = reward_fn(prompts=prompts, completions=graded, **kwargs)
            rewards.extend(batch_rewards)
            for i in range(min(num_examples - len(examples), len(completions))):
                example = {"prompt": texts[repeat[i]], "completion": completions[i], "reward": batch_rewards[i]}
                examples.append(example | {name: kwargs[name][i] for name in extra_columns})
    if was_training:
        model.train()

    per_prompt: list[float] = []
    mixed = 0
    for i in range(len(dataset)):
        graded_rewards = [r for r in rewards[i * num_samples : (i + 1) * num_samples] if r is not None]
        per_prompt.append(sum(graded_rewards) / len(graded_rewards) if graded_rewards else math.nan)
        mixed += len(set(graded_rewards)) > 1
    graded_all = [r for r in rewards if r is not None]
    return EvalResult(
        accuracy=sum(graded_all) / len(graded_all) if graded_all else math.nan,
        per_prompt_accuracy=per_prompt,
        mixed_fraction=mixed / len(dataset) if len(dataset) else 0.0,
        num_prompts=len(dataset),
        num_samples=num_samples,
        num_ungraded=len(rewards) - len(graded_all),
        examples=examples,
    )


def main() -> None:
    """`python -m nft_trl.embedded [--rebuild]`: build (or find) the embedded model and print its directory."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument(
        "--cache_dir", default=None, help=f"cache root (default: ${CACHE_ENV_VAR} or ~/.cache/nft_trl)"
    )
    parser.add_argument("--rebuild", action="store_true", help="build again even if a cached copy exists")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    path = embedded_path(cache_dir=args.cache_dir, rebuild=args.rebuild)
    manifest = json.loads((path / MANIFEST_NAME).read_text())
    logger.info(
        "%.2fM parameters, %d warm-up steps, built in %.0f s",
        manifest["num_parameters"] / 1e6,
        manifest["steps"],
        manifest["build_seconds"],
    )
    print(path)


if __name__ == "__main__":
    main()
