"""Offline NFT against what TRL users would use instead, on one fixed set of judged answers; rounds vs online NFT.

The protocol is in `benchmarks/README.md` ("Protocol: offline NFT against what TRL users would use instead").

    python benchmarks/compare_offline.py --phase data      # one judged dataset per starting model (generate_judged)
    python benchmarks/compare_offline.py --phase tune      # method x lr x starting model, 4 epochs, validation
    python benchmarks/compare_offline.py --phase final     # the chosen lr per (method, epochs, model), 5 seeds, test
    python benchmarks/compare_offline.py --phase rounds    # R rounds of generate + offline NFT vs online NFT
    python benchmarks/compare_offline.py --phase report    # results.json.gz and results.md
    python benchmarks/compare_offline.py --task countdown --phase tune --only method=nft,sft start=countdown1
    python benchmarks/compare_offline.py --pilot --phase tune   # the same pipeline with tiny settings

Methods: `nft` and `rft` (NFTTrainer with `offline=True`; `rft` is `negative_weight=0, prompt_weighting="none"`),
`sft` (TRL's SFTTrainer on the right answers), `kto` (TRL's KTOTrainer, right = desirable) and `dpo` (TRL's DPOTrainer
on (right, wrong) pairs of one question). Every finished run is one gzip-compressed JSON under `<out>/cells/`, written
atomically, so a rerun skips finished runs; each records the settings and the starting model's fingerprint. The
starting models are the online grid's (`compare_algorithms.starting_model_path`); the judged datasets are kept under
`<out>/data/`.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fcntl
import gzip
import json
import logging
import math
import os
import random
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any


os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("CI", "true")

sys.path.insert(0, str(Path(__file__).resolve().parent))

import compare_algorithms as online  # noqa: E402
import torch  # noqa: E402
from compare_report import fmt, json_files, read_json, write_json  # noqa: E402
from datasets import Dataset  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer, PrinterCallback, TrainerCallback  # noqa: E402
from trl import DPOConfig, DPOTrainer, KTOConfig, KTOTrainer, SFTConfig, SFTTrainer  # noqa: E402

from nft_trl import NFTConfig, NFTTrainer  # noqa: E402
from nft_trl.embedded import make_dataset, task_reward  # noqa: E402
from nft_trl.embedded.config import TASKS  # noqa: E402
from nft_trl.embedded.demo import activation_checkpointing_off  # noqa: E402
from nft_trl.evaluation import evaluate_accuracy, pass_at_k  # noqa: E402
from nft_trl.evaluation.metrics import default_pass_ks, t_interval  # noqa: E402
from nft_trl.offline import prepare_judged  # noqa: E402
from nft_trl.offline.generate import generate_judged  # noqa: E402


logger = logging.getLogger("compare_offline")

METHODS = ("nft", "rft", "sft", "kto", "dpo")
NFT_SETTINGS = {"nft": {}, "rft": {"negative_weight": 0.0, "prompt_weighting": "none"}}
REFERENCE = "nft"
GENERATION_SEED = 0  # the judged datasets' sampling seed (the evaluations use compare_algorithms.EVAL_SEED)


@dataclass(frozen=True)
class Settings:
    """Everything the protocol fixes. `PROTOCOL` is the real grid, `PILOT` the same pipeline with tiny settings."""

    methods: tuple[str, ...] = METHODS
    starts: tuple[str, ...] = ("build1", "build2")
    learning_rates: tuple[float, ...] = (5e-5, 2e-4, 8e-4)
    tune_seeds: tuple[int, ...] = (100, 101)
    final_seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    epochs: tuple[int, ...] = (1, 2, 4)  # evaluated after these epochs of one run
    questions: int = 256  # training prompts of one judged dataset (one round)
    answers: int = 16  # answers per question
    batch: int = 64  # sequences per optimizer step (DPO: batch // 2 pairs)
    max_completion_length: int = 16
    eval_prompts: int = 256
    eval_samples: int = 16
    rounds: int = 4
    online_prompts_per_step: int = 4  # online NFT in the rounds comparison: 4 prompts x 16 answers per step

    @property
    def pass_ks(self) -> list[int]:
        return default_pass_ks(self.eval_samples)


PROTOCOL = Settings()
PILOT = Settings(
    starts=("build1",),
    learning_rates=(2e-4,),
    tune_seeds=(100,),
    final_seeds=(0, 1),
    epochs=(1, 2),
    questions=4,
    answers=4,
    batch=8,
    eval_prompts=4,
    eval_samples=4,
    rounds=2,
    online_prompts_per_step=2,
)


@dataclass(frozen=True)
class Cell:
    """One training run: `epochs` epochs of `method` at `lr` from `start`'s judged dataset, evaluated after each of
    the protocol's epoch counts up to `epochs`."""

    phase: str
    start: str
    method: str
    lr: float
    seed: int
    epochs: int

    @property
    def name(self) -> str:
        return f"{self.phase}-{self.start}-{self.method}-lr{self.lr:g}-seed{self.seed}-e{self.epochs}"


@dataclass(frozen=True)
class RoundCell:
    """One arm of the rounds comparison: `offline` (R rounds of generate + offline NFT) or `online` (online NFT)."""

    start: str
    arm: str
    seed: int

    @property
    def name(self) -> str:
        return f"rounds-{self.start}-{self.arm}-seed{self.seed}"


