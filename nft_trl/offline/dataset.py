"""Judged answers: the dataset offline NFT trains on, its checks, and each row's verdict and group rate `r_hat`.

One row per answer. Columns (anything else is kept and ignored):

- `prompt` (required): a string, or a conversational list of messages (TRL's formats);
- `completion` (required, non-empty unless `completion_ids` holds its tokens, e.g. a lone EOS): the answer, a
  string or a list of assistant messages;
- the verdict, one of:
  - `correct`: bool (or 0 / 1); every row needs one;
  - `reward`: float, thresholded as online NFT thresholds its verdict reward (`correct = reward >= threshold`,
    `NFTConfig.correctness_threshold`); `None` or NaN means "cannot judge" (the row counts neither as right nor as
    wrong, as online).
  With both columns, `correct` decides.
- `solution` (optional): the gold answer; every answer of one group must carry the same one;
- `group` (optional): the group id (str or int); default: answers with the same prompt form a group;
- `completion_ids` (optional): the exact generated token ids of the answer, with its end-of-sequence token when it
  ended; without it the trainer tokenises `completion` (and appends EOS unless `truncated`);
- `truncated` (optional bool, default False): the answer was cut at the length limit (no EOS);
- `completion_logps` (optional): the generating model's per-token log-probabilities of the completion tokens
  (`pi_old`, at the sampling temperature the trainer uses); without it the trainer computes them once, with the
  starting model, before the first step.

`prepare_judged` checks the rows (a `ValueError` naming the row and the column) and adds the columns the trainer
reads: `nft_correct`, `nft_valid`, `nft_correct_rate` (`r_hat` of the row's group over the WHOLE dataset, valid rows
only, as `algorithm.loss.group_correct_rate` computes it online) and `nft_row` (the row's index, the key of cached
`pi_old` log-probabilities). Groups of one answer and all-right / all-wrong groups keep their online meaning: their
`r_hat` is 1 or 0 and NFT's gradient on them is 0 (`w = 1 - r_hat = 0`, or `x = 1` exactly).

Loaders: `load_judged` (jsonl, json, parquet, or a `datasets.Dataset`) and `from_eval_samples` (the per-problem files
`nft-trl eval` writes, `samples/<benchmark>.jsonl`). `load_judged` also reads the files' generation settings
(`<file>.settings.json`, written by `nft-trl generate`; all files must agree) into the dataset's `info.description`
(`nft_trl.offline.settings.generation_settings(dataset)` reads them back; the offline trainer checks them).
"""

from __future__ import annotations

import glob
import json
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from datasets import Dataset

from ..runtime.inputs import prompt_problem
from .settings import SETTINGS_SUFFIX, attach_settings, files_settings


logger = logging.getLogger(__name__)

#: Columns `prepare_judged` adds; a dataset holding them all is already prepared.
PREPARED_COLUMNS: tuple[str, ...] = ("nft_correct", "nft_valid", "nft_correct_rate", "nft_row")
VERDICT_COLUMNS: tuple[str, ...] = ("correct", "reward")


def is_judged(dataset: Any) -> bool:
    """Whether `dataset`'s columns are those of judged answers (a completion and a verdict, or already prepared)."""
    columns = set(getattr(dataset, "column_names", None) or ())
    return set(PREPARED_COLUMNS) <= columns or ("completion" in columns and bool(columns & set(VERDICT_COLUMNS)))


def _completion_problem(completion: Any) -> str | None:
    if isinstance(completion, str):
        return "the completion is empty" if not completion.strip() else None
    if isinstance(completion, list | tuple):
        if not completion:
            return "the completion is an empty list of messages"
        texts = [m.get("content") if isinstance(m, dict) else None for m in completion]
        if any(not isinstance(t, str) for t in texts):
            return "the completion's messages need a text 'content'"
        return "the completion is empty" if not "".join(texts).strip() else None
    if completion is None:
        return "the completion is missing"
    return f"the completion is a {type(completion).__name__}, not a string or a list of messages"


