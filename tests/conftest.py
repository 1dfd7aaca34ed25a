"""Shared fixtures and helpers: a tiny local tokenizer and Qwen2 model (no Hub), scripted generation, CPU settings."""

import os


# Offline and quiet before anything imports transformers / huggingface_hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_DISABLED", "true")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from nft_trl.embedded.model import build_tiny_model, save_tiny_model  # noqa: E402
from nft_trl.embedded.scripted import scripted_completion  # noqa: E402
from nft_trl.embedded.scripted import scripted_generation as scripted  # noqa: E402
from nft_trl.embedded.tokenizer import build_tiny_tokenizer  # noqa: E402


REPO_ROOT = Path(__file__).resolve().parents[1]


def benchmarks_dir() -> Path:
    """The real benchmark files: `$NFT_TRL_BENCHMARKS_DIR`, else `shared/data/benchmarks` beside the checkout."""
    return Path(os.environ.get("NFT_TRL_BENCHMARKS_DIR", REPO_ROOT.parent / "shared" / "data" / "benchmarks"))


def cpu_training_args(output_dir, **settings) -> dict:
    """Keyword arguments of a small CPU run for `NFTConfig` or `GRPOConfig`: fp32, no reporting, no checkpoints,
    seeded, batches of 8 answers in groups of 4; `settings` override or add fields."""
    return {
        "output_dir": str(output_dir),
        "use_cpu": True,
        "bf16": False,
        "report_to": "none",
        "save_strategy": "no",
        "logging_steps": 1,
        "gradient_checkpointing": False,
        "seed": 0,
        "per_device_train_batch_size": 8,
        "num_generations": 4,
        **settings,
    }


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return build_tiny_tokenizer()


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory):
    """A tiny Qwen2 model and tokenizer saved to a local folder (usable as `model_name_or_path`)."""
    return str(save_tiny_model(tmp_path_factory.mktemp("tiny-qwen2")))


@pytest.fixture
def tiny_model(tiny_tokenizer):
    return build_tiny_model(tiny_tokenizer, seed=0)


@pytest.fixture
def scripted_generation():
    """`generate` replaced by a deterministic script (`nft_trl.embedded.scripted`), so that several trainers see
    exactly the same completions. Yields the script, `scripted_completion(row, length, num_ids, eos_id)`."""
    with scripted():
        yield scripted_completion
