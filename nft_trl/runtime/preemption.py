"""Preemption: SIGTERM or SIGINT ends a run at the next optimizer-step boundary with a checkpoint, not a lost run.

A cluster scheduler sends SIGTERM some seconds before it kills a job (Slurm's `KillWait`, 30 s by default; torchrun
forwards it to every worker and kills them 30 s later); Ctrl-C sends SIGINT. With the handler installed:

- the first signal only sets a flag (and says so once): the current optimizer step finishes;
- at the end of that step every process agrees (one tiny all-reduce, so a signal seen by one rank stops all of them at
  the same step), the trainer saves a checkpoint and stops, prints how to resume and exits with 128 + the signal's
  number (143 for SIGTERM, 130 for SIGINT);
- a second signal exits at once (`os._exit`), for a user who does not want to wait.

Handlers can only be installed from the main thread; elsewhere (a trainer run from a worker thread) nothing is
installed and the process keeps its own handling. A signal the process ignores (`nohup`, SIGINT in a background job
of a non-interactive shell) stays ignored. The previous handlers are restored when training ends.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from types import FrameType

from transformers import TrainerCallback


logger = logging.getLogger(__name__)

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class PreemptionHandler:
    """Turns SIGTERM / SIGINT into a request to stop after the current step (see the module docstring)."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def install(self) -> bool:
        """Install the handlers; False (and nothing installed) off the main thread."""
        if threading.current_thread() is not threading.main_thread():
            return False
        for signum in SIGNALS:
            if signal.getsignal(signum) is signal.SIG_IGN:
                continue  # ignored on purpose (nohup, a background job of a script): keep it so
            self._previous[signum] = signal.signal(signum, self._handle)
        return True

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.signum is not None:
            sys.stderr.write(f"\n{name} received again: exiting now, without saving.\n")
            sys.stderr.flush()
            os._exit(128 + signum)
        self.signum = signum
        # Writing from a handler: keep it to one short, unbuffered line (logging may hold a lock here).
        sys.stderr.write(
            f"\n{name} received: finishing the current optimizer step, then saving a checkpoint and stopping. "
            f"Send {name} again to exit at once without saving.\n"
        )
        sys.stderr.flush()


class PreemptionCallback(TrainerCallback):
    """At each step's end, asks every process whether a stop was requested; if so, save now and stop."""

    def __init__(self, handler: PreemptionHandler, agree) -> None:
        self.handler = handler
        # (local signal number or 0) -> the largest over all processes: non-zero everywhere when any process asks
        self.agree = agree
        self.stopped_at: int | None = None
        self.signum: int | None = None

    def on_step_end(self, args, state, control, **kwargs):
        signum = self.agree(self.handler.signum or 0)
        if signum:
            control.should_save = True
            control.should_training_stop = True
            self.stopped_at, self.signum = state.global_step, signum
        return control


def exit_code(signum: int) -> int:
    return 128 + signum
