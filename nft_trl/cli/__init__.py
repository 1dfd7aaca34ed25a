"""The `nft-trl` command line. `main` is the one dispatcher for `train`, `check`, `eval` and `vllm-serve`
(`main.py`); `launch.py` turns a recipe and flags into a checked `accelerate launch` (unknown keys, malformed YAML and
missing model folders stop it with the fix); `preflight.py` checks the batch arithmetic for the launch's real number of
processes and estimates memory per GPU; `train.py` is the training script that `accelerate launch` runs (and that
`examples/train_nft.py` calls), with `NFTConfig` for `method: nft` and TRL's plain `GRPOConfig` for the baselines.
"""

from .main import main


__all__ = ["main"]