# --------------------------------------------------------------------------------------------------------------------
# The grid and the learning-rate choice


def tune_grid(settings: Settings) -> list[Cell]:
    return [
        Cell("tune", start, method, lr, seed, max(settings.epochs))
        for start in settings.starts
        for seed in settings.tune_seeds
        for method in settings.methods
        for lr in settings.learning_rates
    ]


def choose_learning_rates(settings: Settings, results: list[dict]) -> dict[tuple[str, int, str], dict]:
    """Per (method, epochs, starting model) whose tune cells all finished: the rate with the highest mean validation
    sampled accuracy after that many epochs over the tune seeds (ties: the smaller rate)."""
    finished = {Cell(**r["cell"]).name: r for r in results if r["cell"].get("phase") == "tune"}
    chosen = {}
    for start in settings.starts:
        for method in settings.methods:
            cells = [c for c in tune_grid(settings) if c.start == start and c.method == method]
            if not all(c.name in finished for c in cells):
                continue
            for epochs in settings.epochs:
                by_lr = {
                    lr: statistics.fmean(
                        finished[c.name]["evals"][str(epochs)]["sampled"] for c in cells if c.lr == lr
                    )
                    for lr in settings.learning_rates
                }
                best = max(sorted(by_lr), key=lambda lr: by_lr[lr])
                edges = (min(settings.learning_rates), max(settings.learning_rates))
                chosen[(method, epochs, start)] = {"lr": best, "by_lr": by_lr, "at_edge": best in edges}
    return chosen


def final_grid(settings: Settings, chosen: dict) -> tuple[list[Cell], list[tuple[str, str]]]:
    """One final cell per (start, method, chosen rate, seed), trained to the largest epoch count choosing that rate."""
    cells, waiting = [], []
    for start in settings.starts:
        for method in settings.methods:
            choices = {e: chosen.get((method, e, start)) for e in settings.epochs}
            if any(c is None for c in choices.values()):
                waiting.append((method, start))
                continue
            for lr in sorted({c["lr"] for c in choices.values()}):
                epochs = max(e for e, c in choices.items() if c["lr"] == lr)
                cells += [Cell("final", start, method, lr, seed, epochs) for seed in settings.final_seeds]
    return cells, waiting


def final_cell_for(settings: Settings, chosen: dict, method: str, epochs: int, start: str, seed: int) -> Cell:
    """The final cell whose evaluation after `epochs` epochs is the reported one for (method, epochs, start, seed)."""
    lr = chosen[(method, epochs, start)]["lr"]
    top = max(e for e in settings.epochs if chosen[(method, e, start)]["lr"] == lr)
    return Cell("final", start, method, lr, seed, top)


# --------------------------------------------------------------------------------------------------------------------
# Data: the judged answers of one starting model


def train_prompts(settings: Settings, start: str) -> Dataset:
    config = online.STARTS[start]
    return make_dataset("train", 4_000, seed=online.DATA_SEED, config=config, exclude_validation=True)


def generate_round(settings, model, tokenizer, start: str, round_index: int, path: Path, seed: int) -> Path:
    """Round `round_index`'s judged answers (prompts `questions * r` onwards) from `model`, gzip-compressed at
    `path` (`<name>.jsonl.gz`); generated into `<name>.jsonl` first, so an interrupted generation resumes."""
    if path.exists():
        return path
    prompts = train_prompts(settings, start)
    first = settings.questions * round_index
    questions = prompts.select(range(first, first + settings.questions))
    plain = path.with_suffix("")  # .jsonl
    generate_judged(
        model,
        tokenizer,
        questions,
        plain,
        num_answers=settings.answers,
        max_new_tokens=settings.max_completion_length,
        temperature=1.0,
        batch_size=8,
        seed=seed,
        reward=task_reward(online.STARTS[start]),
    )
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(gzip.compress(plain.read_bytes(), mtime=0))
    os.replace(tmp, path)
    plain.unlink()
    return path


def read_answers(path: Path) -> list[dict]:
    return [json.loads(line) for line in gzip.decompress(path.read_bytes()).decode().splitlines()]


def data_summary(rows: list[dict]) -> dict[str, Any]:
    groups = defaultdict(list)
    for row in rows:
        groups[row["group"]].append(bool(row["reward"] is not None and row["reward"] >= 0.5))
    return {
        "answers": len(rows),
        "correct_rate": statistics.fmean(x for g in groups.values() for x in g),
        "mixed_groups": statistics.fmean(0 < sum(g) < len(g) for g in groups.values()),
        "truncated": sum(bool(r["truncated"]) for r in rows),
    }


# --------------------------------------------------------------------------------------------------------------------
# Each method's training data, from the judged rows


def _text(tokenizer, row: dict) -> tuple[str, str]:
    """The standard prompt-completion text TRL's trainers tokenize: the prompt rendered with the chat template and
    the generation prompt, the completion decoded from the stored tokens (without the EOS, which TRL appends)."""
    prompt = tokenizer.apply_chat_template(row["prompt"], add_generation_prompt=True, tokenize=False)
    ids = [i for i in row["completion_ids"] if i != tokenizer.eos_token_id]
    return prompt, tokenizer.decode(ids, skip_special_tokens=False)


