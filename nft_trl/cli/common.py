"""What every `nft-trl` sub-command shares and that imports nothing heavy: the exit code of argparse's `SystemExit`
and the model name `embedded`.

Kept apart from `arguments` (which imports TRL's config classes, seconds of start-up) so that `nft-trl eval` and
`nft-trl generate` start without TRL's trainer stack.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


#: The name that stands for the embedded model (`model_name_or_path`, `--model`) or task (`dataset_name`, `--dataset`).
EMBEDDED = "embedded"


def exit_code(exit_: SystemExit) -> int:
    """The exit code an argparse `SystemExit` carries (`--help`: 0, a usage error: 2, a message: 1)."""
    return exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)


def resolve_embedded_model(model_args: Any) -> None:
    """`model_name_or_path: embedded` -> the folder of the embedded model (shipped with the package), in place; a
    folder named `embedded` in the working directory is read as that folder instead."""
    if getattr(model_args, "model_name_or_path", None) == EMBEDDED and not Path(EMBEDDED).exists():
        from nft_trl.embedded import embedded_path

        model_args.model_name_or_path = str(embedded_path())
