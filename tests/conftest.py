"""Shared fixtures: a tiny local tokenizer and Qwen2 model (no Hub), and offline settings."""

import os


# Offline and quiet before anything imports transformers / huggingface_hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_DISABLED", "true")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from nft_trl.embedded.tokenizer import build_tiny_model, build_tiny_tokenizer  # noqa: E402


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


def scripted_completion(row: int, length: int, vocab_size: int, eos_id: int) -> list[int]:
    """A deterministic completion for batch row `row`: varied tokens, and an EOS at a row-dependent position."""
    first_regular = 3  # ids 0-2 are the special tokens of nft_trl.tiny
    span = vocab_size - first_regular
    tokens = [first_regular + (row * 7 + t * 13 + row * t) % span for t in range(length)]
    stop = 2 + row % (length - 1)
    if stop < length:
        tokens[stop] = eos_id
    return tokens


@pytest.fixture
def scripted_generation(monkeypatch):
    """Replace `generate` by a deterministic script, so that several trainers see exactly the same completions.

    Random tiny models rarely emit EOS; TRL slices the completion after the prompt and cuts it at the first EOS.
    """
    import torch
    from transformers.generation.utils import GenerationMixin

    def fake_generate(self, input_ids=None, attention_mask=None, generation_config=None, **kwargs):
        length = generation_config.max_new_tokens if generation_config is not None else 8
        eos = self.config.eos_token_id
        rows = [scripted_completion(b, length, self.config.vocab_size, eos) for b in range(input_ids.size(0))]
        return torch.cat([input_ids, torch.tensor(rows, device=input_ids.device)], dim=1)

    monkeypatch.setattr(GenerationMixin, "generate", fake_generate)
    return scripted_completion
