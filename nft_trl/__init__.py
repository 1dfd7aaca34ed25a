"""Negative-aware Fine-Tuning (NFT) for TRL.

>>> from nft_trl import NFTConfig, NFTTrainer, math_verifier
"""

from .algorithm import NFTConfig, NFTTrainer, group_correct_rate, nft_per_token_loss, nft_prompt_weights
from .rewards import dapo_strict_box, make_math_verifier, math_verifier


__version__ = "0.1.0.dev0"

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
