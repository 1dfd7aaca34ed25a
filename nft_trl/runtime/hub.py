"""Where a model comes from: a local folder, the Hugging Face cache, or the Hub, checked before anything loads.

A model argument that is neither a local folder nor a Hub model this machine can load would otherwise reach
transformers, which retries the Hub for tens of seconds and ends in a long traceback. `check_model_source` says it in
one sentence, before the trainer loads anything, with what to pass instead:

- a path that does not exist and cannot be a Hub id (`./my-model`, `a/b/c`): "the model folder ... does not exist";
- a Hub id that is not in the local cache while the Hub is off (`HF_HUB_OFFLINE=1`) or cannot be reached: a local
  folder, or the built-in model `nft_trl.embedded.EMBEDDED_MODEL`.

A Hub id that is cached is left to transformers (it loads from the cache), and so is one the Hub answers for, even
with an error status (a gated or misspelled repository gets transformers' own message).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from huggingface_hub import constants, get_session, try_to_load_from_cache
from huggingface_hub.utils import HFValidationError, validate_repo_id


#: Seconds the reachability probe waits for the Hub to answer (one request, no retries).
PROBE_TIMEOUT = 10.0
#: What to pass instead, in every message.
ALTERNATIVES = (
    "Pass a local folder instead (config.json, the weights and a tokenizer with a chat template, as save_pretrained "
    "writes them), or the built-in model: nft_trl.embedded.EMBEDDED_MODEL"
)


class ModelSourceError(OSError):
    """A model argument this machine cannot load: not a local folder, and not a Hub model it can reach or has cached."""


def hub_offline() -> bool:
    """Whether downloads from the Hub are switched off (`HF_HUB_OFFLINE`, or transformers' `TRANSFORMERS_OFFLINE`)."""
    if constants.HF_HUB_OFFLINE:
        return True
    return os.environ.get("TRANSFORMERS_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def hub_unreachable(timeout: float = PROBE_TIMEOUT) -> str | None:
    """Why the Hub cannot be reached (the connection error), or `None` when it answers (whatever the status)."""
    try:
        get_session().head(constants.ENDPOINT, timeout=timeout)
    except Exception as error:  # any failure to get an answer (DNS, refused, timeout, proxy) means unreachable
        return f"{type(error).__name__}: {error}"
    return None


def is_cached(repo_id: str, revision: str | None = None, cache_dir: str | os.PathLike | None = None) -> bool:
    """Whether the Hugging Face cache holds `repo_id`'s `config.json` at `revision` (default: main)."""
    found = try_to_load_from_cache(repo_id, "config.json", cache_dir=cache_dir, revision=revision)
    return isinstance(found, str)


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
        why = f"{constants.ENDPOINT} cannot be reached ({why})"
    raise ModelSourceError(
        f"Cannot load the model {model!r}: it is not a local folder, it is not in the Hugging Face cache, and {why}. "
        f"{ALTERNATIVES}."
    )
