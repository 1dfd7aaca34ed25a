"""The pure NFT loss: hand-computed values, a naive reference loop, limits, the clamp, both ratio levels."""

import math

import pytest
import torch
from torch.testing import assert_close

from nft_trl.algorithm.loss import group_correct_rate, nft_per_token_loss, nft_prompt_weights, straight_through_floor


def naive_loss(logps, old, correct, r_hat, mask, *, negative_weight, eps, weighting, cap, level):
    """Reference: the spec's formula, one sample and one token at a time, with scalar ops."""
    total = []
    for i in range(logps.shape[0]):
        r, q = bool(correct[i]), float(r_hat[i])
        if weighting == "incorrect_rate":
            w = 1 - q
        elif weighting == "sqrt_incorrect_odds":
            w = math.sqrt((1 - q) / q) if q > 0 else 0.0
        else:
            w = 1.0
        tokens = [t for t in range(logps.shape[1]) if mask[i, t]]
        row = [torch.zeros(()) for _ in range(logps.shape[1])]
        if level == "token":
            for t in tokens:
                log_r = logps[i, t] - old[i, t]
                if cap is not None:
                    log_r = torch.clamp(log_r, max=cap)
                if r:
                    row[t] = -w * log_r
                else:
                    x = (1 - q * torch.exp(log_r)) / (1 - q)
                    x = x + (torch.clamp(x, min=eps) - x).detach()
                    row[t] = -w * negative_weight * torch.log(x)
        else:
            log_r = sum(logps[i, t] - old[i, t] for t in tokens)
            if cap is not None:
                log_r = torch.clamp(log_r, max=cap)
            if r:
                seq = -w * log_r
            else:
                x = (1 - q * torch.exp(log_r)) / (1 - q)
                x = x + (torch.clamp(x, min=eps) - x).detach()
                seq = -w * negative_weight * torch.log(x)
            for t in tokens:
                row[t] = seq / len(tokens)
        total.append(torch.stack(row))
    return torch.stack(total)


def random_batch(seed=0, batch=6, length=5, spread=0.7):
    g = torch.Generator().manual_seed(seed)
    old = -torch.rand(batch, length, generator=g) * 3
    logps = (old + spread * torch.randn(batch, length, generator=g)).requires_grad_()
    correct = torch.tensor([1, 0, 0, 1, 0, 1], dtype=torch.bool)[:batch]
    r_hat = torch.tensor([0.5, 0.5, 0.25, 0.75, 0.75, 0.5])[:batch]
    mask = torch.ones(batch, length)
    mask[1, 3:] = 0
    mask[4, 1:] = 0
    return logps, old, correct, r_hat, mask


@pytest.mark.parametrize("level", ["token", "sequence"])
@pytest.mark.parametrize("weighting", ["incorrect_rate", "sqrt_incorrect_odds", "none"])
@pytest.mark.parametrize("eps,cap,neg_w", [(1.0, 10.0, 1.0), (0.3, None, 0.5), (2.0, 0.2, 1.0)])
def test_vectorised_matches_naive_loop(level, weighting, eps, cap, neg_w):
    logps, old, correct, r_hat, mask = random_batch()
    kwargs = {"negative_weight": neg_w, "prompt_weighting": weighting, "max_log_ratio": cap, "ratio_level": level}
    loss, _ = nft_per_token_loss(logps, old, correct, r_hat, mask, negative_clip=eps, **kwargs)
    (grad,) = torch.autograd.grad(loss.sum(), logps)

    logps_ref = logps.detach().clone().requires_grad_()
    ref = naive_loss(
        logps_ref, old, correct, r_hat, mask, negative_weight=neg_w, eps=eps, weighting=weighting, cap=cap, level=level
    )
    (grad_ref,) = torch.autograd.grad(ref.sum(), logps_ref)
    assert_close(loss, ref, rtol=1e-5, atol=1e-6)
    assert_close(grad, grad_ref, rtol=1e-5, atol=1e-6)


