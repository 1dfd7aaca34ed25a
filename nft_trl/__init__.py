"""Negative-aware Fine-Tuning (NFT) for TRL."""

__version__ = "0.1.0.dev0"
