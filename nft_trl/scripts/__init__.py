"""Training scripts launched by `nft-trl train` (through `accelerate launch`)."""
