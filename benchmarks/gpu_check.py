"""GPU validation of NFTTrainer: step-time and memory parity with GRPO, bf16 gradient numerics, ZeRO-3 steps.

    python benchmarks/gpu_check.py               # one H100/H200, no network; about 2 minutes on an H200
    python benchmarks/gpu_check.py --dry-run     # the same code paths on CPU with a tiny model (the test suite)

Four checks, each printing its own lines, then a summary block with the targets:

1. Model. A randomly initialised Qwen2 with Qwen2.5-0.5B's architecture (hidden 896, 24 layers, 14 heads, 2 KV heads,
   intermediate 4864, tied embeddings) and its vocabulary size (151,936, padded: the local BPE tokenizer of
   `nft_trl.embedded.tokenizer` only uses its first few hundred ids, but every log-prob is a softmax over the full vocabulary, so
   the LM head costs what it costs in the real model). Nothing is downloaded.
2. Parity. NFTTrainer and GRPOTrainer (`loss_type="dr_grpo"`, `scale_rewards="none"`) train the same model copy on
   the same prompts with the same settings in bf16 (fp32 master weights, bf16 autocast: `bf16=True`). Rounds alternate
   (NFT, GRPO, GRPO, NFT) so that clock and thermal drift hit both alike; each round drops its first `--warmup` steps.
   Generation is replaced by a fixed script (`nft_trl.embedded.scripted`: identical completions for both trainers,
   EOS spread over the second half of the completion length), so the time is that of a whole
   optimizer step minus sampling: scripted "generation", reward, forward, backward, optimizer. CUDA is synchronised
   at each step boundary. Prints step time, peak memory (CUDA allocator peak above the round's start, smallest over
   rounds) and completion tokens per second for each trainer, and the ratios; for the step time also the ratio of
   each NFT round's median to its paired GRPO round's, and the 95% t-interval of their geometric mean.
3. bf16 numerics. On one batch, the NFT loss gradient with the forward under bf16 autocast vs in fp32: relative error
   of the parameter gradient and of the per-token gradient dL/dlog pi, overall and on wrong-answer tokens near the
   clamp (x close to eps) and near the sign change of x (R close to 1/r_hat). The docstring of `gradient_check`
   explains what should dominate.
4. ZeRO-3. When DeepSpeed is importable and a GPU is present, `accelerate launch` runs NFTTrainer for a few steps in
   one process under DeepSpeed ZeRO-3 with the shipped accelerate config (`nft_trl/accelerate_configs/zero3.yaml`).
   Otherwise prints a SKIP line. One
   process checks the ZeRO-3 code paths (partitioned parameters gathered by TRL's fused LM head, pi_old forward,
   DeepSpeed's backward and step, NFT's metric reduction); it cannot show ranks making different collective calls,
   which needs two GPUs (NCCL does not put two ranks on one GPU).

Targets: step-time ratio NFT/GRPO <= 1.02, peak-memory ratio <= 1.01, bf16-vs-fp32 gradient relative error reported
(flagged above 1e-2), ZeRO-3 steps complete. The step time is judged on its interval: PASS when all of it is within
the target, FAIL when all of it is above, INCONCLUSIVE otherwise (more `--rounds` narrow it). The exit code is 1 when
any check FAILs (INCONCLUSIVE and FLAG are not failures: a FLAG is a pointer to read the gradient check's docstring),
0 otherwise. The dry run's numbers come from a tiny model on a CPU: they
show that the code runs, not that the targets hold, so only a ZeRO-3 failure fails it.
"""

from __future__ import annotations

import argparse
import copy
import gc
import importlib.util
import math
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path


os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("CI", "true")

import torch  # noqa: E402
from datasets import Dataset  # noqa: E402
from transformers import PrinterCallback, Qwen2ForCausalLM, TrainerCallback  # noqa: E402
from trl import GRPOConfig, GRPOTrainer  # noqa: E402

from nft_trl import NFTConfig, NFTTrainer  # noqa: E402
from nft_trl.algorithm.loss import nft_per_token_loss  # noqa: E402
from nft_trl.cli.preflight import resolve_accelerate_config  # noqa: E402
from nft_trl.embedded.model import build_tiny_model, random_qwen2  # noqa: E402
from nft_trl.embedded.scripted import eos_position, scripted_completion, scripted_generation  # noqa: E402
from nft_trl.embedded.tokenizer import build_tiny_tokenizer  # noqa: E402
from nft_trl.evaluation.metrics import t_interval  # noqa: E402


