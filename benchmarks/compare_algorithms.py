"""Where does NFT's edge come from? The protocol of `benchmarks/README.md`, run end to end on the embedded task.

    python benchmarks/compare_algorithms.py --phase tune     # variant x lr x regime x starting model, validation set
    python benchmarks/compare_algorithms.py --phase final    # the chosen lr per (variant, regime, model), 5 seeds, test
    python benchmarks/compare_algorithms.py --phase report   # results.json.gz, results.md and the plots
    python benchmarks/compare_algorithms.py --phase tune --only variant=nft,rft regime=off --max_cells 4
    python benchmarks/compare_algorithms.py --pilot --phase tune   # the same grid with tiny settings (seconds a run)
    python benchmarks/compare_algorithms.py --task countdown --phase tune   # the same protocol on the countdown task

The grid is a list of runs ("cells"); each finished cell is written at once to its own gzip-compressed JSON file
under `<out>/cells/` (`<name>.json.gz`; a plain `<name>.json` of an older folder counts as finished too), so a rerun
skips the finished cells and a killed run loses at most the cell in progress. The final phase runs the cells whose
learning rate is already chosen (all their tune cells finished) and says which wait.
`--phase tune` and `--phase final` end with the report of whatever has finished. The variants, settings and
statistics are those of the protocol; the report's code is in `compare_report.py` beside this file.

Variants: `nft` (NFTTrainer, the paper's defaults), `rft` (`negative_weight=0`, `prompt_weighting="none"`), `rft_w`
(`negative_weight=0` with NFT's `1 - r_hat` weighting), `nft_none` and `nft_sqrt` (NFT with
`prompt_weighting="none"` / `"sqrt_incorrect_odds"`), `grpo` (TRL's GRPOTrainer, `loss_type="grpo"`,
`scale_rewards="group"`) and `dr_grpo` (`loss_type="dr_grpo"`, `scale_rewards="none"`).

Tasks: `addition` (the embedded default; starting models `build1`, `build2`) and `countdown` (`--task countdown`:
`EmbeddedConfig.countdown()`, starting models `countdown1`, `countdown2`, built on first use; graded by
`countdown_reward`; results in `..._countdown/`). The settings are the same for both.

Starting models other than the shipped one are built on first use and kept with the results (`<out>/models/`),
since a rebuild on another machine can differ; each cell records the fingerprint of the weights it began from, and
runs from different weights under one name are refused.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any


os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("CI", "true")

sys.path.insert(0, str(Path(__file__).resolve().parent))  # compare_report.py, when run as a script or imported

import compare_report  # noqa: E402
import torch  # noqa: E402
from compare_report import json_files, read_json, write_json  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer, PrinterCallback  # noqa: E402
from trl import GRPOConfig, GRPOTrainer  # noqa: E402

from nft_trl import NFTConfig, NFTTrainer  # noqa: E402
from nft_trl.embedded import EmbeddedConfig, embedded_path, make_dataset, task_reward  # noqa: E402
from nft_trl.embedded.config import TASKS  # noqa: E402
from nft_trl.embedded.demo import HeldOutAccuracyCallback, activation_checkpointing_off  # noqa: E402
from nft_trl.evaluation import evaluate_accuracy, pass_at_k  # noqa: E402
from nft_trl.evaluation.metrics import default_pass_ks  # noqa: E402


logger = logging.getLogger("compare_algorithms")

# name: (trainer, config, the settings that differ from the shared ones)
VARIANTS = {
    "nft": (NFTTrainer, NFTConfig, {}),
    "rft": (NFTTrainer, NFTConfig, {"negative_weight": 0.0, "prompt_weighting": "none"}),
    "rft_w": (NFTTrainer, NFTConfig, {"negative_weight": 0.0, "prompt_weighting": "incorrect_rate"}),
    "nft_none": (NFTTrainer, NFTConfig, {"prompt_weighting": "none"}),
    "nft_sqrt": (NFTTrainer, NFTConfig, {"prompt_weighting": "sqrt_incorrect_odds"}),
    "grpo": (GRPOTrainer, GRPOConfig, {"loss_type": "grpo", "scale_rewards": "group"}),
    "dr_grpo": (GRPOTrainer, GRPOConfig, {"loss_type": "dr_grpo", "scale_rewards": "none"}),
}
# Starting models: independently built embedded models (build seed 1 is the shipped one), per task.
STARTS = {
    "build1": EmbeddedConfig(),
    "build2": EmbeddedConfig(seed=2),
    "countdown1": EmbeddedConfig.countdown(),
    "countdown2": EmbeddedConfig.countdown(seed=2),
}
PHASE_SPLIT = {"tune": "validation", "final": "test"}
EVAL_SEED = 0  # every evaluation samples with the same seed, so evaluations of paired runs are paired too
DATA_SEED = 0  # the rows of the training prompts and of the evaluation sets (the run's seed shuffles the former)


@dataclass(frozen=True)
class Settings:
    """Everything the protocol fixes. `PROTOCOL` is the real grid, `PILOT` the same grid with tiny settings."""

    variants: tuple[str, ...] = tuple(VARIANTS)
    starts: tuple[str, ...] = ("build1", "build2")
    regimes: tuple[str, ...] = ("on", "off")
    learning_rates: tuple[float, ...] = (1e-4, 2e-4, 4e-4)
    tune_seeds: tuple[int, ...] = (100, 101)
    final_seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    steps: int = 100  # optimizer steps per run
    batch: int = 64  # completions per optimizer step
    num_generations: int = 8  # answers per prompt
    off_policy_steps: int = 4  # optimizer steps per generated batch, off-policy
    max_completion_length: int = 16
    train_prompts: int = 4_000
    eval_prompts: int = 256  # problems of the final evaluation (validation or test set)
    eval_samples: int = 16  # samples per problem at T=1: sampled accuracy and pass@k up to this k
    curve_prompts: int = 128  # the first this many eval problems give the learning curve ...
    curve_samples: int = 4  # ... with this many samples each ...
    eval_every: int = 10  # ... every this many optimizer steps
    entropy_last: int = 10  # the entropy summary is the mean over this many last optimizer steps

    @property
    def pass_ks(self) -> list[int]:
        return default_pass_ks(self.eval_samples)


PROTOCOL = Settings()
PILOT = Settings(
    starts=("build1",),  # no second build in the pilot
    learning_rates=(1e-4, 4e-4),
    tune_seeds=(100,),
    final_seeds=(0, 1),
    steps=2,
    batch=8,
    num_generations=4,
    off_policy_steps=2,
    train_prompts=64,
    eval_prompts=8,
    eval_samples=4,
    curve_prompts=4,
    curve_samples=2,
    eval_every=1,
    entropy_last=2,
)


def for_task(settings: Settings, task: str) -> Settings:
    """`settings` for `task`: the countdown task runs the same grid from its own starting models."""
    if task == "addition":
        return settings
    return dataclasses.replace(settings, starts=tuple(start.replace("build", task) for start in settings.starts))


@dataclass(frozen=True)
class Cell:
    """One training run of the grid."""

    phase: str
    start: str
    regime: str
    variant: str
    lr: float
    seed: int

    @property
    def name(self) -> str:
        return f"{self.phase}-{self.start}-{self.regime}-{self.variant}-lr{self.lr:g}-seed{self.seed}"

    @property
    def group(self) -> tuple[str, str, str]:
        """The (variant, regime, starting model) a learning rate is chosen for."""
        return (self.variant, self.regime, self.start)


# --------------------------------------------------------------------------------------------------------------------
# The grid


def tune_grid(settings: Settings) -> list[Cell]:
    return [
        Cell("tune", start, regime, variant, lr, seed)
        for start in settings.starts
        for seed in settings.tune_seeds
        for regime in settings.regimes
        for variant in settings.variants
        for lr in settings.learning_rates
    ]


def choose_learning_rates(settings: Settings, results: list[dict]) -> dict[tuple[str, str, str], dict]:
    """The protocol's choice per (variant, regime, starting model), for the groups whose tune cells all finished.

    The learning rate with the highest mean final sampled accuracy on validation over the tune seeds; ties go to the
    smaller one. Returns `{group: {"lr", "by_lr": {lr: mean}, "at_edge"}}`.
    """
    finished = {Cell(**r["cell"]): r for r in results if r["cell"]["phase"] == "tune"}
    chosen = {}
    for cell in tune_grid(settings):
        group = cell.group
        if group in chosen:
            continue
        cells = [c for c in tune_grid(settings) if c.group == group]
        if not all(c in finished for c in cells):
            continue
        by_lr = {
            lr: statistics.fmean(finished[c]["final"]["sampled"] for c in cells if c.lr == lr)
            for lr in settings.learning_rates
        }
        best = max(sorted(by_lr), key=lambda lr: by_lr[lr])  # `max` keeps the first (smallest) of equal values
        edges = (min(settings.learning_rates), max(settings.learning_rates))
        chosen[group] = {"lr": best, "by_lr": by_lr, "at_edge": best in edges}
    return chosen


def final_grid(settings: Settings, chosen: dict) -> tuple[list[Cell], list[tuple[str, str, str]]]:
    """The final cells whose learning rate is chosen, and the groups still waiting for their tune cells."""
    cells, waiting = [], []
    for start in settings.starts:
        for seed in settings.final_seeds:
            for regime in settings.regimes:
                for variant in settings.variants:
                    group = (variant, regime, start)
                    if group in chosen:
                        cells.append(Cell("final", start, regime, variant, chosen[group]["lr"], seed))
                    elif group not in waiting:
                        waiting.append(group)
    return cells, waiting


def parse_only(filters: list[str]) -> dict[str, set[str]]:
    """`["variant=nft,rft", "seed=0"]` -> `{"variant": {"nft", "rft"}, "seed": {"0"}}` (values compared as text)."""
    parsed = {}
    fields = {f.name for f in dataclasses.fields(Cell)}
    for item in filters:
        key, sep, values = item.partition("=")
        if not sep or key not in fields:
            raise SystemExit(f"--only takes KEY=V1,V2 with KEY one of {sorted(fields)}, got {item!r}.")
        parsed[key] = {_canonical(key, v) for v in values.split(",")}
    return parsed


def _canonical(key: str, value: Any) -> str:
    return f"{float(value):g}" if key == "lr" else str(value)


def selected(cell: Cell, only: dict[str, set[str]]) -> bool:
    return all(_canonical(key, getattr(cell, key)) in values for key, values in only.items())


# --------------------------------------------------------------------------------------------------------------------
# One run


def starting_model_path(start: str, out: Path) -> str:
    """The directory of a starting model: the shipped build, else a build kept with the results under `<out>/models/`.

    A build repeated on another machine can come out different (its float rounding differs, and thousands of warm-up
    steps can amplify that), so every run of a grid must start from one copy of each model: the embedded model's cache
    mechanism, rooted in `<out>/models/` instead of the user's cache, builds it there on first use (5-30 minutes) and
    finds it there afterwards (`embedded/<settings-hash>/`), to be kept with the cells.
    """
    return str(embedded_path(cache_dir=out / "models", config=STARTS[start]))


def model_fingerprint(path: str | os.PathLike) -> str:
    """SHA-256 (first 16 hex digits) of a model directory's weight files: which starting model a run began from."""
    digest = hashlib.sha256()
    for weights in sorted(Path(path).glob("*.safetensors")):
        digest.update(weights.read_bytes())
    return digest.hexdigest()[:16]