def _right(row: dict) -> bool:
    return row["reward"] is not None and row["reward"] >= 0.5


def sft_rows(tokenizer, rows: list[dict]) -> list[dict]:
    return [dict(zip(("prompt", "completion"), _text(tokenizer, r), strict=True)) for r in rows if _right(r)]


def kto_rows(tokenizer, rows: list[dict], seed: int) -> list[dict]:
    """Every judged answer, right = desirable, in an order shuffled by `seed`. TRL's `KTOConfig` samples sequentially
    (`train_sampling_strategy="sequential"`: the KL term pairs each answer with its neighbour's completion), so the
    trainer neither shuffles nor reads the seed; without this shuffle the 16 answers to one question would sit side by
    side (the KL term would pair answers to the same question) and every seed would train on one order."""
    out = []
    for r in rows:
        if r["reward"] is None:
            continue
        prompt, completion = _text(tokenizer, r)
        out.append({"prompt": prompt, "completion": completion, "label": _right(r)})
    random.Random(seed).shuffle(out)
    return out


def dpo_rows(tokenizer, rows: list[dict], seed: int = online.DATA_SEED) -> list[dict]:
    """Per question `min(#right, #wrong)` (right, wrong) pairs: the right answers in order, the wrong ones in an
    order shuffled by `seed`."""
    groups = defaultdict(lambda: ([], []))
    for r in rows:
        if r["reward"] is not None:
            groups[r["group"]][0 if _right(r) else 1].append(r)
    rng = random.Random(seed)
    pairs = []
    for key in sorted(groups, key=lambda g: int(g) if g.isdigit() else g):
        right, wrong = groups[key]
        wrong = list(wrong)
        rng.shuffle(wrong)
        for chosen, rejected in zip(right, wrong, strict=False):
            prompt, good = _text(tokenizer, chosen)
            _, bad = _text(tokenizer, rejected)
            pairs.append({"prompt": prompt, "chosen": good, "rejected": bad})
    return pairs


# --------------------------------------------------------------------------------------------------------------------
# Evaluation


def evaluate(model, tokenizer, dataset, settings: Settings, start: str, folder: Path) -> dict[str, Any]:
    """Sampled accuracy, pass@k and the entropy estimate from `eval_samples` answers per problem drawn by
    `generate_judged` (seed EVAL_SEED), and greedy accuracy."""
    path = generate_judged(
        model,
        tokenizer,
        dataset,
        folder / "eval.jsonl",
        num_answers=settings.eval_samples,
        max_new_tokens=settings.max_completion_length,
        temperature=1.0,
        batch_size=16,
        seed=online.EVAL_SEED,
        reward=task_reward(online.STARTS[start]),
    )
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    for written in (path, path.with_name(path.name + ".settings.json")):
        written.unlink(missing_ok=True)  # the next evaluation samples afresh into the same folder
    correct = defaultdict(int)
    for row in rows:
        correct[row["group"]] += _right(row)
    n = settings.eval_samples
    logps = [lp for row in rows for lp in row["completion_logps"]]
    greedy = evaluate_accuracy(
        model,
        tokenizer,
        dataset,
        num_samples=1,
        temperature=0.0,
        max_new_tokens=settings.max_completion_length,
        seed=online.EVAL_SEED,
        reward_fn=task_reward(online.STARTS[start]),
    )
    per_problem = [correct[str(i)] for i in range(len(dataset))]
    return {
        "sampled": sum(per_problem) / (n * len(dataset)),
        "greedy": greedy.accuracy,
        "pass_at_k": {str(k): statistics.fmean(pass_at_k(n, c, k) for c in per_problem) for k in settings.pass_ks},
        "entropy": -statistics.fmean(logps),
        "correct_per_problem": per_problem,
    }


class EpochEvaluation(TrainerCallback):
    """Evaluates the model at the end of the listed epochs (by optimizer step, exact for whole epochs)."""

    def __init__(self, evaluate_fn, steps_per_epoch: int, epochs: list[int]):
        self.evaluate_fn, self.at = evaluate_fn, {e * steps_per_epoch: e for e in epochs}
        self.evals: dict[str, dict] = {}

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step in self.at:
            self.evals[str(self.at[state.global_step])] = self.evaluate_fn(model)


# --------------------------------------------------------------------------------------------------------------------
# One run


def common_args(settings: Settings, output_dir: str, lr: float, seed: int, epochs: int) -> dict[str, Any]:
    return dict(
        output_dir=output_dir,
        use_cpu=True,
        bf16=False,
        report_to="none",
        seed=seed,
        learning_rate=lr,
        lr_scheduler_type="constant",
        warmup_steps=0,
        num_train_epochs=epochs,
        max_steps=-1,
        logging_steps=1,
        save_strategy="no",
        **activation_checkpointing_off(),
        disable_tqdm=True,
        dataloader_drop_last=False,
    )


