"""NFTTrainer vs GRPOTrainer: step time and peak memory on the same model, data and settings, interleaved.

    python benchmarks/trainer_overhead.py [--rounds 6] [--steps 4] [--hidden_size 128] [--layers 4]

Both trainers start from the same randomly initialised local Qwen2 model and train on the same prompts with the
same settings; rounds alternate (NFT, GRPO, GRPO, NFT, ...) so that machine noise hits both alike. Each round builds
a fresh trainer and trains `--steps` optimizer steps; the first round of each is a warm-up and is dropped. The
generation step is replaced by a fixed script (identical completions for both trainers) so that the numbers
measure the trainers, not the sampler. Prints the median step time and the peak memory of each, and their ratios.
Targets: step-time ratio <= 1.03, memory ratio <= 1.02.

Memory: on a GPU, the CUDA allocator's peak during training. On a CPU, where no allocator reports a peak, two probes:
the bytes autograd keeps for the backward pass in one loss computation (exact and deterministic: it is where a
loss's memory cost lives), and the peak resident set size above the round's start, sampled every millisecond
(coarse: the allocator caches memory across rounds).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import threading
import time


os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("CI", "true")

import psutil  # noqa: E402
import torch  # noqa: E402
from datasets import Dataset  # noqa: E402
from transformers import TrainerCallback  # noqa: E402
from trl import GRPOConfig, GRPOTrainer  # noqa: E402

from nft_trl import NFTConfig, NFTTrainer  # noqa: E402
from nft_trl.embedded.demo import activation_checkpointing_off  # noqa: E402
from nft_trl.embedded.model import build_tiny_model  # noqa: E402
from nft_trl.embedded.scripted import scripted_generation  # noqa: E402
from nft_trl.embedded.tokenizer import build_tiny_tokenizer  # noqa: E402


class StepTimer(TrainerCallback):
    def __init__(self):
        self.times: list[float] = []

    def on_step_begin(self, args, state, control, **kwargs):
        self._start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.times.append(time.perf_counter() - self._start)


class SavedForBackward:
    """Largest number of bytes autograd saved for backward in one call of the wrapped loss (unique storages)."""

    def __init__(self):
        self.peak = 0

    def wrap(self, compute_loss):
        def wrapped(*args, **kwargs):
            seen, total = set(), 0

            def pack(tensor):
                nonlocal total
                storage = tensor.untyped_storage()
                if storage.data_ptr() not in seen:
                    seen.add(storage.data_ptr())
                    total += storage.nbytes()
                return tensor

            with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
                loss = compute_loss(*args, **kwargs)
            self.peak = max(self.peak, total)
            return loss

        return wrapped


class PeakMemory:
    """Peak memory during a block: CUDA allocator peak, or sampled RSS growth on CPU."""

    def __init__(self, interval: float = 1e-3):
        self.interval, self.peak = interval, 0

    def __enter__(self):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._base = torch.cuda.memory_allocated()
            return self
        self._proc, self._stop = psutil.Process(), threading.Event()
        self._base = self._proc.memory_info().rss
        self._max = self._base

        def sample():
            while not self._stop.is_set():
                self._max = max(self._max, self._proc.memory_info().rss)
                time.sleep(self.interval)

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated() - self._base
        else:
            self._stop.set()
            self._thread.join()
            self.peak = self._max - self._base


def parity_reward(completions, completion_ids, **kwargs):
    return [float(ids[0] % 3 == 0) for ids in completion_ids]


def run_round(kind: str, tokenizer, dataset, opts, workdir) -> tuple[list[float], int, int]:
    common = dict(
        output_dir=os.path.join(workdir, kind),
        use_cpu=not torch.cuda.is_available(),
        bf16=torch.cuda.is_available(),
        report_to="none",
        per_device_train_batch_size=opts.batch_size,
        num_generations=opts.num_generations,
        max_completion_length=opts.completion_length,
        max_steps=opts.steps,
        learning_rate=1e-4,
        save_strategy="no",
        logging_steps=1,
        **activation_checkpointing_off(),
        loss_type="dr_grpo",
        seed=0,
    )
    if kind == "nft":
        config, trainer_cls = NFTConfig(**common), NFTTrainer
    else:
        config, trainer_cls = GRPOConfig(**common, scale_rewards="none"), GRPOTrainer
    model = build_tiny_model(
        tokenizer,
        hidden_size=opts.hidden_size,
        num_hidden_layers=opts.layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=4 * opts.hidden_size,
        seed=0,
    )
    timer = StepTimer()
    trainer = trainer_cls(
        model,
        reward_funcs=[parity_reward],
        args=config,
        train_dataset=dataset,
        processing_class=tokenizer,
        callbacks=[timer],
    )
    trainer.remove_callback(trainer.callback_handler.callbacks[-1].__class__)  # the progress bar: quiet output
    saved = SavedForBackward()
    trainer.compute_loss = saved.wrap(trainer.compute_loss)
    with PeakMemory() as memory:
        trainer.train()
    return timer.times, memory.peak, saved.peak


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=6, help="rounds per trainer (the first is a warm-up)")
    parser.add_argument("--steps", type=int, default=4, help="optimizer steps per round")
    parser.add_argument("--hidden_size", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--num_generations", type=int, default=8)
    parser.add_argument("--completion_length", type=int, default=64)
    opts = parser.parse_args()

    tokenizer = build_tiny_tokenizer()
    dataset = Dataset.from_dict({"prompt": [[{"role": "user", "content": f"What is {i} + {i}?"}] for i in range(64)]})
    times = {"nft": [], "grpo": []}
    peaks = {"nft": [], "grpo": []}
    saved = {"nft": [], "grpo": []}
    order = ["nft", "grpo"]
    # Identical completions for both trainers, EOS in the second half of each.
    script = scripted_generation(earliest_eos=opts.completion_length // 2)
    with script, tempfile.TemporaryDirectory() as workdir:
        for round_index in range(opts.rounds):
            for kind in order if round_index % 2 == 0 else order[::-1]:
                step_times, peak, saved_bytes = run_round(kind, tokenizer, dataset, opts, workdir)
                if round_index > 0:  # warm-up round dropped
                    times[kind].extend(step_times)
                    peaks[kind].append(peak)
                    saved[kind].append(saved_bytes)

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({torch.get_num_threads()} threads)"
    print(f"device: {device}; torch {torch.__version__}")
    print(
        f"model: Qwen2 hidden {opts.hidden_size}, {opts.layers} layers; batch {opts.batch_size} "
        f"({opts.num_generations} per prompt), completions {opts.completion_length} tokens; "
        f"{opts.rounds - 1} measured rounds x {opts.steps} steps per trainer"
    )
    peak_name = "CUDA peak (MiB)" if torch.cuda.is_available() else "RSS peak (MiB)"
    header = (
        f"{'trainer':<8} {'median step (ms)':>17} {'p10-p90 (ms)':>16} {'saved for bwd (MiB)':>20} {peak_name:>16}"
    )
    print(header)
    for kind in ("nft", "grpo"):
        t = sorted(times[kind])
        p10, p90 = t[len(t) // 10], t[(9 * len(t)) // 10]
        print(
            f"{kind:<8} {1e3 * statistics.median(t):>17.1f} {f'{1e3 * p10:.1f}-{1e3 * p90:.1f}':>16} "
            f"{max(saved[kind]) / 2**20:>20.2f} {statistics.median(peaks[kind]) / 2**20:>16.1f}"
        )
    time_ratio = statistics.median(times["nft"]) / statistics.median(times["grpo"])
    saved_ratio = max(saved["nft"]) / max(max(saved["grpo"]), 1)
    peak_ratio = statistics.median(peaks["nft"]) / max(statistics.median(peaks["grpo"]), 1)
    print(f"step-time ratio NFT/GRPO: {time_ratio:.3f} (target <= 1.03)")
    print(f"saved-for-backward memory ratio NFT/GRPO: {saved_ratio:.3f} (target <= 1.02)")
    print(
        f"{peak_name.split(' (')[0]} ratio NFT/GRPO: {peak_ratio:.3f}"
        + ("" if torch.cuda.is_available() else " (coarse)")
    )


if __name__ == "__main__":
    main()
