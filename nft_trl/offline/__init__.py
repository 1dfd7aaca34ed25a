"""Offline NFT: train on answers already generated and judged (see docs/offline.md)."""

from .dataset import from_eval_samples, is_judged, load_judged, prepare_judged
from .settings import generation_settings


__all__ = ["from_eval_samples", "generation_settings", "is_judged", "load_judged", "prepare_judged"]
