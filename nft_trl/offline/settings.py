"""How judged answers were generated: `<file>.settings.json` beside each file `nft-trl generate` writes.

Offline NFT takes the stored `completion_logps` as `pi_old` and compares them with the current policy's
log-probabilities at the trainer's `temperature`: both must be at the same temperature, and an answer longer than
`max_completion_length` is cut. A resumed `generate` appends to a file answers that must be made as the earlier ones
were. So `generate_judged` records its settings next to each file it writes (an atomic write: a temporary file, then
`os.replace`):

- `model` (the name or path as given), `model_fingerprint` (for a local folder whose `*.safetensors` files total at
  most `FINGERPRINT_MAX_BYTES`: the first 16 hex digits of the SHA-256 of their names, sizes and bytes; else None);
- `num_answers`, `temperature`, `top_p`, `max_new_tokens`, `seed`, `reward` (the verdict reward's name);
- `backend` (`transformers` or `vllm server`) and `nft_trl_version`, informative only.

`ANSWER_SETTINGS` are those that change the answers: a resume with any of them different stops before generating
(`check_resume`), files loaded together must agree on them (`files_settings`), and `load_judged` carries them in the
dataset's `info.description` (`generation_settings(dataset)` reads them back). `check_generation_settings` is the
trainer's check: with stored `completion_logps`, the trainer's temperature must be the generation's, and no stored
answer may be longer than `max_completion_length`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc


logger = logging.getLogger(__name__)

SETTINGS_SUFFIX = ".settings.json"
#: Settings that change the answers (or their log-probabilities): a resume and files loaded together must agree.
ANSWER_SETTINGS: tuple[str, ...] = ("model", "num_answers", "temperature", "top_p", "max_new_tokens", "seed", "reward")
#: Local model folders up to this size get a content fingerprint (hashing them costs about a second per GiB).
FINGERPRINT_MAX_BYTES = 4 * 1024**3
#: The key of the settings in `datasets.Dataset.info.description` (a JSON object).
DESCRIPTION_KEY = "nft_trl_generation_settings"


def settings_path(path: str | Path) -> Path:
    """The settings file of the judged-answer file `path`: `<path>.settings.json`."""
    path = Path(path)
    return path.with_name(path.name + SETTINGS_SUFFIX)


def model_fingerprint(model: str | None) -> str | None:
    """First 16 hex digits of the SHA-256 of a local folder's `*.safetensors` files (names, sizes, bytes); None for a
    Hub id, a folder without them, or one larger than `FINGERPRINT_MAX_BYTES` (too slow to hash at every start)."""
    if not model or not Path(model).is_dir():
        return None
    files = sorted(Path(model).glob("*.safetensors"))
    if not files or sum(f.stat().st_size for f in files) > FINGERPRINT_MAX_BYTES:
        return None
    digest = hashlib.sha256()
    for file in files:
        digest.update(f"{file.name}\0{file.stat().st_size}\0".encode())
        with open(file, "rb") as f:
            while chunk := f.read(1 << 24):
                digest.update(chunk)
    return digest.hexdigest()[:16]


def reward_name(reward: Callable[..., Any]) -> str:
    """The name a reward is recorded under: its `name` attribute (nft-trl's verifiers), else its `__name__`."""
    return getattr(reward, "name", None) or getattr(reward, "__name__", None) or type(reward).__name__


def build_settings(
    *,
    model: str | None,
    num_answers: int,
    temperature: float,
    top_p: float,
    max_new_tokens: int,
    seed: int,
    reward: Callable[..., Any],
    backend: str,
    model_folder: str | None = None,
) -> dict[str, Any]:
    """The settings file's content for one `generate_judged` run (module docstring); the fingerprint is that of
    `model_folder` (where `model` was loaded from, when `model` is a name such as `embedded`), else of `model`."""
    from .. import __version__

    return {
        "model": model,
        "model_fingerprint": model_fingerprint(model_folder or model),
        "num_answers": int(num_answers),
        "temperature": float(temperature),
        "top_p": float(top_p),
        "max_new_tokens": int(max_new_tokens),
        "seed": int(seed),
        "reward": reward_name(reward),
        "backend": backend,
        "nft_trl_version": __version__,
    }


def write_settings(path: str | Path, settings: Mapping[str, Any]) -> Path:
    """Write the settings of the judged-answer file `path` atomically (a reader sees the old file or the new one)."""
    target = settings_path(path)
    tmp = target.with_name(target.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(json.dumps(dict(settings), indent=2) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, target)
    return target


def read_settings(path: str | Path) -> dict[str, Any] | None:
    """The recorded settings of the judged-answer file `path`, or None when it has no settings file."""
    target = settings_path(path)
    if not target.is_file():
        return None
    try:
        settings = json.loads(target.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{target}: not valid JSON ({err.msg}); delete it or restore it.") from None
    if not isinstance(settings, dict):
        raise ValueError(f"{target}: not a JSON object of generation settings; delete it or restore it.")
    return settings


def _same(key: str, a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    if key == "model" and a.get("model_fingerprint") and b.get("model_fingerprint"):
        return a["model_fingerprint"] == b["model_fingerprint"]  # the same weights, whatever path reached them
    if key == "model":
        return a.get("model") == b.get("model") and a.get("model_fingerprint") == b.get("model_fingerprint")
    x, y = a.get(key), b.get(key)
    if isinstance(x, float | int) and isinstance(y, float | int) and not isinstance(x, bool):
        return math.isclose(x, y, rel_tol=1e-9, abs_tol=0.0)
    return x == y


def _shown(key: str, settings: Mapping[str, Any]) -> str:
    value = repr(settings.get(key))
    if key == "model" and settings.get("model_fingerprint"):
        value += f" (weights {settings['model_fingerprint']})"
    return value


def differences(recorded: Mapping[str, Any], requested: Mapping[str, Any]) -> list[str]:
    """`"<setting>: <recorded> vs <requested>"` for each of `ANSWER_SETTINGS` that differs."""
    return [
        f"{key}: recorded {_shown(key, recorded)}, requested {_shown(key, requested)}"
        for key in ANSWER_SETTINGS
        if not _same(key, recorded, requested)
    ]


def has_rows(path: Path) -> bool:
    """Whether the file exists and holds a non-blank line."""
    if not path.is_file():
        return False
    with open(path, encoding="utf-8", errors="replace") as f:
        return any(line.strip() for line in f)


def check_resume(files: Sequence[Path], requested: Mapping[str, Any]) -> list[Path]:
    """Before `generate_judged` reads or writes anything: each of `files` (the output and its shards) that holds rows
    and a settings file must have been generated with `requested`'s `ANSWER_SETTINGS`, else a `ValueError` naming
    each differing setting with both values. Returns the files holding rows without a settings file (older files)."""
    unrecorded = []
    for path in files:
        if not has_rows(path):
            continue
        recorded = read_settings(path)
        if recorded is None:
            unrecorded.append(path)
            continue
        found = differences(recorded, requested)
        if found:
            raise ValueError(
                f"{path} holds answers generated with other settings than this run's "
                f"({settings_path(path).name}):\n  " + "\n  ".join(found) + "\nAppending would mix answers made "
                "differently (and a different num_answers drops its groups as incomplete). Rerun with the recorded "
                "settings to continue it, or write to another output file (--output)."
            )
    return unrecorded


def files_settings(files: Sequence[Path]) -> dict[str, Any] | None:
    """The settings shared by judged-answer files loaded together: None when none has a settings file; a
    `ValueError` when two disagree on one of `ANSWER_SETTINGS`. Files without one are named in a warning (an older
    `nft-trl generate`, or written by hand): the trainer's checks then cover only what the others record."""
    recorded = {path: read_settings(path) for path in files}
    known = {path: s for path, s in recorded.items() if s is not None}
    if not known:
        return None
    (first, settings), *others = known.items()
    for path, other in others:
        found = [
            f"{key}: {_shown(key, settings)} in {first.name}, {_shown(key, other)} in {path.name}"
            for key in ANSWER_SETTINGS
            if not _same(key, settings, other)
        ]
        if found:
            raise ValueError(
                "These judged-answer files were generated with different settings:\n  " + "\n  ".join(found) + "\n"
                "Their stored log-probabilities and answers are not from one policy: load and train on them "
                "separately, or regenerate one of them with the other's settings."
            )
    missing = [str(path) for path, s in recorded.items() if s is None]
    if missing:
        logger.warning(
            "No generation settings file for %s (an older nft-trl generate, or written by hand): the checks of the "
            "trainer's temperature and max_completion_length use the settings of %s only.",
            ", ".join(missing),
            first,
        )
    return settings


def attach_settings(dataset, settings: Mapping[str, Any] | None):
    """`dataset` with `settings` in its `info.description` (as JSON, under `DESCRIPTION_KEY`); kept by `select`,
    `add_column` and the other `datasets` operations."""
    if settings is not None:
        dataset.info.description = json.dumps({DESCRIPTION_KEY: dict(settings)})
    return dataset


def generation_settings(dataset) -> dict[str, Any] | None:
    """The generation settings `load_judged` attached to `dataset` (see `attach_settings`), or None."""
    info = getattr(dataset, "info", None)
    try:
        content = json.loads(getattr(info, "description", None) or "")
    except (json.JSONDecodeError, TypeError):
        return None  # no description, or another one (a Hub dataset's text)
    return content.get(DESCRIPTION_KEY) if isinstance(content, dict) else None


def _list_lengths(dataset, column: str) -> list[int | None]:
    """The length of each row's list in `column` (None where it has none), read from Arrow: no Python lists."""
    if column not in dataset.column_names:
        return [None] * len(dataset)
    values = dataset.with_format("arrow")[column]
    if pa.types.is_null(values.type):
        return [None] * len(dataset)
    return pc.list_value_length(values).to_pylist()


def check_generation_settings(dataset, temperature: float, max_completion_length: int | None) -> None:
    """Offline training on judged answers that carry their generation settings: with stored `completion_logps`
    (`pi_old` at the generation temperature) the trainer's `temperature` must be that temperature; and no stored
    answer may be longer than `max_completion_length` (the trainer would cut it and train on a prefix under the whole
    answer's verdict). A `ValueError` that says which setting to change to what; nothing without settings."""
    settings = generation_settings(dataset)
    if settings is None:
        return
    logp_lengths = _list_lengths(dataset, "completion_logps")
    stored = any(n is not None for n in logp_lengths)
    generated = settings.get("temperature")
    if generated is not None and not math.isclose(float(generated), float(temperature), rel_tol=1e-9):
        if stored:
            raise ValueError(
                f"The judged answers were generated at temperature {generated} and their completion_logps (pi_old) "
                f"are log-probabilities at that temperature, but the trainer's temperature is {temperature}, at "
                f"which it computes the current policy's: every likelihood ratio would be wrong. Set temperature to "
                f"{generated} (NFTConfig(temperature={generated}), --temperature {generated}), or drop the "
                "completion_logps column to have pi_old computed by the starting model at the trainer's temperature."
            )
        logger.warning(
            "The judged answers were generated at temperature %s and the trainer computes pi_old at %s: the ratio "
            "is taken against a policy that did not generate them. Set temperature to %s unless that is meant.",
            generated,
            temperature,
            generated,
        )
    if max_completion_length is None:
        return
    # Lengths known from the stored tokens or log-probabilities (a text-only row is not tokenised here).
    lengths = [
        i if i is not None else lp or 0
        for i, lp in zip(_list_lengths(dataset, "completion_ids"), logp_lengths, strict=True)
    ]
    longer = sum(n > max_completion_length for n in lengths)
    if longer:
        longest, generated_max = max(lengths), settings.get("max_new_tokens")
        needed = max(longest, generated_max or 0)
        raise ValueError(
            f"{longer} judged answer(s) are longer than the trainer's max_completion_length {max_completion_length} "
            f"(the longest: {longest} tokens; generated with max_new_tokens {generated_max}): the trainer would cut "
            f"them and train on a prefix under the whole answer's verdict. Set max_completion_length to {needed} "
            f"(--max_completion_length {needed}), or generate the answers with --max_new_tokens "
            f"{max_completion_length}."
        )
