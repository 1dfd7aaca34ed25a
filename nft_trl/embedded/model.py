"""The embedded model: a small Qwen2 warmed up on the embedded task until about half of its answers are right.

The demo (`python examples/train_nft.py`), the notebooks and the algorithm benchmark need a model that runs
on a laptop CPU, downloads nothing, and leaves room for reinforcement learning to show an improvement. It is a
byte-level BPE tokenizer trained on the task's chat-formatted corpus (`nft_trl.embedded.tokenizer`) and a two-layer
Qwen2 causal LM of about 3.3M parameters, warmed up with supervised steps until its accuracy with sampling at
temperature 1.0 on validation prompts (from the train split) reaches 45% (checked every 50 steps; the shipped build
stopped at 51.6%, and answers 53.4% of held-out test problems right): good enough that groups of sampled answers mix
right and wrong ones (the signal GRPO and NFT learn from), bad enough to leave room to learn.

The default build ships with the package (`nft_trl/embedded/pretrained/`, weights stored in float16, loaded in
float32), so the demo starts at once. `python -m nft_trl.embedded build` runs the deterministic build again (a few
minutes on two CPU cores); any other `EmbeddedConfig` is built on first use and cached under
`~/.cache/nft_trl/embedded/<settings-hash>/` (root overridable with the `NFT_TRL_CACHE` environment variable or the
`cache_dir` argument), written to a temporary directory and renamed into place, so an interrupted build never leaves
a broken cache.

This module also holds the one builder of random Qwen2 models (`random_qwen2`), which the tests' and benchmarks' tiny
models (`build_tiny_model`) and `benchmarks/gpu_check.py`'s Qwen2.5-0.5B-sized model use too.

>>> from nft_trl.embedded import EMBEDDED_MODEL, embedded_path, load_embedded_model
>>> model, tokenizer = load_embedded_model()  # the shipped model, in about a second
>>> EMBEDDED_MODEL  # its folder, for NFTTrainer(EMBEDDED_MODEL, ...) and --model_name_or_path
>>> path = embedded_path()  # the same folder, or another build's (built and cached on first use)
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

from nft_trl.evaluation.accuracy import evaluate_accuracy

from .config import BUILD_FORMAT_VERSION, DEFAULT_CONFIG, EmbeddedConfig
from .task import CountdownProblem, Problem, iter_problems, make_dataset, task_reward
from .tokenizer import chat_renderer, train_bpe_tokenizer


logger = logging.getLogger(__name__)

CACHE_ENV_VAR = "NFT_TRL_CACHE"
DEFAULT_CACHE_ROOT = Path("~/.cache/nft_trl")
MANIFEST_NAME = "embedded.json"
#: The default build, shipped as package data (float16 weights; the config says float32, the dtype it runs in).
SHIPPED_DIR = Path(__file__).with_name("pretrained")
SHIPPED_DTYPE = torch.float16
#: The built-in model's folder, a string: `NFTTrainer(EMBEDDED_MODEL, ...)`, `--model_name_or_path` (what
#: `python -m nft_trl.embedded` prints).
EMBEDDED_MODEL = str(SHIPPED_DIR)

# Seeds of the internal streams, offset from the build seed so they never coincide with a user's `make_dataset` seed.
TOKENIZER_CORPUS_SEED_OFFSET = 1_000
SFT_DATA_SEED_OFFSET = 2_000
VALIDATION_SEED_OFFSET = 3_000

LOSS_LOG_EVERY = 10  # warm-up steps between debug log lines
IGNORE_INDEX = -100  # label value that `transformers` causal-LM losses skip

#: The tests' and benchmarks' tiny Qwen2 (with `build_tiny_tokenizer`'s 512 tokens: about 33k parameters).
TINY_ARCHITECTURE = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=64,
    # Room for TRL's default max_completion_length (512) after a test prompt: NFTTrainer refuses a run whose every
    # prompt + max_completion_length exceeds this (nft_trl.runtime.inputs). Rotary positions: no extra parameters.
    max_position_embeddings=2048,
)


# --------------------------------------------------------------------------------------------------------------------
# Random Qwen2 models


def random_qwen2(tokenizer: PreTrainedTokenizerFast, *, seed: int = 0, **architecture: Any) -> Qwen2ForCausalLM:
    """A randomly initialised Qwen2 causal LM (fp32) for `tokenizer`, seeded by `seed`.

    `architecture` holds `Qwen2Config` fields (`hidden_size`, `num_hidden_layers`, ...). The vocabulary is the
    tokenizer's and the embeddings are tied unless `architecture` says otherwise (`vocab_size` may be larger than the
    tokenizer, e.g. to give the LM head a real model's cost).
    """
    config = Qwen2Config(
        **{"vocab_size": len(tokenizer), "tie_word_embeddings": True, **architecture},
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = None
    return model


def build_tiny_model(tokenizer: PreTrainedTokenizerFast, *, seed: int = 0, **architecture: Any) -> Qwen2ForCausalLM:
    """The tests' tiny random Qwen2: `TINY_ARCHITECTURE`, overridden by `architecture`."""
    return random_qwen2(tokenizer, seed=seed, **{**TINY_ARCHITECTURE, **architecture})


def save_tiny_model(path: str | Path, seed: int = 0) -> Path:
    """Build the tiny tokenizer and model and save both to `path` (a local directory usable as `model_name_or_path`)."""
    from .tokenizer import build_tiny_tokenizer

    path = Path(path)
    tokenizer = build_tiny_tokenizer()
    build_tiny_model(tokenizer, seed=seed).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


# --------------------------------------------------------------------------------------------------------------------
# The embedded build: tokenizer, warm-up, cache