def test_hand_computed_values():
    # One correct and one wrong answer in a group with r_hat = 0.5, two tokens each.
    old = torch.log(torch.tensor([[0.5, 0.5], [0.4, 0.2]]))
    logps = torch.log(torch.tensor([[0.6, 0.5], [0.2, 0.2]])).requires_grad_()
    correct, r_hat, mask = torch.tensor([True, False]), torch.tensor([0.5, 0.5]), torch.ones(2, 2)
    loss, stats = nft_per_token_loss(logps, old, correct, r_hat, mask)
    # Correct row: -w * log R with w = 0.5, R = (1.2, 1.0).
    # Wrong row: R = (0.5, 1.0) -> x = (1 - 0.5 R) / 0.5 = (1.5, 1.0) -> -w * log x.
    expected = torch.tensor([[-0.5 * math.log(1.2), 0.0], [-0.5 * math.log(1.5), 0.0]])
    assert_close(loss, expected)
    assert stats["positive_tokens"].item() == 2 and stats["negative_tokens"].item() == 2
    assert stats["clamped_tokens"].item() == 0
    assert stats["ratio_sum"].item() == pytest.approx(1.2 + 1.0 + 0.5 + 1.0)

    # Clamp: R = 3 on a wrong answer gives x = (1 - 1.5) / 0.5 = -1 < eps = 1 -> value log(1) = 0, clamped.
    logps2 = (old + torch.log(torch.tensor([[1.0, 1.0], [3.0, 1.0]]))).requires_grad_()
    loss2, stats2 = nft_per_token_loss(logps2, old, correct, r_hat, mask)
    assert loss2[1, 0].item() == pytest.approx(0.0, abs=1e-6)
    assert stats2["clamped_tokens"].item() == 1


def test_clamp_keeps_gradient_of_x():
    x = torch.tensor([-2.0, 0.2, 0.9, 1.5], requires_grad=True)
    y = straight_through_floor(x, 1.0)
    assert_close(y.detach(), torch.tensor([1.0, 1.0, 1.0, 1.5]))
    (g,) = torch.autograd.grad((y * torch.tensor([1.0, 2.0, 3.0, 4.0])).sum(), x)
    assert_close(g, torch.tensor([1.0, 2.0, 3.0, 4.0]))  # identity gradient even where the value is floored

    # In the loss: a floored wrong-answer token still gets -w * r_hat * R / ((1 - r_hat) * eps), not zero.
    old = torch.zeros(1, 1)
    logps = torch.tensor([[math.log(3.0)]], requires_grad=True)
    loss, stats = nft_per_token_loss(logps, old, torch.tensor([False]), torch.tensor([0.5]), torch.ones(1, 1))
    (g,) = torch.autograd.grad(loss.sum(), logps)
    assert stats["clamped_tokens"].item() == 1
    w, r_hat, ratio, eps = 0.5, 0.5, 3.0, 1.0
    assert g.item() == pytest.approx(w * r_hat * ratio / ((1 - r_hat) * eps), rel=1e-5)


def test_off_policy_gradient_matches_closed_form():
    """d loss / d log pi_t = -w [r - (1 - r) r_hat R_t / ((1 - r_hat) max(x_t, eps))] for every token (spec)."""
    for eps in (0.5, 1.0, 2.0):
        logps, old, correct, r_hat, mask = random_batch(seed=3, spread=1.0)
        loss, stats = nft_per_token_loss(logps, old, correct, r_hat, mask, negative_clip=eps, max_log_ratio=None)
        (grad,) = torch.autograd.grad(loss.sum(), logps)
        ratio = torch.exp(logps.detach() - old)
        q = r_hat.unsqueeze(1)
        x = (1 - q * ratio) / (1 - q)
        r = correct.float().unsqueeze(1)
        w = 1 - q
        closed = -w * (r - (1 - r) * q * ratio / ((1 - q) * x.clamp(min=eps))) * mask
        assert_close(grad, closed, rtol=1e-5, atol=1e-6)
        assert stats["clamped_tokens"].item() > 0 or eps < 1.0  # the batch exercises the floor


def test_on_policy_gradient_is_dr_grpo_advantage():
    logps, _, correct, r_hat, mask = random_batch()
    loss, _ = nft_per_token_loss(logps, logps.detach(), correct, r_hat, mask)
    (grad,) = torch.autograd.grad(loss.sum(), logps)
    advantage = correct.float() - r_hat
    assert_close(grad, -advantage.unsqueeze(1) * mask)


