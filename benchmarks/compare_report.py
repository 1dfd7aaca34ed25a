"""The report of `compare_algorithms.py`: summaries with intervals, paired differences, tables and plots.

`write_report` reads the finished cells (whatever subset has finished) and writes, into the output folder,
`results.json.gz` (gzip-compressed JSON: every cell, the starting points, the learning-rate choices, the summaries and the paired
differences), `results.md` (the same as tables) and three plots: `curves.png` (sampled accuracy during training),
`entropy.png` (the trainers' logged token entropy) and `pass_at_k.png` (pass@k vs k). The statistics are those of the
protocol in `benchmarks/README.md`: the mean over seeds with a t-based 95% interval, and paired differences per
(seed, starting model), per starting model and pooled over both.

The grid's files (cells, `results.json.gz`) are gzip-compressed JSON, written atomically by `write_json`; `read_json`
and `json_files` read a plain `.json` as well, so an output folder written before the compression still works.
"""

from __future__ import annotations

import gzip
import json
import math
import os
from collections import defaultdict
from pathlib import Path
from typing import Any

from nft_trl.evaluation.metrics import t_interval


REFERENCE = "nft"
# Paired differences A - B reported besides NFT - X: the weighting alone, and NFT's GRPO-like weighting vs GRPO.
EXTRA_PAIRS = (("rft_w", "rft"), ("nft_sqrt", "grpo"))
PAIR_METRICS = ("sampled", "greedy", "pass@16", "entropy_last")


# The grid's files: JSON, gzip-compressed when the name ends in `.gz`; a plain `.json` is read too.
JSON_SUFFIXES = (".json.gz", ".json")


