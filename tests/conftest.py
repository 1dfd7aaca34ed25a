"""Shared fixtures: a tiny local tokenizer and Qwen2 model (no Hub), and offline settings."""

import os


# Offline and quiet before anything imports transformers / huggingface_hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_DISABLED", "true")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from nft_trl.tiny import build_tiny_model, build_tiny_tokenizer  # noqa: E402


REPO_ROOT = Path(__file__).resolve().parents[1]


def benchmarks_dir() -> Path:
    """The real benchmark files: `$NFT_TRL_BENCHMARKS_DIR`, else `shared/data/benchmarks` beside the checkout."""
    return Path(os.environ.get("NFT_TRL_BENCHMARKS_DIR", REPO_ROOT.parent / "shared" / "data" / "benchmarks"))


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return build_tiny_tokenizer()


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory, tiny_tokenizer):
    """A tiny Qwen2 model and tokenizer saved to a local folder (usable as `model_name_or_path`)."""
    path = tmp_path_factory.mktemp("tiny-qwen2")
    build_tiny_model(tiny_tokenizer, seed=0).save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture
def tiny_model(tiny_tokenizer):
    return build_tiny_model(tiny_tokenizer, seed=0)
