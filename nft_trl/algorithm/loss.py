"""The NFT loss as pure functions: tensors in, per-token loss and detached statistics out.

Negative-aware Fine-Tuning (Chen et al., arXiv 2505.18116) keeps maximum likelihood on correct answers and learns from
wrong ones through an implicit negative policy. For an answer `a` to question `q` with verdict `r in {0, 1}`, the
group's correctness rate `r_hat` and the ratio `R_t = pi_theta(a_t | ...) / pi_old(a_t | ...)`:

    loss = - w(q) * sum_t [ r * log R_t + negative_weight * (1 - r) * log clip_eps((1 - r_hat * R_t) / (1 - r_hat)) ]

where `clip_eps` floors the VALUE at `eps` (`negative_clip`) but keeps the GRADIENT of its argument (a straight-through
clamp). Nothing here touches an accelerator, calls `.item()` or reduces across processes: aggregation over tokens and
processes stays in the trainer, so these functions can be checked with plain tensors.

Shapes: `B` completions, `T` completion tokens (right padded).
"""

from __future__ import annotations

from typing import Literal

import torch


PromptWeighting = Literal["incorrect_rate", "sqrt_incorrect_odds", "none"]
RatioLevel = Literal["token", "sequence"]

PROMPT_WEIGHTINGS: tuple[str, ...] = ("incorrect_rate", "sqrt_incorrect_odds", "none")
RATIO_LEVELS: tuple[str, ...] = ("token", "sequence")


def group_correct_rate(correct: torch.Tensor, valid: torch.Tensor, num_generations: int) -> torch.Tensor:
    """Per-row correctness rate `r_hat` of each row's group, counting only valid (scored) rows.

    Args:
        correct: `(N,)` bool or {0, 1} float, the verdict of each completion. Groups of `num_generations` rows are
            contiguous (TRL's gathered order).
        valid: `(N,)` bool, False for completions that could not be scored; they count neither as right nor wrong.
        num_generations: group size `K`; `N` must be a multiple of it.

    Returns:
        `(N,)` float: `r_hat` of the row's group, repeated for each row. A group with no valid row gets 0.
    """
    if correct.numel() % num_generations != 0:
        raise ValueError(
            f"The batch has {correct.numel()} completions, which is not a multiple of num_generations "
            f"({num_generations}); every group must be complete."
        )
    valid = valid.to(torch.float32)
    correct = correct.to(torch.float32) * valid
    hits = correct.view(-1, num_generations).sum(dim=1)
    counts = valid.view(-1, num_generations).sum(dim=1)
    rate = hits / counts.clamp(min=1.0)
    return rate.repeat_interleave(num_generations)


def nft_prompt_weights(correct_rate: torch.Tensor, weighting: PromptWeighting) -> torch.Tensor:
    """The prompt weight `w(q)` of each row (not normalised across the batch).

    - `"incorrect_rate"`: `1 - r_hat` (the paper's default; on-policy it equals Dr. GRPO's advantage scale);
    - `"sqrt_incorrect_odds"`: `sqrt((1 - r_hat) / r_hat)` (on-policy it equals GRPO with std-normalised advantages);
    - `"none"`: `1`.

    At `r_hat = 0` the sqrt-odds weight diverges, but every answer of such a group is wrong, so `x_t = 1` exactly and
    the product `w * grad` tends to 0 (`w * r_hat / (1 - r_hat) = sqrt(r_hat / (1 - r_hat))`): the weight is set to 0
    there, which is that limit, instead of producing `inf * 0 = NaN`.

    Args:
        correct_rate: `(B,)` float in [0, 1].

    Returns:
        `(B,)` float, detached.
    """
    r_hat = correct_rate.detach().to(torch.float32)
    if weighting == "incorrect_rate":
        return 1.0 - r_hat
    if weighting == "sqrt_incorrect_odds":
        safe = r_hat.clamp(min=torch.finfo(r_hat.dtype).tiny)
        return torch.where(r_hat > 0, torch.sqrt((1.0 - r_hat) / safe), torch.zeros_like(r_hat))
    if weighting == "none":
        return torch.ones_like(r_hat)
    raise ValueError(f"Unknown prompt_weighting {weighting!r}; use one of {PROMPT_WEIGHTINGS}.")


def straight_through_floor(x: torch.Tensor, floor: float) -> torch.Tensor:
    """`max(x, floor)` in value, the gradient of `x` (identity) everywhere: `x + stop_grad(max(x, floor) - x)`."""
    return x + (x.clamp(min=floor) - x).detach()


