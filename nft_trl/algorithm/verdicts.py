"""Verdicts: each answer's correct / wrong / unscored from the gathered rewards, and the checks that make a run loud.

NFT needs a binary verdict per answer; TRL's rewards may be continuous, missing (`None` becomes NaN) or spread over
several functions. `judge` thresholds the verdict reward, `group_stats` summarises a generation batch for the logs,
`non_binary_message` describes a verdict reward that is not binary, `NoSignalMonitor` notices when whole generation
batches hold no group with both a right and a wrong answer (nothing to learn) and `no_signal_message` says why: no
answer judged (a gold or verdict problem), all wrong (too hard, truncated) or all right (too easy). All of it works on
the batch gathered from every process, so every process reaches the same conclusions without a collective.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Verdicts:
    """Verdicts of a generation batch over all processes, in TRL's gathered order (groups of K rows contiguous)."""

    correct: torch.Tensor  # (N,) bool
    valid: torch.Tensor  # (N,) bool: the verdict reward returned a value
    truncated: torch.Tensor  # (N,) bool: the answer ended without an end-of-sequence token

    @staticmethod
    def cat(parts: list[Verdicts]) -> Verdicts:
        return Verdicts(*(torch.cat([getattr(p, name) for p in parts]) for name in ("correct", "valid", "truncated")))


def verdict_index(reward_names: list[str], name: str | None) -> int:
    """Column of the verdict reward: the one named `name` (`NFTConfig.correctness_reward`), by default the first."""
    if name is None:
        return 0
    if name not in reward_names:
        raise ValueError(
            f"correctness_reward={name!r} is not one of the reward functions {reward_names}. Set it to the name of "
            "the binary verifier (a function's __name__), or leave it None to use the first."
        )
    return reward_names.index(name)