def test_padding_gets_zero_gradient():
    logps, old, correct, r_hat, mask = random_batch(spread=2.0)
    for level in ("token", "sequence"):
        loss, _ = nft_per_token_loss(logps, old, correct, r_hat, mask, ratio_level=level)
        (grad,) = torch.autograd.grad(loss.sum(), logps)
        assert torch.all(grad[mask == 0] == 0)
        assert torch.all(loss[mask == 0] == 0)
        assert grad[mask == 1].abs().sum() > 0


def test_rft_limit():
    logps, old, correct, r_hat, mask = random_batch()
    loss, _ = nft_per_token_loss(logps, old, correct, r_hat, mask, negative_weight=0.0, prompt_weighting="none")
    (grad,) = torch.autograd.grad(loss.sum(), logps)
    assert torch.all(loss[~correct] == 0) and torch.all(grad[~correct] == 0)
    # Correct answers: plain maximum likelihood, -log pi_theta + const, gradient -1 per token.
    assert_close(grad[correct], -mask[correct])


@pytest.mark.parametrize("weighting", ["incorrect_rate", "sqrt_incorrect_odds", "none"])
@pytest.mark.parametrize("level", ["token", "sequence"])
def test_degenerate_groups_are_finite_and_equal_their_limits(weighting, level):
    logps, old, _, _, mask = random_batch(spread=1.5)
    # All wrong (r_hat = 0): x = 1 exactly, zero loss and zero gradient for every weighting.
    all_wrong = torch.zeros(6, dtype=torch.bool)
    loss, _ = nft_per_token_loss(
        logps, old, all_wrong, torch.zeros(6), mask, prompt_weighting=weighting, ratio_level=level
    )
    (grad,) = torch.autograd.grad(loss.sum(), logps)
    assert torch.isfinite(loss).all() and torch.isfinite(grad).all()
    assert torch.all(loss == 0) and torch.all(grad == 0)
    # All right (r_hat = 1): no wrong answer; w = 1 - r_hat = 0 (and sqrt odds = 0), "none" leaves -log R.
    all_right = torch.ones(6, dtype=torch.bool)
    loss, _ = nft_per_token_loss(
        logps, old, all_right, torch.ones(6), mask, prompt_weighting=weighting, ratio_level=level
    )
    (grad,) = torch.autograd.grad(loss.sum(), logps)
    assert torch.isfinite(loss).all() and torch.isfinite(grad).all()
    if weighting == "none":
        assert_close(grad, -mask)
    else:
        assert torch.all(grad == 0)


def test_invalid_rows_contribute_nothing_and_stay_finite():
    logps, old, correct, _, mask = random_batch(spread=1.0)
    # A wrong but unscored row in a group whose scored rows are all right: r_hat = 1 would divide by zero if read.
    r_hat = torch.ones(6)
    valid = correct.clone()
    loss, stats = nft_per_token_loss(logps, old, correct, r_hat, mask, valid=valid, prompt_weighting="none")
    (grad,) = torch.autograd.grad(loss.sum(), logps)
    assert torch.isfinite(loss).all() and torch.isfinite(grad).all()
    assert torch.all(grad[~valid] == 0)
    assert stats["negative_tokens"].item() == 0
    # Nothing valid at all.
    loss, _ = nft_per_token_loss(logps, old, correct, r_hat, mask, valid=torch.zeros(6, dtype=torch.bool))
    (grad,) = torch.autograd.grad(loss.sum(), logps)
    assert torch.all(loss == 0) and torch.all(grad == 0)


