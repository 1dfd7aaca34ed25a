"""The console line of each log: the few numbers that say whether a run learns, instead of a dict of 30 metrics.

transformers prints every log as a dict (`ProgressCallback` inside the progress bar, `PrinterCallback` with
`disable_tqdm`, a table in Jupyter); with TRL's metrics that is about 30 keys on one line. `NFTTrainer` swaps those
three callbacks for the compact ones here, which print, every `logging_steps`:

    step 10/40  reward 0.469  correct 46.9%  mixed groups 98%  length 6.6  entropy 0.173  grad_norm 0.662  lr 2.0e-04  2.9 s/step

Nothing else changes: every metric still reaches `report_to` (TensorBoard, W&B, ...) and `trainer.state.log_history`.
A log without these keys (another callback's) is printed in full, compactly.

The loss. NFT's loss is written with the ratio `R = pi_theta / pi_old` of each answer's likelihood under the policy
being trained to its likelihood under the policy that sampled it: `log R` on right answers, `log max((1 - r_hat R) /
(1 - r_hat), eps)` on wrong ones. When every batch is trained on right after it is generated (on-policy: TRL's default,
one optimizer step per generated batch), `R = 1` exactly, so with `negative_clip <= 1` and no KL term (`beta = 0`, the
default) the loss *value* is 0 at every step while its gradient is not (GRPO's on-policy loss is 0 the same way).
Then the line leaves the loss out and says so once, before the first step; otherwise it shows the loss.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

from transformers import PrinterCallback, ProgressCallback, TrainerCallback


#: The keys of a training log shown on the line, in order: (key, label, format). `mixed groups` is 1 - the share of
#: groups whose answers are all right or all wrong (those carry no signal).
LINE_KEYS: tuple[tuple[str, str, str], ...] = (
    ("loss", "loss", "{:.4f}"),
    ("reward", "reward", "{:.3f}"),
    ("nft/correct_rate", "correct", "{:.1%}"),
    ("nft/degenerate_group_frac", "mixed groups", "{:.0%}"),
    ("nft/dynamic_sampling/rounds", "sampling rounds", "{:.1f}"),
    ("completions/mean_length", "length", "{:.1f}"),
    ("completions/clipped_ratio", "truncated", "{:.0%}"),
    ("entropy", "entropy", "{:.3f}"),
    ("kl", "kl", "{:.4f}"),
    ("grad_norm", "grad_norm", "{:.3g}"),
    ("learning_rate", "lr", "{:.1e}"),
)
CONSTANT_LOSS_NOTE = (
    "On-policy: NFT's loss value is 0 at every step by construction (each answer's likelihood ratio to the policy "
    "that sampled it is 1); its gradient is not. The lines below show reward, correct and grad_norm instead."
)


def loss_is_constant(args: Any) -> bool:
    """Whether the loss value is 0 at every step: on-policy (TRL's own test: each generated batch is trained on within
    one optimizer step, so it computes no old log-probabilities), `negative_clip <= 1` and `beta == 0`. Never offline:
    there `pi_old` is the stored answers' generating policy, which the model leaves after its first step."""
    if getattr(args, "offline", False):
        return False
    generate_every = args.steps_per_generation * args.num_iterations
    on_policy = args.gradient_accumulation_steps % generate_every == 0
    return on_policy and args.beta == 0.0 and args.negative_clip <= 1.0


def _number(value: Any, spec: str) -> str:
    return spec.format(value) if isinstance(value, int | float) else str(value)


def format_log(logs: dict[str, Any], step: int, max_steps: int, show_loss: bool = True) -> str:
    """One line for one log of the Trainer: a training step, an evaluation (`eval_*` keys), the end of training
    (`train_runtime`), or anything else (every key)."""
    logs = {key: value for key, value in logs.items() if key != "total_flos"}
    if "train_runtime" in logs:
        seconds = logs["train_runtime"]
        steps = f"{step} step" if step == 1 else f"{step} steps"
        line = f"training done: {steps} in {seconds:.0f} s ({seconds / max(step, 1):.1f} s/step)"
        return line + (f", mean loss {logs['train_loss']:.4f}" if show_loss and "train_loss" in logs else "")
    prefix, head = ("eval_", "eval at step") if any(key.startswith("eval_") for key in logs) else ("", "step")
    parts = []
    for key, label, spec in LINE_KEYS:
        value = logs.get(prefix + key)
        if value is None or (key == "loss" and not show_loss) or (key == "completions/clipped_ratio" and not value):
            continue
        if key == "nft/degenerate_group_frac":
            value = 1.0 - value
        parts.append(f"{label} {_number(value, spec)}")
    if not parts:  # not a training or evaluation log: show all of it
        parts = [f"{key} {_number(value, '{:.4g}')}" for key, value in logs.items()]
    elif prefix + "step_time" in logs:
        parts.append(f"{logs[prefix + 'step_time']:.1f} s/step")
    return f"{head} {step}/{max_steps}  " + "  ".join(parts)


