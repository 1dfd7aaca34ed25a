"""The `nft-trl` command line. `main` is the one dispatcher for `train`, `check`, `eval` and `vllm-serve`
(`main.py`); `launch.py` turns a recipe and flags into a checked `accelerate launch` (`help.py`: its short `--help`);
`preflight.py` checks a recipe for the launch's real number of processes: the batch arithmetic and the warm-up
(`batch.py`), what the machine lacks, such as Hub access or vLLM (`environment.py`), and the memory per GPU
(`memory.py`); `arguments.py` holds the arguments every module reads (it imports none of them); `train.py` is the
training script that `accelerate launch` runs (and that `examples/train_nft.py` calls), with `NFTConfig` for
`method: nft` and TRL's plain `GRPOConfig` for the baselines.
"""

from .main import main


__all__ = ["main"]
