"""Worker process for :mod:`nft_trl.math_verifier`: runs math-verify's SymPy step where it can be killed.

This file is started as a script (``python -P _math_verify_worker.py TASK_FD RESULT_FD``), never imported from the
``nft_trl`` package, so a worker imports only the standard library and math-verify (SymPy, latex2sympy2_extended),
never torch or the trainer's ``__main__``. It is written to be safe to start from any thread of any process.

Two levels of process:

- the *supervisor* (this script's main process) imports math-verify once, then forks an *executor* and waits;
- the *executor* reads units of work from ``TASK_FD`` and writes verdicts to ``RESULT_FD``. Its first message is
  ``("ready", pid)`` so the parent can ``SIGKILL`` it when a verification exceeds its timeout. When an executor dies
  (killed, or crashed in SymPy/ANTLR), the supervisor forks a fresh one in a few milliseconds, with math-verify
  already imported. An executor exits cleanly (status 0) when the parent closes ``TASK_FD``; the supervisor then exits.

Protocol (pickled tuples through :class:`multiprocessing.connection.Connection`):

- parent -> executor: ``("unit", unit_id, gold_text, [answer_text, ...])``
- executor -> parent: ``("ready", pid)``, then per unit ``("gold", unit_id, parseable)``, one
  ``("verdict", unit_id, index, correct)`` per answer (skipped when the gold is not parseable), ``("done", unit_id)``.
"""

import logging
import os
import sys
from collections import OrderedDict
from multiprocessing.connection import Connection


# How many distinct parsed golds an executor keeps: a batch of 512 questions fits, and memory stays bounded.
GOLD_CACHE_SIZE = 1024


def _configs():
    from math_verify import ExprExtractionConfig, LatexExtractionConfig

    # Boxed answers first; without an anchor ("final answer is", "answer:") or a box nothing is extracted, so a
    # truncated completion is never graded by whatever expression it happened to end on.
    return [
        LatexExtractionConfig(boxed_match_priority=0, try_extract_without_anchor=False),
        ExprExtractionConfig(try_extract_without_anchor=False),
    ]


def parse_text(text: str, extraction_config) -> list:
    """Parse ``text`` with math-verify, its signal-based timeout disabled (the parent enforces time)."""
    from math_verify import parse

    return parse(text, extraction_config=extraction_config, parsing_timeout=None)


def verify_parsed(gold: list, answer: list) -> bool:
    """Compare two parsed answers with math-verify, its signal-based timeout disabled."""
    from math_verify import verify

    return bool(verify(gold, answer, timeout_seconds=None))


def _serve(tasks: Connection, results: Connection) -> None:
    extraction_config = _configs()
    golds: OrderedDict[str, list] = OrderedDict()
    results.send(("ready", os.getpid()))
    while True:
        try:
            message = tasks.recv()
        except (EOFError, OSError):
            return
        _, unit_id, gold_text, answers = message
        gold = golds.get(gold_text)
        if gold is None:
            try:
                gold = parse_text(gold_text, extraction_config)
            except Exception:  # math-verify swallows most errors; anything left means "unparseable"
                gold = []
            golds[gold_text] = gold
            if len(golds) > GOLD_CACHE_SIZE:
                golds.popitem(last=False)
        else:
            golds.move_to_end(gold_text)
        results.send(("gold", unit_id, bool(gold)))
        if gold:
            for index, answer_text in enumerate(answers):
                try:
                    correct = verify_parsed(gold, parse_text(answer_text, extraction_config))
                except Exception:
                    correct = False
                results.send(("verdict", unit_id, index, correct))
        results.send(("done", unit_id))


def main(task_fd: int, result_fd: int) -> None:
    # math-verify warns once per process that its own timeout is disabled: that is deliberate here.
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    import math_verify  # noqa: F401  (imported once in the supervisor, inherited by every forked executor)

    parent_pid = os.getppid()
    tasks = Connection(task_fd, readable=True, writable=False)
    results = Connection(result_fd, readable=False, writable=True)
    while True:
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                _serve(tasks, results)
            except OSError:
                pass  # the parent is gone (broken pipe): shut down
            except BaseException:
                code = 1  # anything else: the supervisor forks a fresh executor
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        if os.waitstatus_to_exitcode(status) == 0 or os.getppid() != parent_pid:
            return  # the parent closed the task pipe, or died: shut down


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]))