def check_fingerprint(out: Path, start: str, fingerprint: str) -> None:
    """Refuse to add runs from a starting model other than the one this grid's finished runs of `start` began from."""
    paths = [*json_files(out / "starts", f"{start}-*").values(), *json_files(out / "cells", f"*-{start}-*").values()]
    for path in paths:
        recorded = read_json(path).get("start_fingerprint")
        if recorded is not None and recorded != fingerprint:
            raise SystemExit(
                f"{start}'s model (weights {fingerprint}) is not the one {path} began from ({recorded}). Restore that "
                f"model to {out / 'models'}, or move {start}'s cells and starts away to run them all again."
            )


def eval_sets(settings: Settings, phase: str, start: str):
    full = make_dataset(PHASE_SPLIT[phase], settings.eval_prompts, seed=DATA_SEED, config=STARTS[start])
    return full, full.select(range(settings.curve_prompts))


def evaluate_policy(model, tokenizer, dataset, settings: Settings, start: str) -> dict[str, Any]:
    """Sampled accuracy at T=1, greedy accuracy and unbiased pass@k from `eval_samples` samples per problem."""
    common = dict(max_new_tokens=settings.max_completion_length, seed=EVAL_SEED, reward_fn=task_reward(STARTS[start]))
    sampled = evaluate_accuracy(
        model, tokenizer, dataset, num_samples=settings.eval_samples, temperature=1.0, **common
    )
    greedy = evaluate_accuracy(model, tokenizer, dataset, num_samples=1, temperature=0.0, **common)
    n = settings.eval_samples
    # Both tasks' verdicts grade every answer (integer golds always parse), so `accuracy * n` counts the right ones.
    correct = [0 if p != p else round(p * n) for p in sampled.per_prompt_accuracy]
    return {
        "sampled": sampled.accuracy,
        "greedy": greedy.accuracy,
        "pass_at_k": {str(k): statistics.fmean(pass_at_k(n, c, k) for c in correct) for k in settings.pass_ks},
        "correct_per_problem": correct,
    }


