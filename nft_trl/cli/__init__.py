"""The `nft-trl` command line: one dispatcher (`main`) for `train`, `check`, `eval` and `vllm-serve`."""

from .main import main


__all__ = ["main"]