def _group_key(row: dict[str, Any], has_group: bool) -> str:
    if has_group and row.get("group") is not None:
        return f"group:{row['group']}"
    return "prompt:" + json.dumps(row["prompt"], sort_keys=True, ensure_ascii=False)


def _verdict(row: dict[str, Any], index: int, columns: set[str], threshold: float) -> tuple[bool, bool]:
    """`(correct, valid)` of one row."""
    if "correct" in columns:
        value = row.get("correct")
        if value is None:
            raise ValueError(
                f"Judged answers, row {index}, column 'correct': no verdict. Give every answer True or False, or use "
                "a 'reward' column instead (there None means 'cannot judge')."
            )
        if isinstance(value, bool) or value in (0, 1):
            return bool(value), True
        raise ValueError(
            f"Judged answers, row {index}, column 'correct': {value!r} is not a bool. Use True / False, or put scores "
            "in a 'reward' column (thresholded at correctness_threshold)."
        )
    value = row.get("reward")
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return False, False  # cannot judge: neither right nor wrong, as online
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isinf(value):
        raise ValueError(f"Judged answers, row {index}, column 'reward': {value!r} is not a finite number or None.")
    return value >= threshold, True


def _check_row(row: dict[str, Any], index: int) -> None:
    problem = prompt_problem(row.get("prompt"))
    if problem:
        raise ValueError(f"Judged answers, row {index}, column 'prompt': {problem}.")
    problem = _completion_problem(row.get("completion"))
    if problem and problem.endswith("is empty") and row.get("completion_ids"):
        problem = None  # a generated answer that is only an end-of-sequence token: its tokens are the answer
    if problem:
        raise ValueError(
            f"Judged answers, row {index}, column 'completion': {problem}. Every row is one answer; drop the rows "
            "without one."
        )
    ids, logps = row.get("completion_ids"), row.get("completion_logps")
    if ids is not None and (not ids or not all(isinstance(i, int) and i >= 0 for i in ids)):
        raise ValueError(f"Judged answers, row {index}, column 'completion_ids': not a non-empty list of token ids.")
    if logps is not None:
        if not logps or not all(isinstance(v, int | float) and v <= 0 and not math.isnan(v) for v in logps):
            raise ValueError(
                f"Judged answers, row {index}, column 'completion_logps': not a non-empty list of log-probabilities "
                "(numbers <= 0)."
            )
        if ids is not None and len(ids) != len(logps):
            raise ValueError(
                f"Judged answers, row {index}: 'completion_logps' has {len(logps)} values but 'completion_ids' has "
                f"{len(ids)} tokens; there must be one log-probability per completion token."
            )


