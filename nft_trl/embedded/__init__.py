"""The embedded offline demo: a math task, its tokenizer, a small warmed-up model, and the demo that trains it.

Everything here runs on a laptop CPU and downloads nothing. `task` is two-digit addition with the answer in
`\\boxed{}` as a TRL conversational dataset (and a second task, countdown: reach a target from three numbers, where a
wrong answer is a different plan; `EmbeddedConfig.countdown()`); `tokenizer` trains the package's byte-level BPE
tokenizers (the task's and the tests' tiny one); `model` builds random Qwen2 models and the embedded model, a
3.3M-parameter Qwen2 warmed up until at least 45% of its sampled answers to validation prompts are right (the shipped
build stopped at 51.6%; it answers 53.4% of held-out test problems right, 256 problems x 4 samples at T=1), which
ships with the package (`pretrained/`; `EMBEDDED_MODEL` is its folder) so the demo starts at once; `demo` is what
`python examples/train_nft.py` runs with no model: NFT on that model, with held-out accuracy before and after and a
learning-curve PNG. `python -m nft_trl.embedded build` rebuilds the model deterministically.

>>> from nft_trl import NFTTrainer, math_verifier
>>> from nft_trl.embedded import EMBEDDED_MODEL, make_dataset
>>> trainer = NFTTrainer(EMBEDDED_MODEL, reward_funcs=[math_verifier], train_dataset=make_dataset("train", 1_000))
>>> held_out = make_dataset("test", 256, seed=0)
"""

from .config import DEFAULT_CONFIG, EmbeddedConfig
from .model import (
    CACHE_ENV_VAR,
    EMBEDDED_MODEL,
    MANIFEST_NAME,
    SHIPPED_DIR,
    build_embedded,
    embedded_path,
    load_embedded_model,
    load_manifest,
)
from .task import CountdownProblem, Problem, make_dataset, make_problems, task_reward


__all__ = [
    "CACHE_ENV_VAR",
    "DEFAULT_CONFIG",
    "EMBEDDED_MODEL",
    "MANIFEST_NAME",
    "SHIPPED_DIR",
    "CountdownProblem",
    "EmbeddedConfig",
    "Problem",
    "build_embedded",
    "embedded_path",
    "load_embedded_model",
    "load_manifest",
    "make_dataset",
    "make_problems",
    "task_reward",
]