def judge(verdict_reward: torch.Tensor, threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """`(correct, valid)` from the `(N,)` verdict reward (NaN where the function returned None)."""
    valid = ~torch.isnan(verdict_reward)
    correct = valid & (torch.nan_to_num(verdict_reward, nan=0.0) >= threshold)
    return correct, valid


def mixed_groups(correct: torch.Tensor, valid: torch.Tensor, num_generations: int) -> torch.Tensor:
    """`(N / K,)` bool: groups with at least one right and one wrong scored answer."""
    correct = (correct & valid).view(-1, num_generations)
    wrong = (~correct & valid.view(-1, num_generations)).any(dim=1)
    return correct.any(dim=1) & wrong


def group_stats(correct: torch.Tensor, valid: torch.Tensor, num_generations: int) -> dict[str, float]:
    """Logged under `nft/`: correct rate of the scored answers, shares of degenerate groups and of unscored answers."""
    hits = correct.float().view(-1, num_generations).sum(1)
    counts = valid.float().view(-1, num_generations).sum(1)
    scored = counts > 0
    all_right = scored & (hits == counts)
    all_wrong = scored & (hits == 0)
    values = torch.stack(
        [
            correct.float().sum() / valid.float().sum().clamp(min=1.0),
            (all_right | all_wrong).float().mean(),
            all_right.float().mean(),
            all_wrong.float().mean(),
            1.0 - valid.float().mean(),
        ]
    ).tolist()
    names = (
        "correct_rate",
        "degenerate_group_frac",
        "all_correct_group_frac",
        "all_wrong_group_frac",
        "unscored_frac",
    )
    return dict(zip(names, values, strict=True))


def non_binary_message(values: torch.Tensor, name: str, threshold: float) -> str | None:
    """None when the scored verdict rewards are all in {0, 1} or all in {-1, 1}; else what is wrong and the fix."""
    if values.numel() == 0 or bool(((values == 0) | (values == 1)).all() | ((values == -1) | (values == 1)).all()):
        return None
    low, median, high = torch.quantile(values.float(), torch.tensor([0.0, 0.5, 1.0], device=values.device)).tolist()
    above = (values >= threshold).float().mean().item()
    return (
        f"The reward {name!r} decides correctness in NFT but returned non-binary values (min {low:.4g}, median "
        f"{median:.4g}, max {high:.4g}, {above:.1%} >= correctness_threshold={threshold}). NFT needs a binary verdict "
        "per answer: put a binary verifier (e.g. nft_trl.math_verifier) first in reward_funcs or name it with "
        "correctness_reward=..., or set correctness_threshold to a meaningful cut."
    )


class NoSignalMonitor:
    """Warns once when `patience` generation steps in a row hold no mixed group: NFT then has nothing to learn.

    A group whose answers are all right or all wrong gives no gradient (`w = 1 - r_hat = 0`, or `x = 1` exactly), so
    such steps leave the model unchanged while the run looks healthy. `observe` takes one generation step's verdicts
    (every dynamic-sampling round of it) and returns the warning to log, once, or None. `reward_name` is the verdict
    reward's name, for the message when it judged nothing.
    """

    def __init__(self, patience: int, reward_name: str):
        self.patience = patience
        self.reward_name = reward_name
        self.streak = 0
        self.answers = self.scored = self.correct = self.truncated = 0
        self.warned = False

    def observe(self, verdicts: Verdicts, num_generations: int) -> str | None:
        if self.patience <= 0 or self.warned:
            return None
        if bool(mixed_groups(verdicts.correct, verdicts.valid, num_generations).any()):
            self.streak = self.answers = self.scored = self.correct = self.truncated = 0
            return None
        self.streak += 1
        self.answers += verdicts.valid.numel()
        self.scored += int(verdicts.valid.sum())
        self.correct += int(verdicts.correct.sum())
        self.truncated += int((verdicts.truncated & verdicts.valid).sum())
        if self.streak < self.patience:
            return None
        self.warned = True
        return no_signal_message(
            self.streak, self.answers, self.scored, self.correct, self.truncated, self.reward_name
        )


def no_signal_message(steps: int, answers: int, scored: int, correct: int, truncated: int, reward_name: str) -> str:
    """The "nothing to learn" warning, telling a batch the verdict reward could not judge from one too hard or easy.

    `answers` were generated over `steps` steps, `scored` of them got a verdict, `correct` were right and `truncated`
    of the scored ones ended without an end-of-sequence token.
    """
    span = f"for {steps} generation steps in a row" if steps != 1 else "in a generation step"
    head = f"Nothing to learn: {span} no question had both a right and a wrong answer"
    silence = " Set warn_no_signal_steps=0 to silence this warning."
    gold_checks = (
        "check that the dataset's gold column (math_verifier reads 'solution') holds answers the verifier can parse "
        "(math_verifier returns None when it cannot parse the gold), that every column the reward needs reaches it, "
        "and that the reward returns 1.0 or 0.0 for answers it can judge: called on one dataset row with a completion "
        "that states that row's gold answer in the format it reads (for math_verifier '\\boxed{<gold>}'), it should "
        "return 1.0"
    )
    if scored == 0:
        return (
            f"{head}: the verdict reward {reward_name!r} returned None (cannot judge) for all {answers} answers, so "
            "NFT's gradient was zero. This is a gold-answer or verdict problem, not the prompts' difficulty: "
            f"{gold_checks}.{silence}"
        )
    rate, truncated_share = correct / scored, truncated / scored
    stats = (
        f"verdicts of {reward_name!r}: correct rate {rate:.1%}, {truncated_share:.1%} of the answers truncated at "
        f"max_completion_length, over {scored} scored answers"
    )
    if correct == scored:
        cause, fixes = "every scored answer was right: the prompts are too easy for this model", "harder prompts; "
    elif correct == 0:
        cause, fixes = "every scored answer was wrong", ""
        if truncated_share >= 0.5:
            fixes = "a longer max_completion_length (most answers were cut before their final answer); "
        fixes += f"easier prompts, or a model that can sometimes solve them; check that {reward_name!r} reads this "
        fixes += "model's answer format and that the gold answers are right; "
    else:
        cause, fixes = "each question's answers were all right or all wrong", ""
    unscored = ""
    if scored < answers:
        unscored = (
            f" Besides, {reward_name!r} returned None (cannot judge) for {answers - scored} of the {answers} answers: "
            f"{gold_checks}."
        )
    return (
        f"{head} ({cause}; {stats}), so NFT's gradient was zero. Likely fixes: {fixes}dynamic_sampling=True (keeps "
        f"generating until groups are mixed); more num_generations per question.{unscored}{silence}"
    )