class _CompactLogs:
    """What the compact callbacks share: the line, and the note about a constant loss before the first step."""

    show_loss = True

    def _write(self, text: str) -> None:
        print(text)  # a display callback: printing is its job, as in transformers' PrinterCallback

    def on_train_begin(self, args, state, control, **kwargs):
        super().on_train_begin(args, state, control, **kwargs)
        self.show_loss = not loss_is_constant(args)
        if state.is_world_process_zero and not self.show_loss:
            self._write(CONSTANT_LOSS_NOTE)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            self._write(format_log(logs, state.global_step, state.max_steps, self.show_loss))


class CompactProgressCallback(_CompactLogs, ProgressCallback):
    """transformers' progress bar, with `format_log`'s line in place of the metrics dict."""

    def _write(self, text: str) -> None:
        if self.training_bar is not None:
            self.training_bar.write(text)
        else:
            print(text)


class CompactPrinterCallback(_CompactLogs, PrinterCallback):
    """transformers' `PrinterCallback` (used with `disable_tqdm=True`), printing `format_log`'s line."""


def _notebook_callbacks() -> dict[type, type]:
    """transformers' Jupyter progress table, with the line's values as its columns (only when in Jupyter)."""
    from transformers.utils.notebook import NotebookProgressCallback

    class CompactNotebookProgressCallback(_CompactLogs, NotebookProgressCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            super().on_train_begin(args, state, control, **kwargs)
            if args.eval_strategy == "no":
                self.training_tracker.inner_table = None  # the columns come from the first line, not "Training Loss"

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not (state.is_world_process_zero and logs) or self.training_tracker is None:
                return
            if "train_runtime" in logs or any(key.startswith("eval_") for key in logs):
                return  # the end of training and evaluations have their own rows in this display
            values = {"Step": state.global_step}
            for key, label, spec in LINE_KEYS:
                if key in logs and (key != "loss" or self.show_loss):
                    value = 1.0 - logs[key] if key == "nft/degenerate_group_frac" else logs[key]
                    values[label] = _number(value, spec)
            self.training_tracker.write_line(values)

    return {NotebookProgressCallback: CompactNotebookProgressCallback}


class _DropMessage(logging.Filter):
    def __init__(self, prefix: str):
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefix)


def quiet_third_party_noise() -> None:
    """Silence, by their exact text, the warnings that libraries print under `NFTTrainer` and that its user cannot
    act on (nothing in their own code or config causes them)."""
    # TRL 1.16 calls transformers 5's deprecated names around every generation (`is_gradient_checkpointing`, and with
    # checkpointing on, `gradient_checkpointing_disable` / `_enable`).
    warnings.filterwarnings(
        "ignore",
        message=r"`(is_gradient_checkpointing|gradient_checkpointing_enable|gradient_checkpointing_disable)` is "
        "deprecated",
        category=FutureWarning,
    )
    # accelerate imports DeepSpeed, when installed, to unwrap the model; on a machine without a GPU, DeepSpeed's import
    # then warns "Setting accelerator to CPU. If you have GPU or other accelerator, we were unable to detect it."
    deepspeed_logger = logging.getLogger("DeepSpeed")
    if not any(isinstance(existing, _DropMessage) for existing in deepspeed_logger.filters):
        deepspeed_logger.addFilter(_DropMessage("Setting accelerator to CPU."))


def use_compact_logs(trainer: Any) -> None:
    """Replace, in place, the trainer's transformers progress callback (bar, printer or Jupyter table) by its compact
    counterpart. A subclass of them (a user's own) is kept as it is."""
    replacements: dict[type, type] = {
        ProgressCallback: CompactProgressCallback,
        PrinterCallback: CompactPrinterCallback,
    }
    callbacks: list[TrainerCallback] = trainer.callback_handler.callbacks
    if any(type(callback).__name__ == "NotebookProgressCallback" for callback in callbacks):
        replacements.update(_notebook_callbacks())
    for index, callback in enumerate(callbacks):
        compact = replacements.get(type(callback))
        if compact is not None:
            callbacks[index] = compact()