def make_trainer(settings: Settings, method: str, model, tokenizer, rows: list[dict], args: dict, seed: int):
    """The method's trainer on `rows` (the judged answers), and the number of optimizer steps per epoch."""
    batch = settings.batch
    if method in NFT_SETTINGS:
        data = prepare_judged(Dataset.from_list(rows))
        config = NFTConfig(
            **args,
            offline=True,
            per_device_train_batch_size=batch,
            num_generations=2,
            max_completion_length=settings.max_completion_length,
            temperature=1.0,
            **NFT_SETTINGS[method],
        )
        trainer = NFTTrainer(model, args=config, train_dataset=data, processing_class=tokenizer)
        return trainer, math.ceil(len(data) / batch)
    long = 4 * settings.max_completion_length + 256  # nothing is truncated: prompts are a few dozen tokens
    if method == "sft":
        data = Dataset.from_list(sft_rows(tokenizer, rows))
        config = SFTConfig(**args, per_device_train_batch_size=batch, max_length=long)
        trainer = SFTTrainer(model, args=config, train_dataset=data, processing_class=tokenizer)
    elif method == "kto":
        data = Dataset.from_list(kto_rows(tokenizer, rows, seed))
        config = KTOConfig(**args, per_device_train_batch_size=batch, max_length=long)
        trainer = KTOTrainer(model, args=config, train_dataset=data, processing_class=tokenizer)
    elif method == "dpo":
        batch //= 2
        data = Dataset.from_list(dpo_rows(tokenizer, rows))
        config = DPOConfig(**args, per_device_train_batch_size=batch, max_length=long)
        trainer = DPOTrainer(model, args=config, train_dataset=data, processing_class=tokenizer)
    else:
        raise ValueError(f"unknown method {method!r}; one of {METHODS}")
    return trainer, math.ceil(len(data) / batch)


def load_start(path: str):
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32), AutoTokenizer.from_pretrained(path)


def run_cell(settings: Settings, cell: Cell, path: str, data: Path, work: Path) -> dict[str, Any]:
    model, tokenizer = load_start(path)
    rows = read_answers(data)
    split = online.PHASE_SPLIT[cell.phase]
    eval_set = make_dataset(split, settings.eval_prompts, seed=online.DATA_SEED, config=online.STARTS[cell.start])
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=work) as output_dir:
        torch.manual_seed(cell.seed)
        args = common_args(settings, output_dir, cell.lr, cell.seed, cell.epochs)
        trainer, steps_per_epoch = make_trainer(settings, cell.method, model, tokenizer, rows, args, cell.seed)
        epochs = [e for e in settings.epochs if e <= cell.epochs]
        evals = EpochEvaluation(
            lambda m: evaluate(m, tokenizer, eval_set, settings, cell.start, Path(output_dir)), steps_per_epoch, epochs
        )
        trainer.add_callback(evals)
        trainer.remove_callback(PrinterCallback)
        trainer.train()
    missing = [e for e in epochs if str(e) not in evals.evals]
    if missing:
        raise RuntimeError(f"{cell.name}: no evaluation after epochs {missing} ({trainer.state.global_step} steps)")
    return {
        "cell": dataclasses.asdict(cell),
        "split": split,
        "evals": evals.evals,
        "steps_per_epoch": steps_per_epoch,
        "train_rows": len(trainer.train_dataset),
        "loss_curve": [(h["step"], h["loss"]) for h in trainer.state.log_history if "loss" in h],
        "wall_seconds": time.perf_counter() - started,
    }


def run_rounds(settings: Settings, cell: RoundCell, path: str, lr_offline, lr_online, out: Path, work: Path):
    """R rounds of generate + offline NFT, or online NFT for as many generated answers; test-set evaluations after
    each round (or its number of answers)."""
    model, tokenizer = load_start(path)
    config = online.STARTS[cell.start]
    test = make_dataset("test", settings.eval_prompts, seed=online.DATA_SEED, config=config)
    started, evals = time.perf_counter(), {}
    per_round = settings.questions * settings.answers
    with tempfile.TemporaryDirectory(dir=work) as output_dir:
        if cell.arm == "offline":
            lr, epochs = lr_offline
            for r in range(settings.rounds):
                data = Path(output_dir) / f"round{r}.jsonl.gz"
                generate_round(settings, model, tokenizer, cell.start, r, data, seed=1_000 * cell.seed + r)
                args = common_args(settings, f"{output_dir}/r{r}", lr, cell.seed, epochs)
                trainer, _ = make_trainer(settings, "nft", model, tokenizer, read_answers(data), args, cell.seed)
                trainer.remove_callback(PrinterCallback)
                trainer.train()
                model = trainer.model
                evals[str(r + 1)] = evaluate(model, tokenizer, test, settings, cell.start, Path(output_dir))
        else:
            steps_per_round = per_round // settings.batch
            prompts = train_prompts(settings, cell.start).select(range(settings.questions * settings.rounds))
            evaluation = EpochEvaluation(
                lambda m: evaluate(m, tokenizer, test, settings, cell.start, Path(output_dir)),
                steps_per_round,
                list(range(1, settings.rounds + 1)),
            )
            torch.manual_seed(cell.seed)
            args = common_args(settings, output_dir, lr_online, cell.seed, 1)
            args.update(max_steps=steps_per_round * settings.rounds)
            trainer = NFTTrainer(
                model,
                reward_funcs=[task_reward(config)],
                args=NFTConfig(
                    **args,
                    per_device_train_batch_size=settings.batch,
                    num_generations=settings.answers,
                    max_completion_length=settings.max_completion_length,
                    temperature=1.0,
                ),
                train_dataset=prompts,
                processing_class=tokenizer,
                callbacks=[evaluation],
            )
            trainer.remove_callback(PrinterCallback)
            trainer.train()
            evals = evaluation.evals
    return {
        "cell": dataclasses.asdict(cell),
        "split": "test",
        "evals": evals,
        "answers_per_round": per_round,
        "lr": lr_offline if cell.arm == "offline" else lr_online,
        "wall_seconds": time.perf_counter() - started,
    }