def _chat_text(tokenizer: PreTrainedTokenizerFast, problem: Problem | CountdownProblem, config: EmbeddedConfig) -> str:
    messages = [*problem.prompt(), {"role": "assistant", "content": problem.completion(config.worked_answer)}]
    return tokenizer.apply_chat_template(messages, tokenize=False)


def build_tokenizer(config: EmbeddedConfig | None = None) -> PreTrainedTokenizerFast:
    """The task's tokenizer: a byte-level BPE trained on chat-formatted task examples (digits are single tokens)."""
    config = config or DEFAULT_CONFIG
    renderer = chat_renderer()  # the corpus has exactly the text the model will see
    stream = iter_problems("train", config.seed + TOKENIZER_CORPUS_SEED_OFFSET, config)
    corpus = [_chat_text(renderer, next(stream), config) for _ in range(config.tokenizer_corpus_size)]
    return train_bpe_tokenizer(corpus, config.vocab_size)


def build_model(tokenizer: PreTrainedTokenizerFast, config: EmbeddedConfig | None = None) -> Qwen2ForCausalLM:
    """The embedded model before its warm-up: `random_qwen2` with `config`'s architecture and seed."""
    config = config or DEFAULT_CONFIG
    return random_qwen2(tokenizer, seed=config.seed, **config.architecture())


def _sft_batch(
    tokenizer: PreTrainedTokenizerFast, problems: list[Problem | CountdownProblem], worked: bool
) -> dict[str, torch.Tensor]:
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
    stream = iter_problems("train", config.seed + SFT_DATA_SEED_OFFSET, config)
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
                    reward_fn=task_reward(config),
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
    problem = next(iter_problems("train", config.seed, config))
    text = _chat_text(tokenizer, problem, config)
    if reloaded(text, add_special_tokens=False)["input_ids"] != tokenizer(text, add_special_tokens=False)["input_ids"]:
        raise RuntimeError(f"The tokenizer saved in {path} tokenizes differently once reloaded with AutoTokenizer.")


def build_embedded(path: str | os.PathLike, config: EmbeddedConfig | None = None) -> dict[str, Any]:
    """Build the tokenizer and warmed-up model and save them to `path` (which must not exist yet), in float32.

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
        "config": config.settings(),
        "num_parameters": num_parameters,
        "build_seconds": round(time.perf_counter() - start, 1),
        "torch_threads": torch.get_num_threads(),
        **log,
    }
    # The manifest is written last: its presence marks a complete build.
    (Path(path) / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2))
    return manifest


def ship(source: str | os.PathLike, destination: str | os.PathLike = SHIPPED_DIR) -> Path:
    """Copy a build to `destination` (by default the package's `pretrained/`) with its weights in `SHIPPED_DTYPE`.

    `config.json` keeps float32, so `from_pretrained` (TRL's too) loads the model in the dtype it trains in.
    """
    source, destination = Path(source), Path(destination)
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    if destination.exists():
        shutil.rmtree(destination)
    model.to(SHIPPED_DTYPE).save_pretrained(destination)
    config_file = destination / "config.json"
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()), "dtype": "float32"}, indent=2) + "\n")
    AutoTokenizer.from_pretrained(source).save_pretrained(destination)
    manifest = json.loads((source / MANIFEST_NAME).read_text())
    manifest["stored_dtype"] = str(SHIPPED_DTYPE).removeprefix("torch.")
    (destination / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")
    return destination


def shipped_version() -> str | None:
    """The settings hash of the shipped build (`None` when the package ships none)."""
    manifest = SHIPPED_DIR / MANIFEST_NAME
    return json.loads(manifest.read_text())["version"] if manifest.is_file() else None


def embedded_path(
    cache_dir: str | os.PathLike | None = None,
    rebuild: bool = False,
    config: EmbeddedConfig | None = None,
    shipped: bool = True,
) -> Path:
    """Local directory holding the embedded model and tokenizer: the shipped build, else a cached one built on first use.

    Usable as `model_name_or_path` / `AutoModelForCausalLM.from_pretrained(...)`.

    Args:
        cache_dir: cache root; a built model lives in `<cache_dir>/embedded/<settings-hash>/`. Defaults to the
            `NFT_TRL_CACHE` environment variable, else `~/.cache/nft_trl`.
        rebuild: build again even if a cached copy exists (the new build replaces it atomically).
        config: settings of the build; defaults to the embedded default.
        shipped: return the package's shipped build when it has `config`'s settings (and `rebuild` is off).
    """
    config = config or DEFAULT_CONFIG
    if shipped and not rebuild and shipped_version() == config.version_hash():
        return SHIPPED_DIR
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
    cache_dir: str | os.PathLike | None = None,
    rebuild: bool = False,
    config: EmbeddedConfig | None = None,
    shipped: bool = True,
) -> tuple[Qwen2ForCausalLM, PreTrainedTokenizerFast]:
    """The embedded `(model, tokenizer)`: the shipped build, or a cached one (built on first use, a few minutes).

    Arguments as in `embedded_path`. The model is returned in eval mode, fp32, on CPU.
    """
    path = embedded_path(cache_dir=cache_dir, rebuild=rebuild, config=config, shipped=shipped)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model.eval()
    return model, tokenizer


def load_manifest(cache_dir: str | os.PathLike | None = None, config: EmbeddedConfig | None = None) -> dict[str, Any]:
    """The build manifest (`embedded.json`) of the embedded model, building it first if needed."""
    return json.loads((embedded_path(cache_dir=cache_dir, config=config) / MANIFEST_NAME).read_text())
