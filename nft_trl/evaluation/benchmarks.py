"""Benchmark loaders: local jsonl/parquet files or Hub datasets, normalised to (id, problem, gold answer).

Known benchmarks and where their gold answer lives:

| name | file | gold answer |
|---|---|---|
| aime24, aime25, amc23, math500 | `<name>.jsonl` | `answer` (floats such as `27.0` become `27`) |
| minerva | `minerva_math.jsonl` | the last `\\boxed{}` of `solution` (or `answer` in copies that have one) |
| olympiadbench | `olympiadbench.jsonl` | `final_answer` (a list; see `olympiad_gold`) |
| gsm8k | `gsm8k_test.jsonl` | the text after `#### ` in `answer` |

A benchmark is named on the command line as `name` (looked up as the file above in the benchmarks folder, else loaded
from its default Hub id), `name=path/to/file.jsonl`, `name=owner/dataset` or `name=owner/dataset:split`. An unknown
name is read with the generic rules (`problem` or `question`; `answer`, `final_answer` or `solution`) and a missing
column raises a `ValueError` that names it.

Problems that already end with the evaluation instruction (the MATH500 and AIME25 copies do) have it stripped, so the
prompt template adds it exactly once.

>>> problems = load_benchmark("aime24", data_dir="shared/data/benchmarks")  # doctest: +SKIP
>>> problems[0].answer
'204'
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from nft_trl.data import BOXED_INSTRUCTION
from nft_trl.rewards.answers import extract_last_boxed


logger = logging.getLogger(__name__)

BENCHMARKS_DIR_ENV = "NFT_TRL_BENCHMARKS_DIR"
HASH_CHUNK_BYTES = 1 << 20


@dataclass(frozen=True)
class BenchmarkSpec:
    """Where a known benchmark lives and how to read its gold answer.

    `answer_format` is one of `"answer"`, `"minerva"`, `"olympiadbench"`, `"gsm8k"` (see `gold_answer`).
    """

    name: str
    filename: str
    answer_format: str
    hub_id: str
    hub_split: str
    hub_config: str | None = None


# The Hub ids are used only when the local file is absent; pass `name=owner/dataset[:split]` to choose another copy.
KNOWN_BENCHMARKS: dict[str, BenchmarkSpec] = {
    spec.name: spec
    for spec in [
        BenchmarkSpec("aime24", "aime24.jsonl", "answer", "HuggingFaceH4/aime_2024", "train"),
        BenchmarkSpec("aime25", "aime25.jsonl", "answer", "math-ai/aime25", "test"),
        BenchmarkSpec("amc23", "amc23.jsonl", "answer", "math-ai/amc23", "test"),
        BenchmarkSpec("math500", "math500.jsonl", "answer", "HuggingFaceH4/MATH-500", "test"),
        BenchmarkSpec("minerva", "minerva_math.jsonl", "minerva", "math-ai/minervamath", "test"),
        BenchmarkSpec(
            "olympiadbench",
            "olympiadbench.jsonl",
            "olympiadbench",
            "Hothan/OlympiadBench",
            "train",
            "OE_TO_maths_en_COMP",
        ),
        BenchmarkSpec("gsm8k", "gsm8k_test.jsonl", "gsm8k", "openai/gsm8k", "test", "main"),
    ]
}
ALIASES = {"minerva_math": "minerva", "olympiad": "olympiadbench", "math-500": "math500"}
PAPER_BENCHMARKS = ["aime24", "aime25", "amc23", "math500", "minerva", "olympiadbench"]
PROBLEM_COLUMNS = ("problem", "question")
ID_COLUMNS = ("id", "idx", "unique_id")
GSM8K_ANSWER_MARKER = "#### "
MULTIPLE_ANSWER_SEPARATOR = ", "


@dataclass(frozen=True)
class Problem:
    """One benchmark item: a stable `id` (used to resume), the problem text and the gold answer string."""

    id: str
    problem: str
    answer: str


@dataclass
class Benchmark:
    """A loaded benchmark and its provenance (recorded in the evaluation JSON)."""

    name: str
    problems: list[Problem]
    source: str
    file_sha256: str | None
    content_sha256: str
    problems_sha256: str

    def provenance(self) -> dict[str, Any]:
        """Where the problems came from and their hashes, for the results JSON."""
        return {
            "source": self.source,
            "file_sha256": self.file_sha256,
            "content_sha256": self.content_sha256,
            "problems_sha256": self.problems_sha256,
            "num_problems": len(self.problems),
        }


def _to_text(value: Any) -> str:
    """Answers as strings; integral floats (AMC23 stores `27.0`) without their `.0`."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def olympiad_gold(final_answer: list[Any] | str, is_multiple_answer: bool | None) -> str:
    """OlympiadBench's gold: `final_answer` is a list of LaTeX strings wrapped in `$`.

    With `is_multiple_answer` the list elements are the parts of one answer (all solutions of an equation, ...), so they
    are joined with ", " in the given order. Without it the answer is a single value: the first element is used and
    any further elements (alternative forms in some copies) are logged and ignored.
    """
    parts = [final_answer] if isinstance(final_answer, str) else list(final_answer)
    parts = [_to_text(p).strip("$").strip() for p in parts]
    parts = [p for p in parts if p]
    if not parts:
        return ""
    if is_multiple_answer:
        return MULTIPLE_ANSWER_SEPARATOR.join(parts)
    if len(parts) > 1:
        logger.warning(
            "OlympiadBench row has %d answers but is_multiple_answer is false; using %r.", len(parts), parts[0]
        )
    return parts[0]


