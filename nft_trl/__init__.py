"""Negative-aware Fine-Tuning (NFT) for TRL.

>>> from nft_trl import NFTConfig, NFTTrainer, math_verifier
"""

from .math_verifier import make_math_verifier, math_verifier
from .nft_config import NFTConfig
from .nft_loss import group_correct_rate, nft_per_token_loss, nft_prompt_weights
from .nft_trainer import NFTTrainer


__version__ = "0.1.0.dev0"

__all__ = [
    "NFTConfig",
    "NFTTrainer",
    "group_correct_rate",
    "make_math_verifier",
    "math_verifier",
    "nft_per_token_loss",
    "nft_prompt_weights",
]
