"""Negative-aware Fine-Tuning (NFT) for TRL.

>>> from nft_trl import NFTConfig, NFTTrainer, math_verifier

The names below are imported on first use (PEP 562): `import nft_trl.rewards`, `nft-trl eval` or `nft-trl generate`
do not pay for TRL's trainer stack (transformers' trainer utilities import PEFT, about 4 s of start-up per process).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING


__version__ = "0.1.0.dev0"

_EXPORTS = {
    "NFTConfig": "algorithm",
    "NFTTrainer": "algorithm",
    "group_correct_rate": "algorithm",
    "nft_per_token_loss": "algorithm",
    "nft_prompt_weights": "algorithm",
    "dapo_strict_box": "rewards",
    "make_math_verifier": "rewards",
    "math_verifier": "rewards",
}

__all__ = [
    "NFTConfig",
    "NFTTrainer",
    "dapo_strict_box",
    "group_correct_rate",
    "make_math_verifier",
    "math_verifier",
    "nft_per_token_loss",
    "nft_prompt_weights",
]

if TYPE_CHECKING:
    from .algorithm import NFTConfig, NFTTrainer, group_correct_rate, nft_per_token_loss, nft_prompt_weights
    from .rewards import dapo_strict_box, make_math_verifier, math_verifier


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