def _require(row: dict[str, Any], candidates: tuple[str, ...], what: str, benchmark: str) -> str:
    for column in candidates:
        if column in row and row[column] is not None:
            return column
    raise ValueError(
        f"Benchmark {benchmark!r}: no {what} column; expected one of {list(candidates)}, found {sorted(row)}. "
        "Rename the column or pass a file in one of the known formats."
    )


def gold_answer(row: dict[str, Any], answer_format: str, benchmark: str = "?") -> str:
    """The gold answer string of one row, following `answer_format`; see the module docstring."""
    if answer_format == "olympiadbench" or (answer_format == "auto" and "final_answer" in row):
        column = _require(row, ("final_answer", "answer"), "answer", benchmark)
        if column == "final_answer":
            return olympiad_gold(row[column], row.get("is_multiple_answer"))
        return _to_text(row[column])
    if answer_format == "minerva" or (answer_format == "auto" and "answer" not in row):
        column = _require(row, ("solution", "answer"), "answer", benchmark)
        if column == "solution":
            return (extract_last_boxed(str(row[column])) or "").strip()
        return _to_text(row[column])
    if answer_format == "gsm8k" or (
        answer_format == "auto" and GSM8K_ANSWER_MARKER in str(row.get("answer", "")).rsplit("\n", 1)[-1]
    ):
        text = str(row[_require(row, ("answer",), "answer", benchmark)])
        if GSM8K_ANSWER_MARKER not in text:
            return ""
        return text.rsplit(GSM8K_ANSWER_MARKER, 1)[1].strip().replace(",", "")
    if answer_format in ("answer", "auto"):
        return _to_text(row[_require(row, ("answer",), "answer", benchmark)])
    raise ValueError(f"Unknown answer_format {answer_format!r}; use answer, minerva, olympiadbench, gsm8k or auto.")


def strip_instruction(problem: str) -> str:
    """Remove a trailing copy of the evaluation instruction (the MATH500 and AIME25 files carry one)."""
    text = problem.rstrip()
    if text.endswith(BOXED_INSTRUCTION):
        text = text[: -len(BOXED_INSTRUCTION)].rstrip()
    return text


def normalize_rows(rows: list[dict[str, Any]], answer_format: str, benchmark: str) -> list[Problem]:
    """Turn raw rows into `Problem`s; ids come from `id`/`idx`/`unique_id` when unique, else the row index."""
    if not rows:
        raise ValueError(f"Benchmark {benchmark!r} is empty.")
    id_column = next((c for c in ID_COLUMNS if c in rows[0]), None)
    ids = [_to_text(r[id_column]) for r in rows] if id_column else []
    if len(set(ids)) != len(rows):
        ids = [str(i) for i in range(len(rows))]
    problems = []
    for row, problem_id in zip(rows, ids, strict=True):
        text = str(row[_require(row, PROBLEM_COLUMNS, "problem", benchmark)])
        if row.get("context"):  # OlympiadBench physics items put shared context apart from the question
            text = f"{row['context']}\n{text}"
        problems.append(Problem(problem_id, strip_instruction(text), gold_answer(row, answer_format, benchmark)))
    missing = sum(not p.answer for p in problems)
    if missing:
        logger.warning("Benchmark %r: %d of %d rows have no usable gold answer.", benchmark, missing, len(rows))
    return problems


