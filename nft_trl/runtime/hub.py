"""Where a model comes from: a local folder, the Hugging Face cache, or the Hub, checked before anything loads.

A model argument that is neither a local folder nor a Hub model this machine can load would otherwise reach
transformers, which retries the Hub for tens of seconds and ends in a long traceback. `check_model_source` says it in
one sentence, before the trainer loads anything, with what to pass instead:

- a path that does not exist and cannot be a Hub id (`./my-model`, `a/b/c`): "the model folder ... does not exist";
- a Hub id that is not in the local cache while the Hub is off (`HF_HUB_OFFLINE=1`) or cannot be reached: a local
  folder, or the built-in model `nft_trl.embedded.EMBEDDED_MODEL`.

A Hub id that is cached is left to transformers (it loads from the cache), and so is one the Hub answers for, even
with an error status (a gated or misspelled repository gets transformers' own message).

The Hub probes here (`hub_offline`, `hub_unreachable`, `hub_unavailable`, `is_cached`, `dataset_is_cached`) are the
only ones: `nft-trl check` (`nft_trl.cli.environment`) asks them too, so the check before a launch and the trainer
agree.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from huggingface_hub import constants, get_session, try_to_load_from_cache
from huggingface_hub.utils import HFValidationError, validate_repo_id


#: Seconds the reachability probe waits for the Hub to answer (one request, no retries): as long as huggingface_hub
#: waits for a file's metadata by default (`HF_HUB_ETAG_TIMEOUT`), so a Hub slow enough to fail it would fail loading.
PROBE_TIMEOUT = 10.0
#: The variables that switch downloads from the Hub off (huggingface_hub and transformers read both).
OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
#: ... and for datasets, `datasets`' own one as well.
DATASETS_OFFLINE_VARIABLES = (*OFFLINE_VARIABLES, "HF_DATASETS_OFFLINE")
#: What to pass instead, in every message.
ALTERNATIVES = (
    "Pass a local folder instead (config.json, the weights and a tokenizer with a chat template, as save_pretrained "
    "writes them), or the built-in model: nft_trl.embedded.EMBEDDED_MODEL"
)


class ModelSourceError(OSError):
    """A model argument this machine cannot load: not a local folder, and not a Hub model it can reach or has cached."""


def hub_offline(variables: tuple[str, ...] = OFFLINE_VARIABLES) -> str | None:
    """Why downloads from the Hub are switched off (`"HF_HUB_OFFLINE=1"`), else `None`.

    Offline when either says so: the environment as it is now, which a process launched from here reads
    (`variables`; `DATASETS_OFFLINE_VARIABLES` for a dataset), or huggingface_hub's setting in this process, read
    from the environment once, at import (then the reason is `"HF_HUB_OFFLINE"`).
    """
    for variable in variables:
        value = os.environ.get(variable)
        if value is not None and value.strip().upper() in constants.ENV_VARS_TRUE_VALUES:
            return f"{variable}={value}"
    return "HF_HUB_OFFLINE" if constants.HF_HUB_OFFLINE else None


def hub_endpoint() -> str:
    """The Hub's address: `HF_ENDPOINT` as a process launched from here will read it, else huggingface_hub's."""
    return (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def hub_unreachable(timeout: float = PROBE_TIMEOUT) -> str | None:
    """Why `hub_endpoint()` cannot be reached (the connection error), or `None` when it answers one HEAD request
    within `timeout` seconds, whatever the status. Not cached: a network that comes back is seen at the next call.
    """
    try:
        get_session().head(hub_endpoint(), timeout=timeout)
    except Exception as error:  # no answer at all (DNS, refused, timeout, proxy, bad URL) means unreachable
        return f"{type(error).__name__}: {error}"
    return None


def hub_unavailable(variables: tuple[str, ...] = OFFLINE_VARIABLES) -> str | None:
    """Why nothing can be downloaded from the Hub, in a few words (`"HF_HUB_OFFLINE=1"`, `"<endpoint> did not answer
    within 10 s: <error>"`), else `None`: `hub_offline(variables)`, then `hub_unreachable()`."""
    offline = hub_offline(variables)
    if offline:
        return offline
    error = hub_unreachable()
    return None if error is None else f"{hub_endpoint()} did not answer within {PROBE_TIMEOUT:g} s: {error}"


def is_cached(repo_id: str, revision: str | None = None, cache_dir: str | os.PathLike | None = None) -> bool:
    """Whether the Hugging Face cache holds `repo_id`'s `config.json` at `revision` (default: main): what
    transformers reads first, offline too."""
    found = try_to_load_from_cache(repo_id, "config.json", cache_dir=cache_dir, revision=revision)
    return isinstance(found, str)


def dataset_is_cached(repo_id: str) -> bool:
    """Whether a download of the dataset `repo_id` is in the Hub cache, or a prepared copy in the `datasets` cache."""
    from datasets import config as datasets_config

    snapshots = Path(constants.HF_HUB_CACHE) / f"datasets--{repo_id.replace('/', '--')}" / "snapshots"
    prepared = Path(datasets_config.HF_DATASETS_CACHE) / repo_id.replace("/", "___")
    return (snapshots.is_dir() and any(snapshots.iterdir())) or prepared.is_dir()


def check_model_source(model: Any, model_init_kwargs: dict[str, Any] | None = None) -> Any:
    """`model` as the trainer should receive it (a path-like becomes a string); raises `ModelSourceError` when it
    names a model this machine cannot load. Models given as objects pass through unchecked.

    `model_init_kwargs` (the config's) supplies `revision` and `cache_dir`, as `from_pretrained` will use them.
    """
    if isinstance(model, os.PathLike):
        model = os.fspath(model)
    if not isinstance(model, str):
        return model
    if Path(model).expanduser().exists():
        return model
    try:
        validate_repo_id(model)
    except HFValidationError:
        raise ModelSourceError(
            f"The model folder {model} does not exist ({Path(model).expanduser().resolve()}), and {model!r} is not a "
            f"Hub id (owner/name). {ALTERNATIVES}."
        ) from None
    kwargs = model_init_kwargs or {}
    if is_cached(model, kwargs.get("revision"), kwargs.get("cache_dir")):
        return model
    if hub_offline():
        why = "offline mode is on (HF_HUB_OFFLINE), so nothing is downloaded"
    else:
        why = hub_unreachable()
        if why is None:
            return model
        why = f"{hub_endpoint()} cannot be reached ({why})"
    raise ModelSourceError(
        f"Cannot load the model {model!r}: it is not a local folder, it is not in the Hugging Face cache, and {why}. "
        f"{ALTERNATIVES}."
    )
