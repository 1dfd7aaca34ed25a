"""The algorithm: NFT's config, loss, trainer, verdicts and dynamic sampling, on top of TRL's GRPO.

`config` holds `NFTConfig` (a `GRPOConfig` with NFT's fields and validation); `loss` the NFT loss and its aggregation
as pure functions (tensors in, tensors out); `verdicts` turns the gathered rewards into right / wrong / unscored and
watches for batches with nothing to learn; `dynamic_sampling` keeps a batch full of groups whose answers are mixed;
`trainer` holds `NFTTrainer`, a thin `GRPOTrainer` subclass that wires them into TRL's generation and training step.
"""

from .config import NFTConfig
from .loss import group_correct_rate, nft_per_token_loss, nft_prompt_weights
from .trainer import NFTTrainer


__all__ = ["NFTConfig", "NFTTrainer", "group_correct_rate", "nft_per_token_loss", "nft_prompt_weights"]
