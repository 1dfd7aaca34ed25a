"""SIGKILL a process at random moments while it repairs a large torn sample file of `nft-trl eval`; tally what each
kill left behind.

    python tests/scripts/kill_sample_repair.py [--rows 20000] [--trials 40] [--seed 0] [--dir DIR]

Builds a sample file of `--rows` finished problems (about 10 kB each) whose last line is torn. Each trial restores that
torn file, starts a separate Python process that opens it with `SampleStore` (which repairs it), SIGKILLs that process
after a random delay between 0 and 1.3 times what an uninterrupted repair takes, and checks that the file is byte for
byte the torn file or the repaired one and that a fresh `SampleStore` reads back every finished row. One line per
trial, then a tally; the exit status is 1 if any trial lost a row. (The repairing processes are forked from one
process that imported the package once, so that a trial takes a second, not an import of torch.)

With PYTHONPATH pointing at another checkout, the same trials measure that checkout's `SampleStore`.
"""

import argparse
import hashlib
import json
import logging
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path


SETTINGS = {"benchmark": "kill-trials", "sampling": {"n": 4}}
FILLER = "Étape ∑ " * 300
BATCH = 1000


def zygote(path: Path) -> None:
    """Import once, then for every `go` on stdin fork a process that opens the store (the repair); reap it on the
    next line and report how it ended.

    The forked process prints `ready <pid>` just before the repair; the parent kills it by that pid.
    """
    from nft_trl.evaluation.store import SampleStore

    print("imported", flush=True)
    while sys.stdin.readline() == "go\n":
        pid = os.fork()
        if pid == 0:
            print(f"ready {os.getpid()}", flush=True)
            start = time.perf_counter()
            store = SampleStore(path, SETTINGS)
            print(f"repaired {len(store.records)} {time.perf_counter() - start:.3f}", flush=True)
            os._exit(0)
        sys.stdin.readline()  # reaped only when the parent says so: until then its pid cannot name another process
        _, status = os.waitpid(pid, 0)
        print(f"ended {os.waitstatus_to_exitcode(status)}", flush=True)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else "missing"


def build(path: Path, rows: int) -> tuple[bytes, bytes]:
    """The finished file and its torn version (half of one more line appended)."""
    from nft_trl.evaluation.store import SampleStore

    store = SampleStore(path, SETTINGS)
    for start in range(0, rows, BATCH):
        store.add(
            [{"id": str(i), "completions": [f"{FILLER}{i}"] * 4} for i in range(start, min(start + BATCH, rows))]
        )
    finished = path.read_bytes()
    extra = (json.dumps({"id": "torn", "completions": [FILLER] * 4, "settings_hash": store.hash}) + "\n").encode()
    torn = finished + extra[: len(extra) // 2 + 1]
    return finished, torn


class Repairer:
    """The zygote process; `run(delay)` forks one repair and SIGKILLs it after `delay` seconds (never, if `None`)."""

    def __init__(self, path: Path):
        self.process = subprocess.Popen(
            [sys.executable, __file__, "--zygote", str(path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert self.process.stdout.readline().strip() == "imported"

    def run(self, delay: float | None) -> tuple[int, int, list[str]]:
        """(pid, exit code, lines it printed) of one repair."""
        self.process.stdin.write("go\n")
        self.process.stdin.flush()
        first = self.process.stdout.readline().split()
        assert first[0] == "ready", first
        pid = int(first[1])
        if delay is not None:
            time.sleep(delay)
            os.kill(pid, signal.SIGKILL)  # alive or a zombie, it is still ours
        self.process.stdin.write("reap\n")
        self.process.stdin.flush()
        lines = []
        while not (line := self.process.stdout.readline()).startswith("ended"):
            lines.append(line.strip())
        return pid, int(line.split()[1]), lines

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait()


def leftovers(path: Path) -> list[Path]:
    return sorted(path.parent.glob(f".{path.name}.*.tmp"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=20000)
    parser.add_argument("--trials", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dir", default=None)
    parser.add_argument("--zygote", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.zygote:
        zygote(Path(args.zygote))
        return 0

    from nft_trl.evaluation.store import SampleStore

    logging.getLogger("nft_trl").setLevel(logging.ERROR)  # each reopening's repair warning: the trial line says it
    work = Path(args.dir or tempfile.mkdtemp(prefix="kill-sample-repair-"))
    path = work / "samples" / "bench.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    finished, torn = build(path, args.rows)
    old, repaired = hashlib.sha256(torn).hexdigest(), hashlib.sha256(finished).hexdigest()
    print(f"file: {len(torn) / 1e6:.1f} MB, {args.rows} finished rows and a torn line ({path})")

    def restore() -> None:
        for leftover in leftovers(path):
            leftover.unlink()
        path.write_bytes(torn)
        os.sync()

    repairer = Repairer(path)
    durations = []
    for _ in range(3):
        restore()
        _, code, lines = repairer.run(None)
        assert code == 0 and digest(path) == repaired, lines
        durations.append(float(lines[-1].split()[-1]))
    repair_s = statistics.median(durations)
    print(f"an uninterrupted repair takes {repair_s:.3f} s (median of 3); kills fall in [0, {1.3 * repair_s:.3f}] s")

    rng = random.Random(args.seed)
    tally: Counter = Counter()
    lost_trials = 0
    for trial in range(args.trials):
        restore()
        delay = rng.uniform(0, 1.3 * repair_s)
        pid, code, _ = repairer.run(delay)
        killed = code == -signal.SIGKILL
        state = {old: "the torn file", repaired: "the repaired file"}.get(digest(path), "SOMETHING ELSE")
        temporary = path.with_name(f".{path.name}.{pid}.tmp")
        copy = "none"
        if temporary.exists():
            size = temporary.stat().st_size
            copy = "complete" if size == len(finished) else f"partial ({size / 1e6:.1f} MB)"
        try:
            rows = len(SampleStore(path, SETTINGS).records)  # what a resumed eval starts from
        except ValueError:  # no header left: the resumed eval cannot even start
            rows = 0
        lost = args.rows - rows
        lost_trials += lost > 0 or state == "SOMETHING ELSE"
        outcome = f"{state}, temporary copy {copy.split(' ')[0]}" if killed else "finished before the kill"
        tally[outcome] += 1
        print(
            f"trial {trial:3d}: kill after {delay:.3f} s -> {'killed' if killed else 'exited'}; file is {state}; "
            f"temporary copy: {copy}; rows read back {rows}/{args.rows}, lost {lost}; "
            f"leftover copies after reopening: {len(leftovers(path))}"
        )
    repairer.close()
    print("tally:")
    for outcome, count in sorted(tally.items()):
        print(f"  {count:3d}  {outcome}")
    print(f"trials that lost a finished row: {lost_trials} of {args.trials}")
    if not args.dir:
        shutil.rmtree(work)
    return 1 if lost_trials else 0


if __name__ == "__main__":
    sys.exit(main())