def prepare_judged(dataset: Dataset, correctness_threshold: float = 0.5) -> Dataset:
    """Check judged answers and add `nft_correct`, `nft_valid`, `nft_correct_rate` and `nft_row` (module docstring).

    Raises `ValueError` naming the row and column for: no verdict column, a missing or malformed verdict, a missing
    or empty prompt or completion, malformed `completion_ids` / `completion_logps`, answers of one group that disagree
    on the gold `solution`.
    """
    columns = set(dataset.column_names)
    for name in ("prompt", "completion"):
        if name not in columns:
            raise ValueError(
                f"Judged answers need a {name!r} column (they have {sorted(columns)}): one row per answer with "
                "'prompt', 'completion' and a verdict ('correct' or 'reward'). See docs/offline.md."
            )
    if not columns & set(VERDICT_COLUMNS):
        raise ValueError(
            f"Judged answers need a verdict column, 'correct' (bool) or 'reward' (float), and have only "
            f"{sorted(columns)}. Judge the answers first (e.g. with nft_trl.math_verifier)."
        )
    if len(dataset) == 0:
        raise ValueError("The judged-answer dataset has no rows.")
    has_group, has_solution = "group" in columns, "solution" in columns
    correct, valid, keys = [], [], []
    gold: dict[str, tuple[int, Any]] = {}
    for index, row in enumerate(dataset):
        _check_row(row, index)
        right, scored = _verdict(row, index, columns, correctness_threshold)
        key = _group_key(row, has_group)
        if has_solution:
            first = gold.setdefault(key, (index, row.get("solution")))
            if first[1] != row.get("solution"):
                raise ValueError(
                    f"Judged answers, row {index}, column 'solution': {row.get('solution')!r} differs from "
                    f"{first[1]!r} of row {first[0]}, an answer to the same question. Fix the gold answer, or give "
                    "the two questions different 'group' ids."
                )
        correct.append(right)
        valid.append(scored)
        keys.append(key)

    hits: dict[str, int] = {}
    counts: dict[str, int] = {}
    for key, right, scored in zip(keys, correct, valid, strict=True):
        hits[key] = hits.get(key, 0) + int(right and scored)
        counts[key] = counts.get(key, 0) + int(scored)
    # r_hat of the whole group, valid rows only; a group with no scored answer gets 0 (as group_correct_rate).
    rate = [hits[key] / counts[key] if counts[key] else 0.0 for key in keys]
    stats = group_summary(hits, counts)
    logger.info(
        "Judged answers: %d answers in %d groups, correct rate %.1f%%, %.1f%% of the groups mixed (the others give "
        "NFT no gradient), %d unscored answers.",
        len(keys),
        stats["groups"],
        100 * stats["correct_rate"],
        100 * stats["mixed_group_frac"],
        len(keys) - sum(valid),
    )
    if stats["mixed_group_frac"] == 0:
        logger.warning(
            "No group of these judged answers has both a right and a wrong answer: NFT's gradient is zero on every "
            "row (with negative_weight=0 and prompt_weighting='none', RFT still learns from the right ones). Check "
            "the grouping ('group' column, or identical prompts) and the verdicts."
        )
    dataset = dataset.remove_columns([c for c in PREPARED_COLUMNS if c in columns])
    dataset = dataset.add_column("nft_correct", correct)
    dataset = dataset.add_column("nft_valid", valid)
    dataset = dataset.add_column("nft_correct_rate", rate)
    return dataset.add_column("nft_row", list(range(len(keys))))


def group_summary(hits: Mapping[str, int], counts: Mapping[str, int]) -> dict[str, float]:
    """Groups, their correct rate and the share of mixed groups (at least one right and one wrong scored answer)."""
    groups = len(counts)
    mixed = sum(1 for key, n in counts.items() if 0 < hits[key] < n)
    return {
        "groups": groups,
        "correct_rate": sum(hits.values()) / max(sum(counts.values()), 1),
        "mixed_group_frac": mixed / max(groups, 1),
    }


def judged_files(source: str | Path | Sequence[str | Path]) -> list[Path]:
    """The files of `source`: a file; a list of files; a glob (`answers.rank*.jsonl`); a comma-separated list; or the
    `--output` of `nft-trl generate` on several processes (`answers.jsonl` -> that file and its shards
    `answers.rank<r>.jsonl`)."""
    from .generate import output_files

    if isinstance(source, (str, Path)):
        items = [s.strip() for s in str(source).split(",") if s.strip()] if isinstance(source, str) else [source]
    else:
        items = list(source)
    files: list[Path] = []
    for item in items:
        text = str(item)
        if glob.has_magic(text):
            matched = sorted(Path(p) for p in glob.glob(text) if not p.endswith(SETTINGS_SUFFIX))
            if not matched:
                raise FileNotFoundError(f"No judged-answer file matches {text!r}.")
            files += matched
        elif Path(text).suffix in (".jsonl", ".json") and output_files(text):
            files += output_files(text)  # the file and its shards
        elif Path(text).is_file():
            files.append(Path(text))
        else:
            raise FileNotFoundError(
                f"No judged-answer file at {text} (nor shards {Path(text).stem}.rank<r>{Path(text).suffix})."
            )
    if not files:
        raise FileNotFoundError("No judged-answer file given.")
    return list(dict.fromkeys(files))