# Qwen2.5-0.5B's architecture (its config.json), written out because nothing can be downloaded.
QWEN2_5_0_5B = dict(
    vocab_size=151936,
    hidden_size=896,
    num_hidden_layers=24,
    num_attention_heads=14,
    num_key_value_heads=2,
    intermediate_size=4864,
    max_position_embeddings=32768,
    rope_theta=1000000.0,
    rms_norm_eps=1e-6,
    tie_word_embeddings=True,
)

STEP_TIME_TARGET = 1.02
MEMORY_TARGET = 1.01
GRAD_ERROR_FLAG = 1e-2
NEAR_CLAMP_REL = 0.05  # a wrong-answer token is "near" a point when within 5% of it (see gradient_check)
ZERO3_TIMEOUT_S = 180  # a ZeRO-3 collective mismatch hangs rather than fails: treat a timeout as a deadlock
ZERO3_DONE = "ZERO3_DONE"  # the worker's last line, parsed by the parent
EOS_STRIDE = 97  # scripted EOS positions jump by this much from row to row: a batch of 16 pads to ~0.96 * length


# ---------------------------------------------------------------------------------------------------- model and data
def build_model(tokenizer, dry_run: bool, seed: int = 0) -> Qwen2ForCausalLM:
    """The dry run's tiny Qwen2, or a random Qwen2 with Qwen2.5-0.5B's architecture and vocabulary size."""
    return build_tiny_model(tokenizer, seed=seed) if dry_run else random_qwen2(tokenizer, seed=seed, **QWEN2_5_0_5B)


def build_dataset(num_prompts: int = 64) -> Dataset:
    return Dataset.from_dict(
        {"prompt": [[{"role": "user", "content": f"What is {i} + {2 * i}?"}] for i in range(num_prompts)]}
    )