def training_config(settings: Settings, cell: Cell, output_dir: str):
    _, config_cls, extra = VARIANTS[cell.variant]
    return config_cls(
        output_dir=output_dir,
        use_cpu=True,
        bf16=False,
        report_to="none",
        seed=cell.seed,
        max_steps=settings.steps,
        learning_rate=cell.lr,
        lr_scheduler_type="constant",
        warmup_steps=0,
        per_device_train_batch_size=settings.batch,
        steps_per_generation=settings.off_policy_steps if cell.regime == "off" else 1,
        num_generations=settings.num_generations,
        max_completion_length=settings.max_completion_length,
        temperature=1.0,
        logging_steps=1,
        save_strategy="no",
        **activation_checkpointing_off(),
        disable_tqdm=True,
        **extra,
    )


def run_cell(settings: Settings, cell: Cell, path: str) -> dict[str, Any]:
    """Train one cell from its starting model (the directory `path`) and evaluate it on its phase's set."""
    trainer_cls = VARIANTS[cell.variant][0]
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    config = STARTS[cell.start]
    train_set = make_dataset("train", settings.train_prompts, seed=DATA_SEED, config=config, exclude_validation=True)
    eval_set, curve_set = eval_sets(settings, cell.phase, cell.start)
    curve = HeldOutAccuracyCallback(
        tokenizer,
        curve_set,
        every=settings.eval_every,
        max_new_tokens=settings.max_completion_length,
        num_samples=settings.curve_samples,
        reward_fn=task_reward(config),
    )
    curve.evaluate(model, 0)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as output_dir:
        torch.manual_seed(cell.seed)
        trainer = trainer_cls(
            model,
            reward_funcs=[task_reward(config)],
            args=training_config(settings, cell, output_dir),
            train_dataset=train_set,
            processing_class=tokenizer,
            callbacks=[curve],
        )
        trainer.remove_callback(PrinterCallback)  # the per-step log dicts; the cell's JSON keeps them
        trainer.train()
    train_seconds = time.perf_counter() - start
    logs = [h for h in trainer.state.log_history if "entropy" in h]
    final = evaluate_policy(trainer.model, tokenizer, eval_set, settings, cell.start)
    return {
        "cell": dataclasses.asdict(cell),
        "split": PHASE_SPLIT[cell.phase],
        "final": final,
        "curve": curve.curve,
        "entropy_curve": [(h["step"], h["entropy"]) for h in logs],
        "entropy_last": statistics.fmean(h["entropy"] for h in logs[-settings.entropy_last :]),
        "reward_curve": [(h["step"], h.get("reward", float("nan"))) for h in logs],
        "train_seconds": train_seconds,
        "wall_seconds": time.perf_counter() - start,
    }


