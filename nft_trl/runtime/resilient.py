"""`ResilientTrainerMixin`: crash-consistent checkpoints, resume from the newest complete one, and preemption.

Mixed into a `transformers.Trainer` subclass ahead of it (`class NFTTrainer(ResilientTrainerMixin, GRPOTrainer)`), it
wraps two methods with `super()`:

- `_save_checkpoint`: transformers' save runs with rotation held back; then the subclass's own state
  (`_save_run_state`), a barrier (so every process's shards are on disk, e.g. DeepSpeed's), the completion marker
  (`runtime.checkpoints.mark_complete`) and only then the rotation of old checkpoints. A save that fails (a full disk,
  a file-size limit) removes its partial folder and raises `CheckpointSaveError` naming the checkpoint that is still
  complete; the previous checkpoints are untouched because nothing was rotated yet.
- `train`: `resume_from_checkpoint=True` (or `"true"`) resumes from the newest *complete* checkpoint and names the
  incomplete ones it skipped; a folder passed explicitly must be complete. SIGTERM / SIGINT are handled as
  `runtime.preemption` describes: a checkpoint at the end of the current step, then `SystemExit(128 + signal)`.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
from pathlib import Path

import torch
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from .checkpoints import (
    MARKER,
    incomplete_reason,
    list_checkpoints,
    mark_complete,
    newest_complete,
    remove_checkpoint,
    rotate,
)
from .preemption import PreemptionCallback, PreemptionHandler, exit_code


logger = logging.getLogger(__name__)

_DISK_ERRNOS = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)
# How torch.save's zip writer reports a failed write (it raises RuntimeError, not OSError).
_TORCH_WRITE_ERRORS = ("inline_container", "PytorchStreamWriter", "file write failed")


class CheckpointSaveError(RuntimeError):
    """A checkpoint could not be written; the message names the newest complete one, which is intact."""


def resolve_resume(output_dir: str, resume: str | bool | None) -> str | None:
    """The checkpoint folder to resume from (see `ResilientTrainerMixin.train`), or None to start fresh."""
    if isinstance(resume, str) and resume.strip().lower() in ("true", "false"):
        resume = resume.strip().lower() == "true"
    if resume is None or resume is False:
        return None
    if resume is True:
        found, skipped = newest_complete(output_dir)
        if skipped:
            logger.warning(
                "Skipping %d incomplete checkpoint(s) in %s: %s.",
                len(skipped),
                output_dir,
                "; ".join(str(s) for s in skipped),
            )
        if found is None:
            what = f"only incomplete ones ({', '.join(s.path.name for s in skipped)})" if skipped else "none"
            raise ValueError(
                f"resume_from_checkpoint=True found no complete checkpoint in {output_dir} ({what}). Start without "
                "resume_from_checkpoint, or pass the folder of a complete checkpoint."
            )
        logger.info("Resuming from %s, the newest complete checkpoint.", found)
        return str(found)
    path = Path(resume)
    if not path.is_dir():
        raise FileNotFoundError(f"resume_from_checkpoint={str(resume)!r}: no such folder.")
    reason = incomplete_reason(path)
    if reason is None:
        return str(path)
    if not (path / MARKER).exists() and (path / "trainer_state.json").exists():
        logger.warning(
            "%s has no %s (written by an older nft-trl, or its save was interrupted after the trainer state); "
            "resuming from it as asked.",
            path,
            MARKER,
        )
        return str(path)
    newest, _ = newest_complete(path.parent)
    hint = f" The newest complete checkpoint there is {newest}." if newest is not None else ""
    raise ValueError(f"{path} is not a complete checkpoint: {reason}.{hint}")


class ResilientTrainerMixin:
    """See the module docstring. Subclasses write their own checkpoint state in `_save_run_state`."""

    def _save_run_state(self, checkpoint_dir: str) -> None:
        """Write the subclass's own state into `checkpoint_dir` (main process only), before the marker."""

    # ------------------------------------------------------------------------------------------------- checkpoints
    def _save_checkpoint(self, model, trial):
        run_dir = self._get_output_dir(trial=trial)
        folder = os.path.join(run_dir, f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
        if self.args.should_save and os.path.isdir(folder):
            remove_checkpoint(folder)  # the leftover of an interrupted save at this very step
        self.accelerator.wait_for_everyone()
        limit = self.args.save_total_limit
        self.args.save_total_limit = None  # rotate only once the new checkpoint is complete
        try:
            super()._save_checkpoint(model, trial)
            if self.args.should_save:
                self._save_run_state(folder)
        except Exception as err:
            raise self._save_failed(run_dir, folder, err) from err
        finally:
            self.args.save_total_limit = limit
        self.accelerator.wait_for_everyone()  # every process's files (e.g. DeepSpeed shards) are written
        if self.args.should_save:
            try:
                mark_complete(folder, step=self.state.global_step)
            except OSError as err:
                raise self._save_failed(run_dir, folder, err) from err
            for deleted in rotate(run_dir, limit, protect=(self.state.best_model_checkpoint,)):
                logger.info("Deleted old checkpoint %s (save_total_limit=%s).", deleted, limit)

    def _save_failed(self, run_dir: str, folder: str, err: BaseException) -> CheckpointSaveError:
        if self.args.should_save:
            remove_checkpoint(folder)
        previous, _ = newest_complete(run_dir)
        full = isinstance(err, OSError) and err.errno in _DISK_ERRNOS
        full = full or any(hint in str(err) for hint in _TORCH_WRITE_ERRORS)
        cause = " A write failed: the disk is probably full (or a file-size or quota limit was hit)." if full else ""
        kept = (
            f"The newest complete checkpoint, {previous}, is intact: free space, then resume with "
            "resume_from_checkpoint=True."
            if previous is not None
            else "There is no earlier complete checkpoint."
        )
        return CheckpointSaveError(
            f"Saving checkpoint {folder} failed: {type(err).__name__}: {err}.{cause} The partial folder was removed. "
            f"{kept}"
        )

    # ------------------------------------------------------------------------------------------- train and signals
    def train(self, resume_from_checkpoint=None, trial=None, ignore_keys_for_eval=None, **kwargs):
        resume = resolve_resume(self.args.output_dir, resume_from_checkpoint)
        handler = PreemptionHandler()
        handler.install()
        callback = PreemptionCallback(handler, self._any_process_asks_to_stop)
        self.add_callback(callback)
        try:
            result = super().train(
                resume_from_checkpoint=resume, trial=trial, ignore_keys_for_eval=ignore_keys_for_eval, **kwargs
            )
        finally:
            handler.restore()
            self.remove_callback(callback)
        if callback.stopped_at is not None:
            self._exit_preempted(callback.signum, callback.stopped_at)
        return result

    def _any_process_asks_to_stop(self, signum: int) -> int:
        """The largest signal number received by any process since training started (0: none)."""
        if self.accelerator.num_processes == 1:
            return signum
        flag = torch.tensor([float(signum)], device=self.accelerator.device)
        return int(self.accelerator.gather(flag).max().item())

    def _exit_preempted(self, signum: int, step: int) -> None:
        name = signal.Signals(signum).name
        checkpoints = list_checkpoints(self.args.output_dir)
        saved = checkpoints[-1] if checkpoints else None
        if self.accelerator.is_main_process:
            logger.warning(
                "Stopped by %s after step %d of %d; checkpoint saved: %s. To resume, run the same command with "
                "--resume_from_checkpoint true (in Python: trainer.train(resume_from_checkpoint=True)).",
                name,
                step,
                self.state.max_steps,
                saved,
            )
        raise SystemExit(exit_code(signum))