def write_json(path: Path, payload: Any) -> None:
    """Write `payload` as JSON (gzip-compressed if `path` ends in `.gz`) through a temporary file and `os.replace`.

    A killed or failed write leaves the previous file, or none, never a half-written one. The gzip header carries no
    time stamp, so the same payload gives the same bytes.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    data = json.dumps(payload, indent=1).encode()
    if path.name.endswith(".gz"):
        data = gzip.compress(data, mtime=0)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def read_json(path: Path) -> Any:
    """The JSON in `path`: gzip-compressed if its name ends in `.gz`, else plain."""
    data = path.read_bytes()
    return json.loads(gzip.decompress(data) if path.name.endswith(".gz") else data)


def json_files(folder: Path, pattern: str = "*") -> dict[str, Path]:
    """The files `<folder>/<pattern>.json.gz` and `<folder>/<pattern>.json`, by name without the suffix, sorted.

    One name in both forms is refused: which of the two holds the result is not for the reader to guess.
    """
    found: dict[str, Path] = {}
    for suffix in JSON_SUFFIXES:
        for path in folder.glob(pattern + suffix):
            name = path.name.removesuffix(suffix)
            if name in found:
                raise SystemExit(f"{found[name]} and {path} are one result in two forms; delete the one to drop.")
            found[name] = path
    return {name: found[name] for name in sorted(found, key=lambda name: name + ".json")}


def metric(result: dict, name: str) -> float:
    """A scalar of one cell: `sampled`, `greedy`, `pass@K`, `entropy_last` or `wall_seconds`."""
    if name.startswith("pass@"):
        return result["final"]["pass_at_k"][name.removeprefix("pass@")]
    if name in ("entropy_last", "wall_seconds"):
        return result[name]
    return result["final"][name]


def fmt(mean: float, half: float, percent: bool = True) -> str:
    if percent:
        return f"{100 * mean:.1f}" + ("" if math.isnan(half) else f" ± {100 * half:.1f}")
    return f"{mean:.3f}" + ("" if math.isnan(half) else f" ± {half:.3f}")


def summarise(results: list[dict], phase: str, metrics: list[str]) -> list[dict[str, Any]]:
    """Mean and t-interval of each metric per (regime, starting model, variant, lr) over the seeds of `phase`."""
    groups = defaultdict(list)
    for r in results:
        c = r["cell"]
        if c["phase"] == phase:
            groups[(c["regime"], c["start"], c["variant"], c["lr"])].append(r)
    rows = []
    for (regime, start, variant, lr), rs in sorted(groups.items()):
        row = {
            "regime": regime,
            "start": start,
            "variant": variant,
            "lr": lr,
            "seeds": sorted(r["cell"]["seed"] for r in rs),
        }
        for name in metrics:
            row[name] = t_interval([metric(r, name) for r in rs])
        rows.append(row)
    return rows


def pair_verdict(per_start: dict, pooled: tuple[float, float], starts, n_seeds: int) -> str:
    """The protocol's verdict on one paired difference.

    "incomplete" until every starting model has all `n_seeds` pairs; then "differs" when the pooled interval
    `(mean, half-width)` excludes 0 and every starting model's mean difference has the pooled mean's sign, else
    "within interval". `per_start` maps a starting model to `(mean, half-width, n pairs)`.
    """
    mean, half = pooled
    if any(start not in per_start or per_start[start][2] < n_seeds for start in starts) or math.isnan(half):
        return "incomplete"
    signs = {math.copysign(1, m) for m, _, _ in per_start.values()}
    if abs(mean) > half and signs == {math.copysign(1, mean)}:
        return "differs"
    return "within interval"


def paired_differences(results: list[dict], settings) -> list[dict[str, Any]]:
    """NFT - X (and `EXTRA_PAIRS`) on the final cells, per starting model and pooled, for each of `PAIR_METRICS`.

    A pair is the two runs with the same (seed, regime, starting model); the verdict is `pair_verdict`'s.
    """
    cells = {}
    for r in results:
        c = r["cell"]
        if c["phase"] == "final":
            cells[(c["regime"], c["start"], c["seed"], c["variant"])] = r
    pairs = [(REFERENCE, v) for v in settings.variants if v != REFERENCE] + list(EXTRA_PAIRS)
    rows = []
    for regime in settings.regimes:
        for a, b in pairs:
            if a not in settings.variants or b not in settings.variants:
                continue
            for name in PAIR_METRICS:
                per_start, pooled = {}, []
                for start in settings.starts:
                    diffs = [
                        metric(cells[(regime, start, seed, a)], name) - metric(cells[(regime, start, seed, b)], name)
                        for seed in settings.final_seeds
                        if (regime, start, seed, a) in cells and (regime, start, seed, b) in cells
                    ]
                    if diffs:
                        per_start[start] = (*t_interval(diffs), len(diffs))
                        pooled += diffs
                if not pooled:
                    continue
                mean, half = t_interval(pooled)
                verdict = pair_verdict(per_start, (mean, half), settings.starts, len(settings.final_seeds))
                rows.append(
                    {
                        "regime": regime,
                        "a": a,
                        "b": b,
                        "metric": name,
                        "per_start": per_start,
                        "pooled": (mean, half, len(pooled)),
                        "verdict": verdict,
                    }
                )
    return rows


def markdown(settings, results, starts, chosen, summary, phase, paired) -> str:
    lines = [
        f"Embedded task, {settings.steps} optimizer steps x {settings.batch} completions ({settings.num_generations} "
        f"per prompt); off-policy = {settings.off_policy_steps} optimizer steps per generated batch. Accuracies in %, "
        f"mean ± t-based 95% interval over seeds; sampled = {settings.eval_samples} samples per problem at T=1 on "
        f"{settings.eval_prompts} problems.",
        "",
        "## Starting models",
        "",
        "| model | set | sampled | greedy | pass@" + f"{settings.eval_samples} |",
        "|---|---|---|---|---|",
    ]
    for s in starts:
        top = s["pass_at_k"][str(settings.eval_samples)]
        lines.append(
            f"| {s['start']} | {s['split']} | {100 * s['sampled']:.1f} | {100 * s['greedy']:.1f} | {100 * top:.1f} |"
        )
    lr_head = " | ".join(f"lr {lr:g}" for lr in settings.learning_rates)
    lines += [
        "",
        "## Learning-rate choice (tune phase: validation sampled accuracy, mean over the tune seeds)",
        "",
        f"| variant | regime | model | {lr_head} | chosen |",
        "|---|---|---|" + "---|" * len(settings.learning_rates) + "---|",
    ]
    for (variant, regime, start), choice in sorted(chosen.items()):
        by_lr = " | ".join(f"{100 * choice['by_lr'][lr]:.1f}" for lr in settings.learning_rates)
        edge = " (grid edge)" if choice["at_edge"] else ""
        lines.append(f"| {variant} | {regime} | {start} | {by_lr} | {choice['lr']:g}{edge} |")
    tuned = sum(1 for r in results if r["cell"]["phase"] == "tune")
    lines.append(f"\n{len(chosen)} groups chosen; {tuned} tune cells finished.")

    pass_names = [f"pass@{k}" for k in settings.pass_ks if k > 1]
    head = ["sampled", "greedy", *pass_names, "entropy (last)", "wall (s)"]
    lines += [
        "",
        f"## Results ({phase} phase, {'test' if phase == 'final' else 'validation'} set)",
        "",
        "| regime | model | variant | lr | seeds | " + " | ".join(head) + " |",
        "|---|---|---|---|---|" + "---|" * len(head),
    ]
    for row in summary:
        values = [fmt(*row[n]) for n in ("sampled", "greedy", *pass_names)]
        values += [fmt(*row["entropy_last"], percent=False), f"{row['wall_seconds'][0]:.0f}"]
        lines.append(
            f"| {row['regime']} | {row['start']} | {row['variant']} | {row['lr']:g} | {len(row['seeds'])} | "
            + " | ".join(values)
            + " |"
        )
    if paired:
        lines += [
            "",
            "## Paired differences A - B (final phase; same seed, regime and starting model)",
            "",
            "Points for accuracies, nats for entropy; per starting model (n pairs) and pooled. 'differs': the pooled "
            "interval excludes 0 and both starting models agree in sign; 'incomplete' until both have all their "
            "final seeds.",
            "",
            "| regime | A - B | metric | " + " | ".join(settings.starts) + " | pooled | verdict |",
            "|---|---|---|" + "---|" * len(settings.starts) + "---|---|",
        ]
        for row in paired:
            percent = row["metric"] != "entropy_last"
            cells = []
            for start in settings.starts:
                if start in row["per_start"]:
                    mean, half, n = row["per_start"][start]
                    cells.append(f"{fmt(mean, half, percent)} (n={n})")
                else:
                    cells.append("-")
            mean, half, n = row["pooled"]
            lines.append(
                f"| {row['regime']} | {row['a']} - {row['b']} | {row['metric']} | "
                + " | ".join(cells)
                + f" | {fmt(mean, half, percent)} (n={n}) | {row['verdict']} |"
            )
    return "\n".join(lines) + "\n"


def plot(settings, results, phase, out: Path) -> list[str]:
    """Learning curves, entropy curves and pass@k vs k: one panel per (starting model, regime), mean over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    groups = defaultdict(list)
    for r in results:
        c = r["cell"]
        if c["phase"] == phase:
            label = c["variant"] if phase == "final" else f"{c['variant']} lr {c['lr']:g}"
            groups[(c["start"], c["regime"], label)].append(r)
    panels = [(s, g) for s in settings.starts for g in settings.regimes]
    written = []
    for name, ylabel in (
        ("curves", f"sampled accuracy ({settings.curve_samples} samples, T=1)"),
        ("entropy", "token entropy of sampled completions"),
        ("pass_at_k", "pass@k"),
    ):
        fig, axes = plt.subplots(
            len(settings.starts), len(settings.regimes), figsize=(6 * len(settings.regimes), 4 * len(settings.starts)),
            squeeze=False,
        )  # fmt: skip
        for ax, (start, regime) in zip(axes.flat, panels, strict=True):
            for (s, g, label), rs in sorted(groups.items()):
                if (s, g) != (start, regime):
                    continue
                if name == "pass_at_k":
                    x = settings.pass_ks
                    y = np.array([[r["final"]["pass_at_k"][str(k)] for k in x] for r in rs])
                else:
                    key = "curve" if name == "curves" else "entropy_curve"
                    length = min(len(r[key]) for r in rs)
                    x = [step for step, _ in rs[0][key][:length]]
                    y = np.array([[value for _, value in r[key][:length]] for r in rs])
                mean = y.mean(0)
                ax.plot(x, mean, marker="o" if name == "pass_at_k" else None, label=label)
                if len(rs) > 1:
                    spread = y.std(0, ddof=1)
                    ax.fill_between(x, mean - spread, mean + spread, alpha=0.15)
            xlabel = "k" if name == "pass_at_k" else "optimizer step"
            ax.set(title=f"{start}, {regime}-policy ({phase})", xlabel=xlabel, ylabel=ylabel)
            if name == "pass_at_k":
                ax.set_xscale("log", base=2)
            ax.grid(alpha=0.3)
            if ax.has_data():
                ax.legend(fontsize=7)
        fig.tight_layout()
        path = out / f"{name}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path.name)
    return written