def starting_point(settings: Settings, start: str, phase: str, path: str) -> dict[str, Any]:
    """The starting model's metrics on the phase's set (the step-0 point of every curve of that model)."""
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    eval_set, _ = eval_sets(settings, phase, start)
    return {
        "start": start,
        "split": PHASE_SPLIT[phase],
        **evaluate_policy(model, AutoTokenizer.from_pretrained(path), eval_set, settings, start),
    }


# --------------------------------------------------------------------------------------------------------------------
# Files: one gzip-compressed JSON per finished cell, written atomically (`compare_report.write_json`)


def load_finished(out: Path, settings: Settings) -> list[dict]:
    """Every finished cell under `out`; refuses results written with other settings (another protocol or the pilot)."""
    results = []
    for path in json_files(out / "cells").values():
        result = read_json(path)
        if result["settings"] != settings_dict(settings):
            raise SystemExit(f"{path} was run with other settings; use another --out (or --pilot to match it).")
        results.append(result)
    return results


def settings_dict(settings: Settings) -> dict:
    return json.loads(json.dumps(dataclasses.asdict(settings)))  # tuples as lists, as read back from JSON


def run_cells(cells: list[Cell], settings: Settings, out: Path, max_cells: int | None) -> int:
    """Run the unfinished cells in order (at most `max_cells`); returns how many ran."""
    finished = json_files(out / "cells")  # either form: a resume never runs a finished cell again
    todo = [c for c in cells if c.name not in finished]
    logger.info("%d cells selected, %d finished, %d to run", len(cells), len(cells) - len(todo), len(todo))
    ran = 0
    models: dict[str, tuple[str, str]] = {}  # start -> (directory, fingerprint)
    for cell in todo[:max_cells]:
        if cell.start not in models:
            path = starting_model_path(cell.start, out)
            models[cell.start] = (path, model_fingerprint(path))
            check_fingerprint(out, cell.start, models[cell.start][1])
        path, fingerprint = models[cell.start]
        recorded = {"settings": settings_dict(settings), "start_fingerprint": fingerprint}
        starting = f"{cell.start}-{PHASE_SPLIT[cell.phase]}"
        if starting not in json_files(out / "starts", starting):
            write_json(
                out / "starts" / f"{starting}.json",
                {**recorded, **starting_point(settings, cell.start, cell.phase, path)},
            )
        result = run_cell(settings, cell, path)
        write_json(out / "cells" / f"{cell.name}.json.gz", {**recorded, **result})
        ran += 1
        curve = result["curve"]
        logger.info(
            "%s: %s accuracy %.1f%% -> %.1f%% (sampled), greedy %.1f%%, %.0f s",
            cell.name,
            result["split"],
            100 * curve[0][1],
            100 * result["final"]["sampled"],
            100 * result["final"]["greedy"],
            result["wall_seconds"],
        )
    return ran


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--phase", choices=("tune", "final", "report"), required=True)
    parser.add_argument("--out", default=None, help="output folder (default: benchmarks/results/compare_algorithms)")
    parser.add_argument("--pilot", action="store_true", help="tiny settings, for testing the pipeline")
    parser.add_argument("--task", choices=TASKS, default="addition", help="the embedded task")
    parser.add_argument("--max_cells", type=int, default=None, help="run at most this many unfinished cells")
    parser.add_argument("--only", nargs="*", default=[], help="KEY=V1,V2 filters on start, regime, variant, lr, seed")
    parser.add_argument("--no_report", action="store_true", help="do not write the report after running cells")
    opts = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")

    settings = for_task(PILOT if opts.pilot else PROTOCOL, opts.task)
    suffix = ("_countdown" if opts.task == "countdown" else "") + ("_pilot" if opts.pilot else "")
    default_out = "benchmarks/results/compare_algorithms" + suffix
    out = Path(opts.out or default_out)
    only = parse_only(opts.only)
    finished = load_finished(out, settings)
    if opts.phase == "tune":
        run_cells([c for c in tune_grid(settings) if selected(c, only)], settings, out, opts.max_cells)
    elif opts.phase == "final":
        cells, waiting = final_grid(settings, choose_learning_rates(settings, finished))
        for variant, regime, start in waiting:
            logger.info("final %s %s-policy %s: waits for its tune cells", variant, regime, start)
        run_cells([c for c in cells if selected(c, only)], settings, out, opts.max_cells)
    if opts.phase == "report" or not opts.no_report:
        results = load_finished(out, settings)
        starts = [read_json(path) for path in json_files(out / "starts").values()]
        compare_report.write_report(out, settings, results, starts, choose_learning_rates(settings, results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
