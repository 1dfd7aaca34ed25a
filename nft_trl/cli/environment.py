"""What a run needs from the machine it starts on: its local model and data, the Hub for Hub ids, vLLM.

`missing_model_folder` is the rule that tells a local model folder from a Hub id (also used by `nft-trl eval`);
`environment_problems` is what `nft-trl check` and `nft-trl train` report before launching, so that a run does not
fail after minutes of start-up (or after the model is loaded) on something this machine lacks: a Hub id that is
neither cached nor reachable (offline, `HF_HUB_OFFLINE=1`, or the Hub not answering one short request), a local
dataset file that does not exist, `use_vllm` without vLLM installed. Each message says what to pass instead.
The Hub probes are the trainer's own (`nft_trl.runtime.hub`).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

from ..runtime.hub import DATASETS_OFFLINE_VARIABLES, dataset_is_cached, hub_unavailable, is_cached
from .common import EMBEDDED


_DATA_SUFFIXES = (".parquet", ".jsonl", ".json", ".csv", ".arrow")


def _looks_local(name: str) -> bool:
    """A value read as a local path even when it does not exist (see `missing_model_folder`)."""
    parts = name.split("/")
    return (
        name.startswith((".", "/", "~"))
        or name.endswith("/")
        or "\\" in name
        or (os.sep != "/" and os.sep in name)
        or len(parts) > 2
        or (len(parts) == 2 and Path(parts[0]).expanduser().is_dir())
    )


def missing_model_folder(name_or_path: str) -> str | None:
    """The problem with a model argument that names a local folder which does not exist, else `None`.

    The rule that tells a local path from a Hub id: a value that exists is local; a value that does not is read as a
    local path when it starts with `.`, `/` or `~`, ends with `/`, holds a backslash or the OS path separator beyond
    one `owner/name` slash (two or more slashes), or when its first part is an existing folder (`outputs/ckpt`
    with `outputs/` present); anything else (`name` or `owner/name`, e.g. `Qwen/Qwen2.5-Math-7B`) is a Hub id.
    """
    path = Path(name_or_path).expanduser()
    if path.exists() or not _looks_local(name_or_path):
        return None
    return (
        f"the model folder {name_or_path} does not exist ({path.resolve()}). Give an existing checkpoint folder, "
        "or a Hub id of the form owner/name."
    )


def hub_model_id(name_or_path: str | None) -> str | None:
    """`name_or_path` when it is read as a Hub id (see `missing_model_folder`), else `None`."""
    if not name_or_path or Path(name_or_path).expanduser().exists() or _looks_local(name_or_path):
        return None
    return name_or_path


def hub_dataset_id(name_or_path: str | None) -> str | None:
    """`name_or_path` when it is read as a Hub id: not `embedded`, not an existing path, not a path-like value."""
    if not name_or_path or name_or_path == EMBEDDED or Path(name_or_path).expanduser().exists():
        return None
    if _looks_local(name_or_path) or name_or_path.lower().endswith(_DATA_SUFFIXES):
        return None
    return name_or_path


def environment_problems(script_args: Any, training_args: Any, model_args: Any) -> list[str]:
    """What this machine lacks for the run, one message each with what to pass instead (no model is loaded)."""
    problems = []
    model = hub_model_id(model_args.model_name_or_path)
    dataset_name = script_args.dataset_name
    dataset = hub_dataset_id(dataset_name)
    if getattr(training_args, "offline", False) and dataset_name and dataset_name != EMBEDDED:
        from nft_trl.offline.dataset import judged_files

        try:  # a file, the output of `nft-trl generate` on several processes (its shards), a glob or a list
            judged_files(dataset_name)
        except FileNotFoundError as error:
            problems.append(
                f"dataset_name: {error} offline: true trains on judged answers: write them with `nft-trl generate "
                f"--output {dataset_name}` first, or give an existing file."
            )
        dataset = None
    elif (
        dataset_name and dataset_name != EMBEDDED and dataset is None and not Path(dataset_name).expanduser().exists()
    ):
        problems.append(
            f"dataset_name: {dataset_name} does not exist ({Path(dataset_name).expanduser().resolve()}). Give an "
            "existing .parquet/.jsonl/.json/.csv file or folder, a Hub id (owner/name), or 'embedded'."
        )
    uncached_model = model is not None and not is_cached(model, getattr(model_args, "model_revision", None))
    uncached_dataset = dataset is not None and not dataset_is_cached(dataset)
    reason = hub_unavailable(DATASETS_OFFLINE_VARIABLES) if uncached_model or uncached_dataset else None
    if reason and uncached_model:
        problems.append(
            f"model_name_or_path {model!r} is a Hub id, not in the local cache, and the Hub cannot be reached "
            f"({reason}). Pass a local model folder (--model_name_or_path path/to/model), or 'embedded' for the "
            "model shipped with nft-trl (a CPU recipe: --config embedded/nft/config_cpu)."
        )
    if reason and uncached_dataset:
        problems.append(
            f"dataset_name {dataset!r} is a Hub id, not in the local cache, and the Hub cannot be reached ({reason}). "
            "Pass a local file (--dataset_name path/to/train.jsonl: .parquet, .jsonl, .json or .csv), a folder saved "
            "with save_to_disk, or 'embedded' for the embedded addition task."
        )
    if getattr(training_args, "use_vllm", False) and importlib.util.find_spec("vllm") is None:
        problems.append(
            "use_vllm is true but vLLM is not installed: pip install 'nft-trl[vllm]' (Linux with a GPU), or set "
            "--use_vllm false (generation with transformers: slower, nothing to install)."
        )
    return problems