def write_report(out: Path, settings, results: list[dict], starts: list[dict], chosen: dict) -> dict:
    """Write results.json.gz, results.md and the plots for the finished cells; returns what results.json.gz holds.

    A plain `results.json` left by an older version is removed, so that the folder holds one report.
    """
    out.mkdir(parents=True, exist_ok=True)
    phase = "final" if any(r["cell"]["phase"] == "final" for r in results) else "tune"
    metrics = ["sampled", "greedy", *(f"pass@{k}" for k in settings.pass_ks), "entropy_last", "wall_seconds"]
    summary = summarise(results, phase, metrics)
    paired = paired_differences(results, settings)
    (out / "results.md").write_text(markdown(settings, results, starts, chosen, summary, phase, paired))
    plots = plot(settings, results, phase, out) if results else []
    report = {
        "settings": results[0]["settings"] if results else None,
        "phase_reported": phase,
        "starting_points": [{k: v for k, v in s.items() if k != "settings"} for s in starts],
        "chosen_learning_rates": [
            {"variant": v, "regime": g, "start": s, **choice} for (v, g, s), choice in sorted(chosen.items())
        ],
        "summary": summary,
        "paired_differences": paired,
        "cells": [{k: v for k, v in r.items() if k != "settings"} for r in results],
        "plots": plots,
    }
    write_json(out / "results.json.gz", report)
    (out / "results.json").unlink(missing_ok=True)
    return report