def nft_per_token_loss(
    per_token_logps: torch.Tensor,
    old_per_token_logps: torch.Tensor,
    correct: torch.Tensor,
    correct_rate: torch.Tensor,
    mask: torch.Tensor,
    *,
    valid: torch.Tensor | None = None,
    negative_weight: float = 1.0,
    negative_clip: float = 1.0,
    prompt_weighting: PromptWeighting = "incorrect_rate",
    max_log_ratio: float | None = 10.0,
    ratio_level: RatioLevel = "token",
    correct_rate_margin: float = 0.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-token NFT loss.

    Args:
        per_token_logps: `(B, T)` log pi_theta of each completion token (carries the gradient).
        old_per_token_logps: `(B, T)` log pi_old of the same tokens (the policy that generated them); no gradient.
        correct: `(B,)` bool or {0, 1}: the verifier's verdict of each completion.
        correct_rate: `(B,)` float: `r_hat` of each row's group (see `group_correct_rate`); no gradient.
        mask: `(B, T)` {0, 1}: completion tokens that count (padding, tool output and masked rows are 0).
        valid: `(B,)` bool, optional: rows that were scored. Invalid rows get a zero loss (and zero gradient).
        negative_weight: weight of the wrong-answer term; `0.0` gives RFT (maximum likelihood on correct answers).
        negative_clip: `eps`, the floor of `x_t = (1 - r_hat * R_t) / (1 - r_hat)` (value only, gradient kept).
        prompt_weighting: `w(q)`, see `nft_prompt_weights`.
        max_log_ratio: cap on `log R` before it is used (`R = exp(min(log R, cap))`); `None` disables it.
        ratio_level: `"token"` uses the per-token ratio `R_t`; `"sequence"` uses the ratio of the whole answer,
            `R = prod_t R_t` (log-ratios summed over the answer's tokens), and spreads each answer's loss evenly over
            its tokens so that summing the per-token loss over a row gives the sequence loss.
        correct_rate_margin: clamp `r_hat` into `[margin, 1 - margin]` inside the loss (both `x_t` and `w`). `0.0`
            (no clamp) is NFT's definition; the authors' code uses 0.02, which gives all-wrong and all-right groups a
            small gradient instead of none.

    Returns:
        `(per_token_loss, stats)`: the `(B, T)` loss (zero on masked tokens), to be aggregated by the caller, and
        detached 0-dim sums the caller reduces across processes: `positive_tokens`, `negative_tokens`,
        `clamped_tokens` (wrong-answer tokens whose `x` was floored), `ratio_sum` (sum of `R` over counted tokens)
        and `tokens`.

    Limits (no `0 * inf`): at `r_hat = 0` every answer is wrong and `x = 1` exactly (zero loss, zero gradient); at
    `r_hat = 1` there is no wrong answer and `w = 1 - r_hat = 0`. Rows that are correct never evaluate `x`'s
    denominator, so a group's rate of 1 cannot divide by zero.
    """
    if ratio_level not in RATIO_LEVELS:
        raise ValueError(f"Unknown ratio_level {ratio_level!r}; use one of {RATIO_LEVELS}.")
    if negative_clip <= 0:
        raise ValueError(f"negative_clip must be > 0, got {negative_clip}.")
    if not 0.0 <= correct_rate_margin < 0.5:
        raise ValueError(f"correct_rate_margin must be in [0, 0.5), got {correct_rate_margin}.")

    mask = mask.to(per_token_logps.dtype)
    positive = correct.to(torch.bool)
    valid = torch.ones_like(positive) if valid is None else valid.to(torch.bool)
    row_keep = valid.to(per_token_logps.dtype)
    r_hat = correct_rate.detach().to(per_token_logps.dtype)
    if correct_rate_margin > 0:
        r_hat = r_hat.clamp(min=correct_rate_margin, max=1.0 - correct_rate_margin)

    log_ratio = torch.where(mask.bool(), per_token_logps - old_per_token_logps, torch.zeros_like(per_token_logps))
    if ratio_level == "sequence":
        log_ratio = log_ratio.sum(dim=-1, keepdim=True)  # (B, 1): log of the whole answer's ratio
    if max_log_ratio is not None:
        # NFT: R = exp(min(log R, cap)); above the cap the ratio is constant (no gradient), as in the reference code.
        log_ratio = log_ratio.clamp(max=max_log_ratio)
    ratio = torch.exp(log_ratio)  # (B, T) or (B, 1)

    # Negative term. Only valid wrong rows read x, and for them r_hat < 1; every other row gets x = 1 so that no
    # intermediate (value or gradient) is ever inf or NaN, even where its result is discarded.
    pos_col, r_col = positive.unsqueeze(1), r_hat.unsqueeze(1)
    neg_col = (~positive & valid).unsqueeze(1)
    denom = torch.where(neg_col, 1.0 - r_col, torch.ones_like(r_col))
    x = torch.where(neg_col, (1.0 - r_col * ratio) / denom, torch.ones_like(ratio))
    log_x = torch.log(straight_through_floor(x, negative_clip))

    weight = nft_prompt_weights(r_hat, prompt_weighting).to(per_token_logps.dtype) * row_keep
    signal = torch.where(pos_col, log_ratio, negative_weight * log_x)  # (B, T), or (B, 1) at sequence level
    if ratio_level == "sequence":
        # Spread each answer's loss evenly over its tokens: the row sum is the sequence loss.
        signal = signal / mask.sum(dim=-1, keepdim=True).clamp(min=1.0)
    per_token_loss = -weight.unsqueeze(1) * signal * mask

    with torch.no_grad():
        kept = mask * row_keep.unsqueeze(1)
        pos_tokens = (kept * pos_col).sum()
        neg_tokens = (kept * ~pos_col).sum()
        clamped = ((x < negative_clip) & neg_col).to(kept.dtype)
        stats = {
            "positive_tokens": pos_tokens,
            "negative_tokens": neg_tokens,
            "clamped_tokens": (clamped * kept).sum(),
            "ratio_sum": (ratio.expand_as(kept) * kept).sum(),
            "tokens": kept.sum(),
        }
    return per_token_loss, stats


#: Aggregations of the per-token loss. The first four normalise exactly as GRPOTrainer does for the same `loss_type`
#: (re-implemented here, so `tests/test_grpo_identity.py` checks them against the installed TRL); `"token_sum"` is
#: the NFT authors' verl reduction.
LOSS_TYPES: tuple[str, ...] = ("dr_grpo", "dapo", "grpo", "bnpo", "token_sum")


def aggregate_loss(
    per_token_loss: torch.Tensor,
    mask: torch.Tensor,
    loss_type: str,
    *,
    max_completion_length: int,
    num_items_in_batch: torch.Tensor,
    num_processes: int,
    accumulation_steps: int,
    steps_per_generation: int,
    token_sum_divisor: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reduce one micro-batch's `(B, T)` loss to the scalar to back-propagate, and the detached `policy_loss` value.

    The scalar is already divided for gradient accumulation where the aggregation needs it (GRPOTrainer sets
    `loss_is_scaled_for_ga`): `"grpo"` (per-answer mean, then mean), `"bnpo"` (over the micro-batch's tokens) and
    `"dr_grpo"` (over `B x max_completion_length`) are divided by `accumulation_steps`; `"dapo"` divides by the tokens
    of one process's accumulation window (`num_items_in_batch`, the generation batch's tokens on all processes, times
    `accumulation_steps / (steps_per_generation x num_processes)`); `"token_sum"` divides the micro-batch's token sum
    by `token_sum_divisor` and nothing else, so an optimizer step sums its micro-batches (data parallelism then
    averages over processes). In evaluation pass `accumulation_steps=steps_per_generation=1`.
    """
    masked = per_token_loss * mask
    if loss_type == "dapo":
        normaliser = num_items_in_batch.clamp(min=1.0) / num_processes * accumulation_steps / steps_per_generation
        loss = masked.sum() / normaliser
        return loss, loss.detach()
    if loss_type == "token_sum":
        loss = masked.sum() / token_sum_divisor
        return loss, loss.detach()
    if loss_type == "grpo":
        loss = (masked.sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()
    elif loss_type == "bnpo":
        loss = masked.sum() / mask.sum().clamp(min=1.0)
    elif loss_type == "dr_grpo":
        loss = masked.sum() / (per_token_loss.size(0) * max_completion_length)
    else:
        raise ValueError(f"Unknown loss_type {loss_type!r}; use one of {LOSS_TYPES}.")
    return loss / accumulation_steps, loss.detach()


def loss_metric_sums(
    stats: dict[str, torch.Tensor],
    policy_loss: torch.Tensor,
    entropies: torch.Tensor,
    mask: torch.Tensor,
    per_token_kl: torch.Tensor | None = None,
) -> torch.Tensor:
    """The sums behind the loss metrics of one micro-batch, stacked so one collective reduces them all."""
    mask = mask.to(entropies.dtype)
    sums = [stats[k] for k in ("positive_tokens", "negative_tokens", "clamped_tokens", "ratio_sum", "tokens")]
    sums += [(entropies.detach() * mask).sum(), mask.sum(), policy_loss, torch.ones((), device=mask.device)]
    if per_token_kl is not None:
        sums.append((per_token_kl.detach() * mask).sum())
    return torch.stack([value.float() for value in sums])


def loss_metrics(sums: torch.Tensor) -> dict[str, float]:
    """Metric values from `loss_metric_sums` added up over processes (`policy_loss` averaged over them)."""
    pos, neg, clamped, ratio_sum, tokens, entropy_sum, mask_sum, loss_sum, processes, *kl = sums.tolist()
    metrics = {
        "nft/positive_token_frac": pos / max(tokens, 1.0),
        "nft/negative_token_frac": neg / max(tokens, 1.0),
        "nft/clamped_frac": clamped / neg if neg > 0 else 0.0,
        "nft/ratio_mean": ratio_sum / max(tokens, 1.0),
        "nft/policy_loss": loss_sum / processes,
        "entropy": entropy_sum / max(mask_sum, 1.0),
    }
    if kl:
        metrics["kl"] = kl[0] / max(mask_sum, 1.0)
    return metrics