def online_learning_rates(online_out: Path, pilot: bool) -> dict[str, float]:
    """Online NFT's on-policy learning rate per starting model, as the online grid's tune phase chose it (its
    `results.json.gz`); the pilot, which has no online grid, takes the smallest rate of the online pilot's grid."""
    if pilot:
        return {start: min(online.PILOT.learning_rates) for start in online.STARTS}
    report = online_out / "results.json.gz"
    if not report.exists():
        return {}
    chosen = read_json(report)["chosen_learning_rates"]
    return {c["start"]: c["lr"] for c in chosen if c["variant"] == "nft" and c["regime"] == "on"}


# --------------------------------------------------------------------------------------------------------------------
# Files


# The settings check and the finished runs: compare_algorithms' own functions (any settings dataclass).
settings_dict, load_finished = online.settings_dict, online.load_finished


class Starts:
    """Each starting model's directory, fingerprint and judged dataset, made on first use."""

    def __init__(self, settings: Settings, out: Path, online_out: Path):
        self.settings, self.out, self.online_out = settings, out, online_out
        self._cache: dict[str, tuple[str, str]] = {}

    def model(self, start: str) -> tuple[str, str]:
        if start not in self._cache:
            path = online.starting_model_path(start, self.online_out)
            fingerprint = online.model_fingerprint(path)
            online.check_fingerprint(self.out, start, fingerprint)
            self._cache[start] = (path, fingerprint)
        return self._cache[start]

    def point(self, start: str, split: str) -> None:
        """The starting model's own metrics on `split` (`<out>/starts/<start>-<split>.json`), once."""
        path = self.out / "starts" / f"{start}-{split}.json"
        if path.exists():
            return
        model_path, fingerprint = self.model(start)
        model, tokenizer = load_start(model_path)
        dataset = make_dataset(split, self.settings.eval_prompts, seed=online.DATA_SEED, config=online.STARTS[start])
        work = self.out / "work"
        work.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=work) as folder:
            result = evaluate(model, tokenizer, dataset, self.settings, start, Path(folder))
        write_json(path, {"start": start, "split": split, "start_fingerprint": fingerprint, **result})

    def data_path(self, start: str) -> Path:
        """Where `start`'s judged dataset lies (`<out>/data/<start>.jsonl.gz`), made or not."""
        return self.out / "data" / f"{start}.jsonl.gz"

    def data(self, start: str) -> Path:
        path = self.data_path(start)
        if not path.exists():
            model_path, fingerprint = self.model(start)
            model, tokenizer = load_start(model_path)
            logger.info("%s: generating its judged dataset into %s", start, path)
            generate_round(self.settings, model, tokenizer, start, 0, path, seed=GENERATION_SEED)
            summary = {"start": start, "start_fingerprint": fingerprint, **data_summary(read_answers(path))}
            write_json(self.out / "data" / f"{start}.summary.json", summary)
        return path