def _read_file(path: Path) -> Dataset:
    if path.suffix == ".parquet":
        return Dataset.from_parquet(str(path))
    if path.suffix in (".jsonl", ".json"):
        rows = []
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}, line {number}: not valid JSON ({err.msg}).") from None
        if not rows:
            raise ValueError(f"{path} holds no rows.")
        return Dataset.from_list(rows)
    raise ValueError(f"{path}: unknown judged-answer format {path.suffix!r}; use .jsonl, .json or .parquet.")


def load_judged(source: str | Path | Sequence[str | Path] | Dataset, correctness_threshold: float = 0.5) -> Dataset:
    """Judged answers from a `datasets.Dataset` or jsonl / json / parquet files (`judged_files`: one file, a list, a
    glob, or the output of `nft-trl generate` with its shards), checked and prepared as one dataset. The files'
    generation settings (`<file>.settings.json`; files that disagree are refused) are in the returned dataset's
    `info.description`: `nft_trl.offline.settings.generation_settings(dataset)`."""
    if isinstance(source, Dataset):
        return prepare_judged(source, correctness_threshold)
    files = judged_files(source)
    if len(files) > 1:
        logger.info("Judged answers from %d files: %s", len(files), ", ".join(map(str, files)))
    settings = files_settings(files)  # before reading the rows: files that disagree stop here
    datasets = [_read_file(path) for path in files]
    # Rows, not concatenate_datasets: a shard whose rewards are all None has another column type than the others.
    dataset = datasets[0] if len(datasets) == 1 else Dataset.from_list([row for d in datasets for row in d])
    return attach_settings(prepare_judged(dataset, correctness_threshold), settings)


def from_eval_samples(path: str | Path, problems: Mapping[str, str], correctness_threshold: float = 0.5) -> Dataset:
    """Judged answers from one `nft-trl eval` sample file (`<output_dir>/samples/<benchmark>.jsonl`).

    That file stores, per problem, the completions, their verifier scores, the gold answer and whether each was
    truncated, but not the problem text: pass it as `problems` (problem id -> problem text, e.g.
    `{p.id: p.problem for p in load_benchmark(name).problems}`). The prompt is rebuilt as eval built it, from the
    header's `prompt_template` and `instruction`: one user message for `chat`, the raw text for `raw`. Problems whose
    gold could not be parsed (scores `None`) are left out, with a log line. The group is the problem id.
    """
    path = Path(path)
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not records or records[0].get("type") != "header":
        raise ValueError(f"{path} is not an nft-trl eval sample file (no header line).")
    settings = records[0]["settings"]
    template, instruction = settings.get("prompt_template", "chat"), settings.get("instruction") or ""
    latest = {r["id"]: r for r in records[1:] if r.get("settings_hash") == records[0]["settings_hash"]}
    rows, unscored = [], 0
    for problem_id, record in latest.items():
        if problem_id not in problems:
            raise ValueError(f"{path}, problem {problem_id!r}: no problem text for it in `problems`.")
        if record.get("scores") is None:
            unscored += 1
            continue
        content = f"{problems[problem_id]}\n{instruction}" if instruction else problems[problem_id]
        prompt = content + "\n" if template == "raw" else [{"role": "user", "content": content}]
        truncated = record.get("truncated") or [False] * len(record["completions"])
        for text, score, cut in zip(record["completions"], record["scores"], truncated, strict=True):
            completion = text if template == "raw" else [{"role": "assistant", "content": text}]
            rows.append(
                {
                    "prompt": prompt,
                    "completion": completion,
                    "reward": float(score),
                    "solution": record["gold"],
                    "group": str(problem_id),
                    "truncated": bool(cut),
                }
            )
    if unscored:
        logger.info("%s: left out %d problem(s) whose gold answer the verifier could not parse.", path, unscored)
    if not rows:
        raise ValueError(f"{path} holds no scored answers.")
    return prepare_judged(Dataset.from_list(rows), correctness_threshold)


def stored_verdict(completions: list, nft_correct: list, nft_valid: list, **kwargs) -> list[float | None]:
    """The reward of offline NFT: the stored verdict (1.0 right, 0.0 wrong, None unscored); never needs a model."""
    return [(1.0 if right else 0.0) if scored else None for right, scored in zip(nft_correct, nft_valid, strict=True)]