def file_sha256(path: str | Path) -> str:
    """sha256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(HASH_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def content_sha256(problems: list[Problem], *, with_answers: bool = True) -> str:
    """Hash of the normalised problems: identifies what was evaluated whatever file or Hub copy it came from.

    `with_answers=False` hashes ids and problem texts only: what generation depends on (a corrected gold answer
    changes the scores, not the completions).
    """
    items = [asdict(p) if with_answers else {"id": p.id, "problem": p.problem} for p in problems]
    payload = json.dumps(items, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(payload.encode()).hexdigest()


def default_benchmarks_dir() -> Path | None:
    """`$NFT_TRL_BENCHMARKS_DIR` when set, else `None` (benchmarks then come from the Hub)."""
    value = os.environ.get(BENCHMARKS_DIR_ENV)
    return Path(value) if value else None


def _read_local(path: Path) -> list[dict[str, Any]]:
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        with open(path, encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]
    if suffix == ".json":
        data = json.loads(path.read_text(encoding="utf-8"))
        return data if isinstance(data, list) else data["data"]
    if suffix == ".parquet":
        import datasets

        return list(datasets.load_dataset("parquet", data_files=str(path), split="train"))
    raise ValueError(f"Unsupported benchmark file {path}; use .jsonl, .json or .parquet.")


def _read_hub(hub_id: str, split: str, config: str | None) -> list[dict[str, Any]]:
    import datasets

    return list(datasets.load_dataset(hub_id, config, split=split))


def load_benchmark(
    spec: str, *, data_dir: str | Path | None = None, limit: int | None = None, answer_format: str | None = None
) -> Benchmark:
    """Load one benchmark named as on the command line: `name`, `name=path` or `name=owner/dataset[:split]`.

    Args:
        spec: see above; a bare path to a file also works (its stem becomes the name).
        data_dir: folder holding the known files; defaults to `$NFT_TRL_BENCHMARKS_DIR`.
        limit: keep only the first `limit` problems (the hashes still describe the whole file).
        answer_format: override the gold-answer rule; defaults to the known benchmark's, else `"auto"`.
    """
    name, _, source = spec.partition("=")
    name, source = name.strip(), source.strip()
    name = ALIASES.get(name, name)
    if not source and (Path(name).suffix in (".jsonl", ".json", ".parquet") or Path(name).is_file()):
        name, source = Path(name).stem, name
    known = KNOWN_BENCHMARKS.get(name)
    answer_format = answer_format or (known.answer_format if known else "auto")
    data_dir = Path(data_dir) if data_dir is not None else default_benchmarks_dir()

    sha = None
    if source and Path(source).is_file():
        path = Path(source)
    elif not source and known and data_dir is not None and (data_dir / known.filename).is_file():
        path = data_dir / known.filename
    else:
        path = None
    if path is not None:
        rows, origin, sha = _read_local(path), str(path), file_sha256(path)
    elif source:
        if "/" not in source:
            raise FileNotFoundError(f"Benchmark {name!r}: {source!r} is neither a file nor a Hub id (owner/dataset).")
        hub_id, _, split = source.partition(":")
        rows, origin = _read_hub(hub_id, split or "test", None), f"hub:{source}"
    elif known:
        logger.info(
            "Benchmark %r not found locally (data_dir=%s); loading %s from the Hub.", name, data_dir, known.hub_id
        )
        try:
            rows = _read_hub(known.hub_id, known.hub_split, known.hub_config)
        except Exception as error:  # offline, unknown revision, ...: say where we looked first
            raise FileNotFoundError(
                f"Benchmark {name!r}: no {known.filename} in data_dir={data_dir} and loading {known.hub_id} from the "
                f"Hub failed ({error}). Pass --data_dir or set ${BENCHMARKS_DIR_ENV} to the folder of benchmark files."
            ) from error
        origin = f"hub:{known.hub_id}:{known.hub_split}"
    else:
        raise ValueError(
            f"Unknown benchmark {name!r}: use one of {sorted(KNOWN_BENCHMARKS)} or name=path/to/file.jsonl "
            "or name=owner/dataset[:split]."
        )
    problems = normalize_rows(rows, answer_format, name)
    digest, prompts_digest = content_sha256(problems), content_sha256(problems, with_answers=False)
    if limit is not None:
        problems = problems[:limit]
    return Benchmark(name, problems, origin, sha, content_sha256=digest, problems_sha256=prompts_digest)