@contextlib.contextmanager
def claimed(lock_path: Path):
    """True while this process holds `lock_path` (an exclusive `flock`, which the kernel drops when the process dies,
    so a killed run leaves no stale claim); False if another process holds it."""
    with open(lock_path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def run_cells(cells, settings: Settings, out: Path, starts: Starts, max_cells: int | None, runner) -> int:
    """Run the unfinished `cells` (at most `max_cells`); the number run. Several processes can share one grid (for
    example one per core, each with one thread): each run is claimed by a lock under `<out>/work/` while it trains, and
    a run finished or claimed by another process meanwhile is skipped."""
    finished = json_files(out / "cells")
    todo = [c for c in cells if c.name not in finished]
    logger.info("%d runs selected, %d finished, %d to run", len(cells), len(cells) - len(todo), len(todo))
    work = out / "work"
    work.mkdir(parents=True, exist_ok=True)
    ran = 0
    for cell in todo:
        if max_cells is not None and ran >= max_cells:
            break
        target = out / "cells" / f"{cell.name}.json.gz"
        with claimed(work / f"{cell.name}.lock") as mine:
            if not mine or target.exists():
                logger.info(
                    "%s: %s", cell.name, "finished by another process" if mine else "running in another process"
                )
                continue
            path, fingerprint = starts.model(cell.start)
            starts.point(cell.start, online.PHASE_SPLIT.get(getattr(cell, "phase", "final"), "test"))
            result = runner(cell, path, work)
            write_json(target, {"settings": settings_dict(settings), "start_fingerprint": fingerprint, **result})
        ran += 1
        last = result["evals"][max(result["evals"], key=int)]
        logger.info(
            "%s: %s sampled %.1f%%, greedy %.1f%%, %.0f s",
            cell.name,
            result["split"],
            100 * last["sampled"],
            100 * last["greedy"],
            result["wall_seconds"],
        )
    return ran


def parse_only(filters: list[str], fields: set[str]) -> dict[str, set[str]]:
    parsed = {}
    for item in filters:
        key, sep, values = item.partition("=")
        if not sep or key not in fields:
            raise SystemExit(f"--only takes KEY=V1,V2 with KEY one of {sorted(fields)}, got {item!r}.")
        parsed[key] = {f"{float(v):g}" if key == "lr" else v for v in values.split(",")}
    return parsed


def selected(cell, only: dict[str, set[str]]) -> bool:
    def text(key):
        value = getattr(cell, key, None)
        return f"{value:g}" if key == "lr" else str(value)

    return all(text(key) in values for key, values in only.items() if hasattr(cell, key))


# --------------------------------------------------------------------------------------------------------------------
# Report


def _result_of(results: dict, settings, chosen, method, epochs, start, seed):
    if (method, epochs, start) not in chosen:
        return None
    cell = final_cell_for(settings, chosen, method, epochs, start, seed)
    result = results.get(cell.name)
    return None if result is None else result["evals"].get(str(epochs))


def _metric(evaluation: dict, name: str) -> float:
    if name.startswith("pass@"):
        return evaluation["pass_at_k"][name.removeprefix("pass@")]
    return evaluation[name]


METRICS = ("sampled", "greedy", "pass@16", "entropy")


def summarise(settings: Settings, results: list[dict], chosen: dict) -> dict[str, Any]:
    by_name = {Cell(**r["cell"]).name: r for r in results if r["cell"].get("phase") == "final"}
    metrics = [m for m in METRICS if m != "pass@16"] + [f"pass@{settings.eval_samples}"]
    rows, pairs = [], []
    for epochs in settings.epochs:
        for method in settings.methods:
            for start in settings.starts:
                evals = [_result_of(by_name, settings, chosen, method, epochs, start, s) for s in settings.final_seeds]
                evals = [e for e in evals if e is not None]
                if not evals:
                    continue
                row = {"epochs": epochs, "method": method, "start": start, "seeds": len(evals)}
                row["lr"] = chosen[(method, epochs, start)]["lr"]
                for name in metrics:
                    row[name] = t_interval([_metric(e, name) for e in evals])
                rows.append(row)
            if method == REFERENCE:
                continue

            def evaluations(start, seed, method=method, epochs=epochs):
                a = _result_of(by_name, settings, chosen, REFERENCE, epochs, start, seed)
                b = _result_of(by_name, settings, chosen, method, epochs, start, seed)
                return None if a is None or b is None else (a, b)

            paired = paired_differences(settings, metrics, evaluations)
            if paired is not None:
                pairs.append({"epochs": epochs, "pair": f"{REFERENCE} - {method}", **paired})
    return {"rows": rows, "pairs": pairs, "metrics": metrics}


def paired_differences(settings: Settings, metrics, evaluations) -> dict[str, Any] | None:
    """Paired differences `a - b` of `metrics` per starting model and pooled over them, with the protocol's verdict on
    sampled accuracy: "real" only if every (starting model, seed) pair is in, the pooled interval excludes 0 and every
    starting model agrees in sign; "incomplete" while pairs are missing, else "not shown". `evaluations(start, seed)`
    gives the pair `(a, b)` of evaluations, or None where either run is missing; None if no pair is in."""
    per_start, pooled_diffs = {}, {name: [] for name in metrics}
    for start in settings.starts:
        diffs = {name: [] for name in metrics}
        for seed in settings.final_seeds:
            pair = evaluations(start, seed)
            if pair is not None:
                for name in metrics:
                    diffs[name].append(_metric(pair[0], name) - _metric(pair[1], name))
        if diffs["sampled"]:
            per_start[start] = {name: t_interval(v) for name, v in diffs.items()}
            for name in metrics:
                pooled_diffs[name] += diffs[name]
    if not per_start:
        return None
    complete = all(len(v) == len(settings.final_seeds) * len(settings.starts) for v in pooled_diffs.values())
    pooled = {name: t_interval(v) for name, v in pooled_diffs.items()}
    signs = {math.copysign(1, per_start[s]["sampled"][0]) for s in per_start}
    lo = pooled["sampled"][0] - pooled["sampled"][1]
    hi = pooled["sampled"][0] + pooled["sampled"][1]
    real = complete and len(signs) == 1 and len(per_start) == len(settings.starts) and (lo > 0 or hi < 0)
    verdict = "incomplete" if not complete else ("real" if real else "not shown")
    return {"per_start": per_start, "pooled": pooled, "verdict": verdict}


def rounds_summary(settings: Settings, results: list[dict]) -> list[dict]:
    rows = []
    rounds = [r for r in results if r["cell"].get("arm")]
    for start in settings.starts:
        for arm in ("offline", "online"):
            mine = [r for r in rounds if r["cell"]["start"] == start and r["cell"]["arm"] == arm]
            for k in range(1, settings.rounds + 1):
                values = [r["evals"][str(k)] for r in mine if str(k) in r["evals"]]
                if values:
                    rows.append(
                        {
                            "start": start,
                            "arm": arm,
                            "round": k,
                            "answers": k * settings.questions * settings.answers,
                            "seeds": len(values),
                            "sampled": t_interval([v["sampled"] for v in values]),
                            "greedy": t_interval([v["greedy"] for v in values]),
                            "entropy": t_interval([v["entropy"] for v in values]),
                        }
                    )
    return rows


ROUND_METRICS = ("sampled", "greedy", "entropy")


def rounds_pairs(settings: Settings, results: list[dict]) -> list[dict]:
    """Per round, offline minus online at the same number of generated answers, paired by (starting model, seed)."""
    by_key = {
        (r["cell"]["start"], r["cell"]["arm"], r["cell"]["seed"]): r["evals"] for r in results if r["cell"].get("arm")
    }
    pairs = []
    for k in range(1, settings.rounds + 1):

        def evaluations(start, seed, k=str(k)):
            a = by_key.get((start, "offline", seed), {}).get(k)
            b = by_key.get((start, "online", seed), {}).get(k)
            return None if a is None or b is None else (a, b)

        paired = paired_differences(settings, ROUND_METRICS, evaluations)
        if paired is not None:
            pairs.append({"round": k, "answers": k * settings.questions * settings.answers, **paired})
    return pairs


def markdown(settings, summary, rounds, rounds_pairs_rows, chosen, data, points, results) -> str:
    lines = ["# Offline NFT vs TRL's offline trainers: results", ""]
    for point in points:
        lines.append(
            f"- starting model `{point['start']}` on {point['split']}: sampled {100 * point['sampled']:.1f}%, "
            f"greedy {100 * point['greedy']:.1f}%, pass@{settings.eval_samples} "
            f"{100 * point['pass_at_k'][str(settings.eval_samples)]:.1f}%, entropy {point['entropy']:.3f}"
        )
    for item in data:
        lines.append(
            f"- judged data `{item['start']}`: {item['answers']} answers, correct rate {100 * item['correct_rate']:.1f}%, "
            f"mixed groups {100 * item['mixed_groups']:.1f}%, truncated {item['truncated']}"
        )
    tune = sorted((r for r in results if r["cell"].get("phase") == "tune"), key=lambda r: Cell(**r["cell"]).name)
    epochs = [str(e) for e in settings.epochs]
    lines += [
        "",
        "## Tune runs (validation, sampled accuracy after each epoch count)",
        "",
        "| model | method | lr | seed | " + " | ".join(f"after {e}" for e in epochs) + " | wall (s) |",
        "|---|---|---|---|" + "---|" * (len(epochs) + 1),
    ]
    for r in tune:
        c = r["cell"]
        after = " | ".join(f"{100 * r['evals'][e]['sampled']:.1f}%" if e in r["evals"] else "" for e in epochs)
        lines.append(
            f"| {c['start']} | {c['method']} | {c['lr']:g} | {c['seed']} | {after} | {r['wall_seconds']:.0f} |"
        )
    lines += [
        "",
        "## Learning rates chosen on validation",
        "",
        "| method | epochs | model | " + " | ".join(f"lr {lr:g}" for lr in settings.learning_rates) + " | chosen |",
        "|---|---|---|" + "---|" * (len(settings.learning_rates) + 1),
    ]
    for (method, epochs, start), c in sorted(chosen.items()):
        by_lr = " | ".join(f"{100 * c['by_lr'][lr]:.1f}%" for lr in settings.learning_rates)
        edge = " (edge)" if c["at_edge"] else ""
        lines.append(f"| {method} | {epochs} | {start} | {by_lr} | {c['lr']:g}{edge} |")
    metrics = summary["metrics"]
    lines += [
        "",
        "## Test set, mean ± 95% interval over seeds",
        "",
        "| epochs | method | model | lr | seeds | " + " | ".join(metrics) + " |",
        "|---|---|---|---|---|" + "---|" * len(metrics),
    ]
    for row in summary["rows"]:
        values = " | ".join(fmt(*row[m], percent=m != "entropy") for m in metrics)
        lines.append(
            f"| {row['epochs']} | {row['method']} | {row['start']} | {row['lr']:g} | {row['seeds']} | {values} |"
        )
    lines += [
        "",
        "## Paired differences (test)",
        "",
        "| epochs | pair | model | " + " | ".join(metrics) + " | verdict |",
        "|---|---|---|" + "---|" * (len(metrics) + 1),
    ]
    for pair in summary["pairs"]:
        lines += _pair_lines(pair, metrics, pair["epochs"], pair["pair"])
    lines += [
        "",
        "## Rounds: generate + offline NFT vs online NFT (test)",
        "",
        "| model | arm | round | answers | seeds | sampled | greedy | entropy |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rounds:
        lines.append(
            f"| {row['start']} | {row['arm']} | {row['round']} | {row['answers']} | {row['seeds']} | "
            f"{fmt(*row['sampled'])} | {fmt(*row['greedy'])} | {fmt(*row['entropy'], percent=False)} |"
        )
    lines += [
        "",
        "## Rounds, paired by seed: offline - online at the same number of answers (test)",
        "",
        "| round | answers | model | sampled | greedy | entropy | verdict |",
        "|---|---|---|---|---|---|---|",
    ]
    for pair in rounds_pairs_rows:
        lines += _pair_lines(pair, ROUND_METRICS, pair["round"], pair["answers"])
    return "\n".join(lines) + "\n"


def _pair_lines(pair: dict, metrics, *lead) -> list[str]:
    """One table line per starting model and one pooled line (with the verdict) of a `paired_differences` result."""
    lines = []
    for start, diffs in [*pair["per_start"].items(), ("pooled", pair["pooled"])]:
        values = " | ".join(fmt(*diffs[m], percent=m != "entropy") for m in metrics)
        verdict = pair["verdict"] if start == "pooled" else ""
        lines.append("| " + " | ".join(str(x) for x in (*lead, start)) + f" | {values} | {verdict} |")
    return lines


def write_report(out: Path, settings: Settings, results: list[dict]) -> None:
    chosen = choose_learning_rates(settings, results)
    summary = summarise(settings, results, chosen)
    rounds = rounds_summary(settings, results)
    paired_rounds = rounds_pairs(settings, results)
    data = [read_json(p) for p in sorted((out / "data").glob("*.summary.json"))]
    points = [read_json(p) for p in sorted((out / "starts").glob("*.json"))]
    payload = {
        "settings": settings_dict(settings),
        "chosen": [{"method": m, "epochs": e, "start": s, **c} for (m, e, s), c in sorted(chosen.items())],
        "summary": summary,
        "rounds": rounds,
        "rounds_pairs": paired_rounds,
        "data": data,
        "starting_points": points,
        "cells": len(results),
    }
    write_json(out / "results.json.gz", payload)
    (out / "results.md").write_text(markdown(settings, summary, rounds, paired_rounds, chosen, data, points, results))
    logger.info("report: %d runs, %s", len(results), out / "results.md")


# --------------------------------------------------------------------------------------------------------------------


def quiet() -> None:
    """The per-run progress bars and per-batch generation lines would bury the one line per finished run."""
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    logging.getLogger("nft_trl.offline.generate").setLevel(logging.WARNING)
    logging.getLogger("trl").setLevel(logging.ERROR)


def locate(task: str, pilot: bool, out: str | None, online_out: str | None) -> tuple[Settings, Path, Path]:
    """The settings of `task` (pilot or protocol), the grid's folder and the online grid's (its starting models)."""
    settings = online.for_task(PILOT if pilot else PROTOCOL, task)  # the same renaming of starts
    suffix = ("_countdown" if task == "countdown" else "") + ("_pilot" if pilot else "")
    out_path = Path(out or "benchmarks/results/compare_offline" + suffix)
    online_path = Path(online_out or "benchmarks/results/compare_algorithms" + suffix.replace("_pilot", ""))
    return settings, out_path, online_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--phase", choices=("data", "tune", "final", "rounds", "report"), required=True)
    parser.add_argument("--out", default=None, help="output folder (default: benchmarks/results/compare_offline)")
    parser.add_argument("--online_out", default=None, help="the online grid's folder (its starting models)")
    parser.add_argument("--pilot", action="store_true", help="tiny settings, for testing the pipeline")
    parser.add_argument("--task", choices=TASKS, default="addition")
    parser.add_argument("--max_cells", type=int, default=None, help="run at most this many unfinished runs")
    parser.add_argument("--only", nargs="*", default=[], help="KEY=V1,V2 filters on start, method, lr, seed, arm")
    opts = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    quiet()

    settings, out, online_out = locate(opts.task, opts.pilot, opts.out, opts.online_out)
    only = parse_only(opts.only, {"start", "method", "lr", "seed", "arm"})
    starts = Starts(settings, out, online_out)
    finished = load_finished(out, settings)
    chosen = choose_learning_rates(settings, finished)

    def train(cell, path, work):
        return run_cell(settings, cell, path, starts.data(cell.start), work)

    if opts.phase == "data":
        for start in settings.starts:
            if not only or selected(Cell("data", start, "", 0.0, 0, 0), only):
                starts.data(start)
    elif opts.phase == "tune":
        run_cells([c for c in tune_grid(settings) if selected(c, only)], settings, out, starts, opts.max_cells, train)
    elif opts.phase == "final":
        cells, waiting = final_grid(settings, chosen)
        for method, start in waiting:
            logger.info("final %s %s: waits for its tune runs", method, start)
        run_cells([c for c in cells if selected(c, only)], settings, out, starts, opts.max_cells, train)
    elif opts.phase == "rounds":
        online_chosen = online_learning_rates(online_out, opts.pilot)
        cells = []
        for start in settings.starts:
            offline_best = [
                (c["by_lr"][c["lr"]], -e, c["lr"], e) for (m, e, s), c in chosen.items() if m == "nft" and s == start
            ]
            lr_online = online_chosen.get(start)
            if not offline_best or lr_online is None:
                logger.info("rounds %s: waits for offline NFT's tune runs and the online grid's NFT choice", start)
                continue
            _, _, lr, epochs = max(offline_best)
            for seed in settings.final_seeds:
                for arm in ("offline", "online"):
                    cell = RoundCell(start, arm, seed)
                    if selected(cell, only):
                        cells.append((cell, (lr, epochs), lr_online))
        settings_lrs = {c.name: (lo, ln) for c, lo, ln in cells}

        def rounds(cell, path, work):
            lo, ln = settings_lrs[cell.name]
            return run_rounds(settings, cell, path, lo, ln, out, work)

        run_cells([c for c, _, _ in cells], settings, out, starts, opts.max_cells, rounds)
    write_report(out, settings, load_finished(out, settings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
