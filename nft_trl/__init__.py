"""Negative-aware Fine-Tuning (NFT) for TRL."""

__version__ = "0.1.0.dev0"

from nft_trl.math_verifier import make_math_verifier as make_math_verifier
from nft_trl.math_verifier import math_verifier as math_verifier
