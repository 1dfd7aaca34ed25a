"""Rewards: the binary math verifier NFT needs, and what keeps it safe at training scale.

`math_verifier` (math-verify equivalence) and `dapo_strict_box` (the NFT authors' training verdict) follow TRL's reward
signature; `make_math_verifier` builds either with other settings. `countdown_reward` is the verdict of Countdown
problems (the boxed expression reaches the target with each given number once). `answers` reads the final answer out of
a completion (plain string operations), `pool` runs math-verify's SymPy step in killable worker processes (a hard
timeout without signals; `_worker` is the script those processes run), `columns` checks before training that the
dataset has the columns a reward function needs, and `checked` makes a faulty reward function fail naming itself.
"""

from .checked import RewardFunctionError
from .countdown import countdown_reward
from .verifier import MathVerifier, dapo_strict_box, make_math_verifier, math_verifier


__all__ = [
    "MathVerifier",
    "RewardFunctionError",
    "countdown_reward",
    "dapo_strict_box",
    "make_math_verifier",
    "math_verifier",
]