def test_sequence_level_ratio_is_the_whole_answer():
    logps, old, correct, r_hat, mask = random_batch(spread=0.3)
    loss, stats = nft_per_token_loss(logps, old, correct, r_hat, mask, ratio_level="sequence", max_log_ratio=None)
    seq_log_ratio = ((logps.detach() - old) * mask).sum(-1)
    x = (1 - r_hat * torch.exp(seq_log_ratio)) / (1 - r_hat)
    expected = torch.where(correct, -(1 - r_hat) * seq_log_ratio, -(1 - r_hat) * torch.log(x.clamp(min=1.0)))
    assert_close(loss.sum(-1), expected, rtol=1e-5, atol=1e-6)
    # On-policy the sequence-level gradient equals the token-level one.
    on_token, _ = nft_per_token_loss(logps, logps.detach(), correct, r_hat, mask, ratio_level="token")
    on_seq, _ = nft_per_token_loss(logps, logps.detach(), correct, r_hat, mask, ratio_level="sequence")
    (g_token,) = torch.autograd.grad(on_token.sum(), logps)
    (g_seq,) = torch.autograd.grad(on_seq.sum(), logps)
    assert_close(g_token, g_seq)


def test_log_ratio_cap():
    old = torch.zeros(1, 2)
    logps = torch.tensor([[12.0, 1.0]], requires_grad=True)
    loss, stats = nft_per_token_loss(
        logps, old, torch.tensor([True]), torch.tensor([0.5]), torch.ones(1, 2), max_log_ratio=10.0
    )
    assert loss[0, 0].item() == pytest.approx(-0.5 * 10.0)
    (g,) = torch.autograd.grad(loss.sum(), logps)
    assert g[0, 0].item() == 0.0 and g[0, 1].item() == pytest.approx(-0.5)
    assert stats["ratio_sum"].item() == pytest.approx(math.exp(10.0) + math.e, rel=1e-5)


def test_group_correct_rate_counts_valid_rows_only():
    correct = torch.tensor([1, 0, 1, 1, 0, 0, 1, 0], dtype=torch.bool)
    valid = torch.tensor([1, 1, 1, 0, 0, 0, 0, 0], dtype=torch.bool)
    rate = group_correct_rate(correct, valid, num_generations=4)
    assert_close(rate, torch.tensor([2 / 3] * 4 + [0.0] * 4))
    with pytest.raises(ValueError, match="multiple of num_generations"):
        group_correct_rate(correct[:6], valid[:6], num_generations=4)


def test_prompt_weights():
    r_hat = torch.tensor([0.0, 0.25, 1.0])
    assert_close(nft_prompt_weights(r_hat, "incorrect_rate"), torch.tensor([1.0, 0.75, 0.0]))
    assert_close(nft_prompt_weights(r_hat, "sqrt_incorrect_odds"), torch.tensor([0.0, math.sqrt(3.0), 0.0]))
    assert_close(nft_prompt_weights(r_hat, "none"), torch.ones(3))
    with pytest.raises(ValueError, match="incorrect_rate"):
        nft_prompt_weights(r_hat, "bogus")


def test_correct_rate_margin_clamps_r_hat_as_the_authors_code():
    logps, old, correct, r_hat, mask = random_batch(spread=1.0)
    # Inside [margin, 1 - margin] the clamp changes nothing.
    plain, _ = nft_per_token_loss(logps, old, correct, r_hat, mask)
    clamped, _ = nft_per_token_loss(logps, old, correct, r_hat, mask, correct_rate_margin=0.2)
    assert_close(plain, clamped)
    # Outside, it is the loss at the clamped rate: degenerate groups get a small gradient instead of none.
    all_wrong = torch.zeros(6, dtype=torch.bool)
    loss, _ = nft_per_token_loss(logps, old, all_wrong, torch.zeros(6), mask, correct_rate_margin=0.02)
    expected, _ = nft_per_token_loss(logps, old, all_wrong, torch.full((6,), 0.02), mask)
    assert_close(loss, expected)
    (grad,) = torch.autograd.grad(loss.sum(), logps)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    all_right = torch.ones(6, dtype=torch.bool)
    loss, _ = nft_per_token_loss(logps, old, all_right, torch.ones(6), mask, correct_rate_margin=0.02)
    expected, _ = nft_per_token_loss(logps, old, all_right, torch.full((6,), 0.98), mask)
    assert_close(loss, expected)
    with pytest.raises(ValueError, match="correct_rate_margin"):
        nft_per_token_loss(logps, old, correct, r_hat, mask, correct_rate_margin=0.5)