def script(tokenizer, length: int):
    """Generation replaced by the script, with EOS in the second half of the completion (see the docstring)."""
    return scripted_generation(len(tokenizer), earliest_eos=length // 2, eos_stride=EOS_STRIDE)


def completion_lengths(batch_size: int, length: int) -> list[int]:
    """Tokens trained on in each scripted completion (EOS included; `length` when the script gives no EOS)."""
    stops = [eos_position(row, length, earliest=length // 2, stride=EOS_STRIDE) for row in range(batch_size)]
    return [length if stop is None else stop + 1 for stop in stops]


@contextmanager
def strict_fp32():
    """fp32 matmuls really in fp32 (no TF32) inside the block: the reference of the gradient check."""
    previous = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = previous


def parity_reward(completion_ids, **kwargs):
    """A binary verdict that mixes right and wrong answers within groups."""
    return [float(ids[0] % 3 == 0) for ids in completion_ids]


def trainer_args(opts, output_dir: str, **overrides) -> dict:
    """Settings shared by every trainer here (NFT and GRPO alike)."""
    cuda = torch.cuda.is_available()
    return dict(
        output_dir=output_dir,
        use_cpu=not cuda,
        bf16=True,  # fp32 master weights, bf16 autocast (CPU autocast in the dry run)
        report_to="none",
        per_device_train_batch_size=opts.batch_size,
        num_generations=opts.num_generations,
        max_completion_length=opts.completion_length,
        learning_rate=1e-6,
        save_strategy="no",
        logging_steps=1,
        disable_tqdm=True,
        gradient_checkpointing=opts.gradient_checkpointing,
        loss_type="dr_grpo",
        seed=0,
        **overrides,
    )


# ------------------------------------------------------------------------------------------------------------ parity
class SyncedStepTimer(TrainerCallback):
    """Wall time of each optimizer step; CUDA is synchronised at both ends so that queued kernels are not misbooked."""

    def __init__(self):
        self.times: list[float] = []

    def _sync(self):
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    def on_step_begin(self, args, state, control, **kwargs):
        self._sync()
        self._start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self._sync()
        self.times.append(time.perf_counter() - self._start)


def run_round(kind: str, base_model, tokenizer, dataset, opts, workdir: str) -> tuple[list[float], int]:
    """Train a fresh copy of `base_model` for `warmup + steps` steps; return the measured step times and peak bytes."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start_bytes = torch.cuda.memory_allocated()
    args = trainer_args(opts, os.path.join(workdir, kind), max_steps=opts.warmup + opts.steps)
    if kind == "nft":
        config, trainer_cls = NFTConfig(**args), NFTTrainer
    else:
        config, trainer_cls = GRPOConfig(**args, scale_rewards="none"), GRPOTrainer
    timer = SyncedStepTimer()
    trainer = trainer_cls(
        copy.deepcopy(base_model),
        reward_funcs=[parity_reward],
        args=config,
        train_dataset=dataset,
        processing_class=tokenizer,
        callbacks=[timer],
    )
    trainer.remove_callback(PrinterCallback)  # disable_tqdm=True prints every log dict otherwise
    trainer.train()
    peak = torch.cuda.max_memory_allocated() - start_bytes if torch.cuda.is_available() else 0
    del trainer
    gc.collect()
    return timer.times[opts.warmup :], peak


def parity_check(base_model, tokenizer, opts) -> dict:
    dataset = build_dataset()
    times, peaks = {"nft": [], "grpo": []}, {"nft": [], "grpo": []}
    round_medians = {"nft": [], "grpo": []}
    order = ("nft", "grpo")
    with tempfile.TemporaryDirectory() as workdir:
        for round_index in range(opts.rounds):
            for kind in order if round_index % 2 == 0 else order[::-1]:
                step_times, peak = run_round(kind, base_model, tokenizer, dataset, opts, workdir)
                times[kind].extend(step_times)
                round_medians[kind].append(statistics.median(step_times))
                peaks[kind].append(peak)

    lengths = completion_lengths(opts.batch_size, opts.completion_length)
    tokens, padded = sum(lengths), max(lengths)
    print(
        f"parity: batch {opts.batch_size} ({opts.num_generations} per prompt), completions up to "
        f"{opts.completion_length} tokens (padded to {padded}; {tokens} trained tokens per step), {opts.rounds} "
        f"round(s) per trainer x ({opts.warmup} warm-up + {opts.steps} measured) steps, interleaved; generation "
        "replaced by a fixed script (time = whole optimizer step without sampling)"
    )
    medians = {kind: statistics.median(times[kind]) for kind in times}
    # Smallest over rounds: the peak is deterministic for a given trainer, except that the very first round (NFT's)
    # also pays one-time allocations (Triton kernel compilation and autotuning of TRL's fused LM head).
    peak = {kind: min(peaks[kind]) for kind in peaks}
    for kind in ("nft", "grpo"):
        spread = f"{1e3 * min(times[kind]):.1f}-{1e3 * max(times[kind]):.1f}"
        memory = f"{peak[kind] / 2**20:9.1f} MiB" if torch.cuda.is_available() else "n/a (CPU)"
        print(
            f"{kind:<5} median step {1e3 * medians[kind]:9.1f} ms (min-max {spread} ms), "
            f"peak GPU memory {memory}, {tokens / medians[kind]:10.1f} completion tokens/s"
        )
    time_ratio = medians["nft"] / medians["grpo"]
    memory_ratio = peak["nft"] / peak["grpo"] if peak["grpo"] > 0 else float("nan")
    print(f"step-time ratio NFT/GRPO: {time_ratio:.3f} (target <= {STEP_TIME_TARGET})")
    pair_ratios = [n / g for n, g in zip(round_medians["nft"], round_medians["grpo"], strict=True)]
    low, high = ratio_interval(pair_ratios)
    print(
        f"step-time ratio per round pair ({len(pair_ratios)} pairs): min-max {min(pair_ratios):.3f}-"
        f"{max(pair_ratios):.3f}, 95% interval of the geometric mean {low:.3f}-{high:.3f}"
    )
    memory_note = "" if torch.cuda.is_available() else " (no CUDA allocator on CPU: not measured)"
    print(f"peak memory ratio NFT/GRPO: {memory_ratio:.3f} (target <= {MEMORY_TARGET}){memory_note}")
    return {"time_ratio": time_ratio, "time_interval": (low, high), "memory_ratio": memory_ratio}


def ratio_interval(ratios: list[float]) -> tuple[float, float]:
    """95% t-interval of the geometric mean of per-round-pair ratios: `(low, high)`, NaN for fewer than 2 pairs.

    Step times on a GPU drift by more than the 2% target between rounds (the same script gave NFT/GRPO ratios from
    0.83 to 1.08 with 2-4 rounds of 5 steps), so the verdict is taken on this interval, not on the point ratio.
    """
    mean, half = t_interval([math.log(r) for r in ratios])
    return math.exp(mean - half), math.exp(mean + half)


def failed_checks(time_verdict: str, memory_ok: bool | None, zero3_status: str) -> list[str]:
    """The checks that fail the script: a FAILed step time, a memory ratio above target, a failed ZeRO-3 run."""
    checks = (
        ("step-time ratio", not time_verdict.startswith("FAIL")),
        ("peak memory ratio", memory_ok is not False),
        ("ZeRO-3", zero3_status != "FAIL"),
    )
    return [name for name, ok in checks if not ok]


def step_time_verdict(interval: tuple[float, float]) -> str:
    """PASS when the whole interval is within the target, FAIL when all of it is above, else INCONCLUSIVE."""
    low, high = interval
    if high <= STEP_TIME_TARGET:
        return "PASS"
    if low > STEP_TIME_TARGET:
        return "FAIL"
    return "INCONCLUSIVE"


# -------------------------------------------------------------------------------------------------- bf16 numerics
def relative_error(approx: torch.Tensor, exact: torch.Tensor) -> float:
    """||approx - exact|| / ||exact|| (nan on an empty selection)."""
    if exact.numel() == 0:
        return float("nan")
    approx, exact = approx.double(), exact.double()
    return float((approx - exact).norm() / exact.norm().clamp(min=1e-300))


def trainer_logps(trainer, model, input_ids, attention_mask, length: int, *, bf16: bool) -> torch.Tensor:
    """`(B, T)` completion log-probs through GRPOTrainer's own function, under bf16 autocast or in fp32."""
    with torch.autocast(input_ids.device.type, dtype=torch.bfloat16, enabled=bf16):
        logps, _, _ = trainer._get_per_token_logps_and_entropies(model, input_ids, attention_mask, length)
    return logps


def dr_grpo_nft_loss(logps, old_logps, correct, r_hat, mask, eps: float, max_length: int) -> torch.Tensor:
    """The trainer's NFT loss with `loss_type="dr_grpo"`: token losses summed over `batch * max_completion_length`."""
    per_token, _ = nft_per_token_loss(
        logps, old_logps, correct, r_hat, mask, negative_clip=eps, prompt_weighting="incorrect_rate"
    )
    return per_token.sum() / (logps.size(0) * max_length)


def gradient_check(base_model, tokenizer, opts) -> dict:
    """bf16-autocast vs fp32 gradient of the NFT loss on one batch.

    The batch is made off-policy on purpose (on-policy every ratio is exactly 1 and the clamp never matters): pi_old
    is the fp32 log-prob minus a chosen log-ratio, the same tensor for both precisions (it is data, as in training).
    Wrong-answer tokens get ratios in three bands: generic (|log R| <= 0.3), near the clamp (x within 5% of eps) and
    near the sign change of x (R within 5% of 1/r_hat). The loss and its aggregation are the trainer's (the pure
    `nft_per_token_loss`, summed over a constant as `loss_type="dr_grpo"`); the log-probs come from GRPOTrainer's own
    `_get_per_token_logps_and_entropies` (TRL's fused LM head), with and without `torch.autocast(bfloat16)`.

    What the errors should be (reasoning written before any GPU run: check it against the printed numbers):
    - TRL's fused head returns fp32 log-probs even under autocast (bf16 matmul inputs, fp32 log-sum-exp; the line
      "log-probs ... are torch.float32" checks it), so the NFT loss arithmetic itself runs in fp32 and `1 - r_hat * R` does not cancel in bf16. The error of the per-token
      gradient is that of the bf16 forward: `d coef / d log R` times the log-prob error. Correct tokens have a
      constant coefficient (`-w`) and no error at all; wrong tokens' coefficient is `w r_hat R / ((1 - r_hat)
      max(x, eps))`, so its relative error is about `|log-prob error| * (1 + r_hat R / ((1 - r_hat) x))` while
      unclamped: it grows as x falls toward eps (small eps amplifies it by up to 1/eps), and once clamped it is only
      `|log-prob error|` (the value of x no longer enters). Near R = 1/r_hat, x is ~0 and always clamped: the
      cancellation in x changes the floored value only, never the gradient. So the eps = 0.1 ablation (printed too)
      should show a larger near-clamp error than the default eps = 1, by up to r_hat R / ((1 - r_hat) eps).
    - The "loss in bf16" line shows what would happen if the loss were computed on bf16 log-probs (a trainer or
      kernel that returns bf16 log-probs): the log-ratio of two nearly equal numbers around -12 is then quantised to
      2^-4 = 0.06, i.e. 6% ratio error, and the near-clamp coefficient error follows. Keep log-probs in fp32.
    - The parameter gradient error is dominated by the bf16 matmuls of the forward and backward, which GRPO and plain
      maximum likelihood share: the "likelihood baseline" line is the same measurement for `-sum log pi` on the same
      batch. If NFT's error is above 1e-2, compare it with that baseline: a similar value means bf16 training itself,
      not the NFT loss, sets the error.
    """
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    # A smaller batch than the parity runs: two forward graphs (fp32 and bf16) stay alive for repeated backward passes.
    # Groups of 4 answers, so that the batch holds groups with different r_hat.
    batch, length, k = opts.grad_batch_size, opts.completion_length, min(opts.num_generations, 4)
    eos = tokenizer.eos_token_id
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is 3 + 4?"}], add_generation_prompt=True, tokenize=False
    )
    prompt = tokenizer(text, add_special_tokens=False)["input_ids"]
    completions = torch.tensor(
        [
            scripted_completion(b, length, len(tokenizer), eos, earliest_eos=length // 2, eos_stride=EOS_STRIDE)
            for b in range(batch)
        ]
    )
    lengths = torch.tensor(completion_lengths(batch, length))
    mask = (torch.arange(length).unsqueeze(0) < lengths.unsqueeze(1)).float()  # up to and including EOS
    prompt_ids = torch.tensor(prompt).repeat(batch, 1)
    input_ids = torch.cat([prompt_ids, completions], dim=1).to(device)
    attention_mask = torch.cat([torch.ones_like(prompt_ids).float(), mask], dim=1).to(device)
    mask = mask.to(device)

    # Verdicts: group g has (g % (k - 1)) + 1 correct answers, so every group is mixed and r_hat varies.
    correct = torch.zeros(batch, dtype=torch.bool)
    for row in range(batch):
        group, index = divmod(row, k)
        correct[row] = index < (group % (k - 1)) + 1
    correct = correct.to(device)
    r_hat = correct.float().view(-1, k).mean(1).repeat_interleave(k)

    # A trainer only for its log-prob function (TRL's fused LM head); fp32 model, autocast applied from outside.
    with tempfile.TemporaryDirectory() as workdir:
        args = trainer_args(opts, workdir, max_steps=1)
        args["bf16"] = False  # the trainer must not autocast by itself: each pass below chooses its precision
        trainer = NFTTrainer(
            copy.deepcopy(base_model),
            reward_funcs=[parity_reward],
            args=NFTConfig(**args),
            train_dataset=build_dataset(8),
            processing_class=tokenizer,
        )
    model = trainer.model.to(device)
    model.eval()  # no dropout in Qwen2, but be explicit: both passes must see the same network
    params = [p for p in model.parameters() if p.requires_grad]

    logps32, logps16 = (
        trainer_logps(trainer, model, input_ids, attention_mask, length, bf16=bf16) for bf16 in (False, True)
    )
    print(
        f"bf16 numerics: log-probs from TRL's fused head are {logps16.dtype} under autocast; |bf16 - fp32| log-prob "
        f"error: mean {((logps16 - logps32).abs() * mask).sum().item() / mask.sum().item():.2e}, "
        f"max {((logps16 - logps32).abs() * mask).max().item():.2e} (log-probs around {logps32[mask.bool()].mean().item():.1f})"
    )

    # Chosen log-ratios (fp32 reference): generic band, near the clamp, near R = 1/r_hat; wrong tokens only.
    generator = torch.Generator().manual_seed(0)
    band = torch.randint(0, 3, (batch, length), generator=generator).to(device)
    jitter = (torch.rand(batch, length, generator=generator).to(device) * 2 - 1) * 0.02
    generic = (torch.rand(batch, length, generator=generator).to(device) * 2 - 1) * 0.3
    rate = r_hat.unsqueeze(1)

    results = {}
    for eps in sorted({opts.negative_clip, 0.1}, reverse=True):
        # x = eps <=> R = (1 - eps (1 - r_hat)) / r_hat, which exists (R > 0) for eps < 1 / (1 - r_hat).
        r_at_eps = ((1 - eps * (1 - rate)) / rate).clamp(min=1e-3)
        target = torch.where(band == 1, torch.log(r_at_eps) + jitter, generic)
        target = torch.where(band == 2, -torch.log(rate) + jitter, target)
        target = torch.where(correct.unsqueeze(1), generic, target)
        old = (logps32 - target).detach()

        ratio = torch.exp(target)
        x = (1 - rate * ratio) / (1 - rate).clamp(min=1e-6)
        wrong = (~correct).unsqueeze(1) & mask.bool()
        near_eps = wrong & ((x - eps).abs() <= NEAR_CLAMP_REL * eps)
        near_flip = wrong & ((rate * ratio - 1).abs() <= NEAR_CLAMP_REL)

        grads = {}
        for name, lp in (("fp32", logps32), ("bf16", logps16)):
            loss = dr_grpo_nft_loss(lp, old, correct, r_hat, mask, eps, length)
            coef, *param_grads = torch.autograd.grad(loss, [lp, *params], retain_graph=True)
            grads[name] = (coef * batch * length, torch.cat([g.flatten() for g in param_grads]))
        # The same loss on bf16-rounded log-probs with bf16 arithmetic: the failure mode fp32 log-probs avoid.
        lp16 = logps32.detach().to(torch.bfloat16).requires_grad_(True)
        (coef_bf16_loss,) = torch.autograd.grad(
            dr_grpo_nft_loss(lp16, old.to(torch.bfloat16), correct, r_hat, mask, eps, length).float(), [lp16]
        )

        coef32, coef16 = grads["fp32"][0], grads["bf16"][0]
        m = mask.bool()
        res = {
            "params": relative_error(grads["bf16"][1], grads["fp32"][1]),
            "tokens": relative_error(coef16[m], coef32[m]),
            "near_eps": relative_error(coef16[near_eps], coef32[near_eps]),
            "near_flip": relative_error(coef16[near_flip], coef32[near_flip]),
            "bf16_loss_near_eps": relative_error(coef_bf16_loss.float()[near_eps] * batch * length, coef32[near_eps]),
        }
        results[eps] = res
        print(
            f"bf16-vs-fp32 NFT gradient rel. error (eps={eps}): parameters {res['params']:.2e}; dL/dlogp all tokens "
            f"{res['tokens']:.2e}, near clamp x~eps {res['near_eps']:.2e} ({int(near_eps.sum())} tokens), near "
            f"R~1/r_hat {res['near_flip']:.2e} ({int(near_flip.sum())} tokens)"
        )
        print(
            f"  loss in bf16 on bf16-rounded log-probs (not what the trainer does), near clamp: "
            f"{res['bf16_loss_near_eps']:.2e}"
        )

    # Baseline: the same bf16-vs-fp32 measurement for plain likelihood, -sum log pi, on the same batch.
    base = []
    for lp in (logps32, logps16):
        grads = torch.autograd.grad(-(lp * mask).sum() / (batch * length), params, retain_graph=True)
        base.append(torch.cat([g.flatten() for g in grads]))
    baseline = relative_error(base[1], base[0])
    print(f"bf16-vs-fp32 likelihood-baseline gradient rel. error: parameters {baseline:.2e}")
    results["baseline"] = baseline
    del trainer, model
    gc.collect()
    return results


# ---------------------------------------------------------------------------------------------------------- ZeRO-3
def zero3_check(opts) -> dict:
    config_path = resolve_accelerate_config("zero3")
    print(f"ZeRO-3 accelerate config: shipped {config_path}")
    if importlib.util.find_spec("deepspeed") is None:
        reason = "deepspeed is not importable (pip install deepspeed, or nft-trl[deepspeed])"
        print(f"ZeRO-3: SKIP ({reason})")
        return {"status": "SKIP", "detail": reason}
    if not torch.cuda.is_available():
        reason = "no CUDA device: this check runs DeepSpeed on the GPU"
        print(f"ZeRO-3: SKIP ({reason})")
        return {"status": "SKIP", "detail": reason}
    # One process under `accelerate launch`, as users start it; a fresh interpreter keeps DeepSpeed's state out
    # of this one. The port is fixed per run but unlikely to be in use on a benchmark machine.
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(config_path),
        "--num_processes",
        "1",
        "--main_process_port",
        str(opts.zero3_port),
        str(Path(__file__).resolve()),
        "--zero3-worker",
        *(["--dry-run"] if opts.dry_run else []),
        "--zero3-steps",
        str(opts.zero3_steps),
        "--batch-size",
        str(opts.batch_size),
        "--num-generations",
        str(opts.num_generations),
        "--completion-length",
        str(opts.completion_length),
    ]
    start = time.perf_counter()
    # Own process group: on a hang, the launcher AND the worker it started are killed, freeing the GPU.
    proc = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    try:
        output, _ = proc.communicate(timeout=ZERO3_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        print(f"ZeRO-3: FAIL (no result after {ZERO3_TIMEOUT_S} s: a hang, e.g. ranks making different collectives)")
        print(output[-3000:])
        return {"status": "FAIL", "detail": f"timed out after {ZERO3_TIMEOUT_S} s"}
    elapsed = time.perf_counter() - start
    match = re.search(rf"{ZERO3_DONE} steps=(\d+) loss=(\S+) stage=(\d+)", output)
    if proc.returncode != 0 or match is None:
        print(f"ZeRO-3: FAIL (exit code {proc.returncode}); last output:")
        print(output[-3000:])
        return {"status": "FAIL", "detail": f"exit code {proc.returncode}"}
    steps, loss, stage = int(match.group(1)), match.group(2), int(match.group(3))
    ok = steps == opts.zero3_steps and stage == 3 and math.isfinite(float(loss))
    status = "OK" if ok else "FAIL"
    print(
        f"ZeRO-3: {status}: {steps}/{opts.zero3_steps} NFT steps completed under ZeRO stage {stage}, last loss {loss}, "
        f"{elapsed:.0f} s including start-up"
    )
    return {"status": status, "detail": f"{steps}/{opts.zero3_steps} steps, stage {stage}"}


def zero3_worker(opts) -> None:
    """Runs inside `accelerate launch`: NFTTrainer for a few steps; prints the line `zero3_check` parses."""
    tokenizer = build_tiny_tokenizer()
    model = build_model(tokenizer, opts.dry_run)
    with script(tokenizer, opts.completion_length), tempfile.TemporaryDirectory() as workdir:
        # num_iterations=2: every generation batch is trained on twice, so TRL computes pi_old (one more forward
        # under ZeRO-3) and the second step is off-policy, as in the paper's recipe: the clamp and ratio paths run.
        config = NFTConfig(**trainer_args(opts, workdir, max_steps=opts.zero3_steps, num_iterations=2))
        trainer = NFTTrainer(
            model, reward_funcs=[parity_reward], args=config, train_dataset=build_dataset(), processing_class=tokenizer
        )
        trainer.remove_callback(PrinterCallback)
        plugin = trainer.accelerator.state.deepspeed_plugin
        stage = plugin.zero_stage if plugin is not None else 0
        result = trainer.train()
    print(f"{ZERO3_DONE} steps={trainer.state.global_step} loss={result.training_loss:.6g} stage={stage}", flush=True)


# ------------------------------------------------------------------------------------------------------------- main
def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="tiny model on CPU, few steps: checks the code runs")
    parser.add_argument("--batch-size", type=int, default=None, help="completions per step (GPU 16, dry run 4)")
    parser.add_argument("--num-generations", type=int, default=None, help="answers per prompt (GPU 8, dry run 2)")
    parser.add_argument("--completion-length", type=int, default=None, help="tokens (GPU 512, dry run 16)")
    parser.add_argument("--steps", type=int, default=None, help="measured steps per round (GPU 10, dry run 1)")
    parser.add_argument("--warmup", type=int, default=1, help="steps dropped at the start of each round")
    parser.add_argument(
        "--rounds", type=int, default=None, help="rounds per trainer, alternating NFT and GRPO (GPU 8, dry run 2)"
    )
    parser.add_argument("--grad-batch-size", type=int, default=None, help="gradient check batch (GPU 8, dry run 4)")
    parser.add_argument("--negative-clip", type=float, default=1.0, help="eps of the gradient check (0.1 also runs)")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--zero3-steps", type=int, default=3)
    parser.add_argument("--zero3-port", type=int, default=29533)
    parser.add_argument("--zero3-worker", action="store_true", help=argparse.SUPPRESS)
    opts = parser.parse_args(argv)
    gpu_defaults = dict(batch_size=16, num_generations=8, completion_length=512, steps=10, rounds=8, grad_batch_size=8)
    dry_defaults = dict(batch_size=4, num_generations=2, completion_length=16, steps=1, rounds=2, grad_batch_size=4)
    for name, value in (dry_defaults if opts.dry_run else gpu_defaults).items():
        if getattr(opts, name) is None:
            setattr(opts, name, value)
    return opts


def main(argv=None) -> int:
    opts = parse_args(argv)
    if opts.zero3_worker:
        zero3_worker(opts)
        return 0
    if not opts.dry_run and not torch.cuda.is_available():
        print("No CUDA device: run with --dry-run on a CPU.")
        return 2
    start = time.perf_counter()
    tokenizer = build_tiny_tokenizer()
    with script(tokenizer, opts.completion_length):
        return run_checks(opts, tokenizer, start)


def run_checks(opts, tokenizer, start: float) -> int:
    base_model = build_model(tokenizer, opts.dry_run)
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({torch.get_num_threads()} threads)"
    arch = base_model.config
    print(f"device: {device}; torch {torch.__version__}; dry run: {opts.dry_run}")
    print(
        f"model: Qwen2 (random init) hidden {arch.hidden_size}, {arch.num_hidden_layers} layers, "
        f"{arch.num_attention_heads} heads / {arch.num_key_value_heads} KV heads, intermediate "
        f"{arch.intermediate_size}, vocab {arch.vocab_size} (tokenizer uses {len(tokenizer)}); "
        f"parameters: {sum(p.numel() for p in base_model.parameters()):,}"
    )

    parity = parity_check(base_model, tokenizer, opts)
    with strict_fp32():
        grads = gradient_check(base_model, tokenizer, opts)
    zero3 = zero3_check(opts)

    def verdict(ok: bool) -> str:
        if opts.dry_run:  # one CPU step of a tiny model per trainer: noise, not a measurement
            return "not judged (dry run)"
        return "PASS" if ok else "FAIL"

    default = grads[opts.negative_clip]
    flagged = default["params"] > GRAD_ERROR_FLAG or default["near_eps"] > GRAD_ERROR_FLAG
    memory_ok = parity["memory_ratio"] <= MEMORY_TARGET if torch.cuda.is_available() else None
    print("=" * 30 + " summary " + "=" * 30)
    if opts.dry_run:
        print("(dry run: tiny model on CPU; the numbers show the code runs, not whether the targets hold)")
    time_verdict = "not judged (dry run)" if opts.dry_run else step_time_verdict(parity["time_interval"])
    if time_verdict == "INCONCLUSIVE":
        time_verdict += " (the interval straddles the target: run more --rounds)"
    low, high = parity["time_interval"]
    print(
        f"step-time ratio NFT/GRPO: {parity['time_ratio']:.3f} (95% interval {low:.3f}-{high:.3f})  "
        f"target <= {STEP_TIME_TARGET}  {time_verdict}"
    )
    print(
        f"peak memory ratio NFT/GRPO: {parity['memory_ratio']:.3f}  target <= {MEMORY_TARGET}  "
        f"{'n/a (no CUDA)' if memory_ok is None else verdict(memory_ok)}"
    )
    print(
        f"bf16-vs-fp32 gradient rel. error (eps={opts.negative_clip}): parameters {default['params']:.2e} "
        f"(likelihood baseline {grads['baseline']:.2e}), near clamp {default['near_eps']:.2e}  "
        f"flag > {GRAD_ERROR_FLAG:.0e}  {'FLAG (see gradient_check docstring)' if flagged else 'ok'}"
    )
    print(f"ZeRO-3 steps complete: {zero3['status']} ({zero3['detail']})")
    print(f"total time: {time.perf_counter() - start:.0f} s")
    failed = failed_checks(time_verdict, None if opts.dry_run else memory_ok, zero3["status"])
    if failed:
        print(f"FAILED: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
