"""`nft-trl eval`'s sample files under real faults: no finished row is ever lost.

The results file of a benchmark is appended to, never rewritten in place. A file torn by an interrupted write is
repaired through a temporary copy, fsync and an atomic rename; here a forked process is SIGKILLed at each step of that
repair (halfway through the copy, before its fsync, before the rename, after the rename), and afterwards the file is
byte for byte either the old torn file or the repaired one, and a resumed evaluation generates only the problems that
never finished. An append cut short by a file-size limit (RLIMIT_FSIZE in a child) leaves no partial line behind.

Random-moment kills of a separate process on a large file: tests/scripts/kill_sample_repair.py.
"""

import json
import multiprocessing
import os
import resource
import signal
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from nft_trl.evaluation import evaluate
from nft_trl.evaluation import store as runner
from nft_trl.evaluation.generation import Sample


N_PROBLEMS = 400
N_FINISHED = 300
BATCH = 50  # problems per append
FILLER = "Étape ∑ " * 150  # multi-byte text: a torn line can end inside a character
HALFWAY = "halfway through the temporary copy"
BEFORE_FSYNC = "before syncing the temporary copy"
BEFORE_RENAME = "before the rename"
AFTER_RENAME = "after the rename, before syncing the folder"


def gold_checker(completions, solution, **kwargs):
    """A cheap deterministic verifier (the math verifier is not what is under test)."""
    return [float(c.endswith(f"\\boxed{{{s}}}")) for c, s in zip(completions, solution, strict=True)]


class LongAnswers:
    """Completions of about 1.3 kB each; raises `KeyboardInterrupt` once `stop_after` problems were generated."""

    name = "long-answers"
    batch_size = BATCH

    def __init__(self, stop_after: int | None = None):
        self.stop_after = stop_after
        self.prompts: list[str] = []

    def generate(self, prompts, sampling, seeds, **kwargs):
        if self.stop_after is not None and len(self.prompts) >= self.stop_after:
            raise KeyboardInterrupt("interrupted")
        self.prompts.extend(prompts)
        return [
            [Sample(f"{FILLER}{j} \\boxed{{{seed % 3}}}", num_tokens=3, truncated=False) for j in range(sampling.n)]
            for seed in seeds
        ]


@pytest.fixture
def torn(tmp_path, tiny_tokenizer):
    """An evaluation interrupted after 300 of 400 problems, its sample file ending in half a line."""
    bench = tmp_path / "toy.jsonl"
    bench.write_text(
        "".join(json.dumps({"problem": f"What is {i} + {i}?", "answer": str(2 * i)}) + "\n" for i in range(N_PROBLEMS))
    )
    kwargs = {
        "benchmarks": [f"toy={bench}"],
        "n": 4,
        "output_dir": tmp_path / "out",
        "tokenizer": tiny_tokenizer,
        "verifier": gold_checker,
        "batch_size": BATCH,
    }
    with pytest.raises(KeyboardInterrupt):
        evaluate("m", generator=LongAnswers(stop_after=N_FINISHED), **kwargs)
    samples = tmp_path / "out" / "samples" / "toy.jsonl"
    finished = samples.read_bytes()
    assert finished.count(b"\n") == 1 + N_FINISHED
    last = finished.rstrip(b"\n").rsplit(b"\n", 1)[1]
    cut = last.index("Étape".encode()) + 1  # inside the two bytes of "É"
    with open(samples, "ab") as f:
        f.write(last[:cut])
    return SimpleNamespace(samples=samples, finished=finished, torn=samples.read_bytes(), kwargs=kwargs)


def leftovers(samples: Path) -> list[Path]:
    return sorted(samples.parent.glob(f".{samples.name}.*.tmp"))


def resume_loses_nothing(torn) -> None:
    """Resuming generates exactly the 100 problems that never finished; the 300 finished rows are kept as they were."""
    resumed = LongAnswers()
    results = evaluate("m", generator=resumed, **torn.kwargs)
    assert len(resumed.prompts) == N_PROBLEMS - N_FINISHED
    assert all(f"What is {i} + {i}?" in p for i, p in zip(range(N_FINISHED, N_PROBLEMS), resumed.prompts, strict=True))
    assert [p["id"] for p in results["benchmarks"]["toy"]["per_problem"]] == [str(i) for i in range(N_PROBLEMS)]
    final = torn.samples.read_bytes()
    assert final.startswith(torn.finished) and final.count(b"\n") == 1 + N_PROBLEMS
    assert all(json.loads(line) for line in final.splitlines())
    assert leftovers(torn.samples) == []


def _repair_until(point: str, path: Path, conn) -> None:
    """In a forked child: open the store, which repairs the torn file, and wait at `point` to be killed."""

    def pause():
        conn.send(point)
        time.sleep(600)

    real_fsync, real_replace, real_rewrite = os.fsync, os.replace, runner.replace_atomically
    if point == HALFWAY:

        def rewrite(target, chunks):
            chunks = list(chunks)

            def paced():
                for i, chunk in enumerate(chunks):
                    if i == len(chunks) // 2:
                        pause()
                    yield chunk

            real_rewrite(target, paced())

        runner.replace_atomically = rewrite
    elif point == BEFORE_FSYNC:
        os.fsync = lambda fd: (pause(), real_fsync(fd))
    elif point == BEFORE_RENAME:
        os.replace = lambda src, dst: (pause(), real_replace(src, dst))
    elif point == AFTER_RENAME:
        os.replace = lambda src, dst: (real_replace(src, dst), pause())
    header = json.loads(path.read_bytes().split(b"\n", 1)[0])
    runner.SampleStore(path, header["settings"])
    conn.send("finished without a pause")


@pytest.mark.parametrize("point", [HALFWAY, BEFORE_FSYNC, BEFORE_RENAME, AFTER_RENAME])
def test_sigkill_inside_the_repair_loses_no_finished_row(torn, point):
    ctx = multiprocessing.get_context("fork")
    receive, send = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_repair_until, args=(point, torn.samples, send))
    child.start()
    assert receive.poll(120), "the child never reached the pause"
    assert receive.recv() == point
    os.kill(child.pid, signal.SIGKILL)
    child.join()
    assert child.exitcode == -signal.SIGKILL

    temporary = torn.samples.with_name(f".{torn.samples.name}.{child.pid}.tmp")
    if point == AFTER_RENAME:
        assert torn.samples.read_bytes() == torn.finished and leftovers(torn.samples) == []
    else:
        assert torn.samples.read_bytes() == torn.torn  # untouched
        assert leftovers(torn.samples) == [temporary]
        size = temporary.stat().st_size
        assert (0 < size < len(torn.finished)) if point == HALFWAY else size == len(torn.finished)
    resume_loses_nothing(torn)


def test_repair_drops_only_the_torn_line(torn, caplog):
    header = json.loads(torn.finished.split(b"\n", 1)[0])
    store = runner.SampleStore(torn.samples, header["settings"])
    assert len(store.records) == N_FINISHED and "dropping 1 unreadable line(s)" in caplog.text
    assert torn.samples.read_bytes() == torn.finished and leftovers(torn.samples) == []
    resume_loses_nothing(torn)


def _append_over_the_limit(torn, conn) -> None:
    """In a forked child: resume with a file-size limit 100 kB above the current size (less than one batch)."""
    limit = torn.samples.stat().st_size + 100_000
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    try:
        evaluate("m", generator=LongAnswers(), **torn.kwargs)
        conn.send("no error")
    except OSError as error:
        conn.send(f"{type(error).__name__}: {error.strerror}")


def test_append_cut_short_by_a_file_size_limit_leaves_no_partial_line(torn):
    header = json.loads(torn.finished.split(b"\n", 1)[0])
    runner.SampleStore(torn.samples, header["settings"])  # repair the torn tail first
    ctx = multiprocessing.get_context("fork")
    receive, send = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_append_over_the_limit, args=(torn, send))
    child.start()
    child.join(timeout=300)
    assert child.exitcode == 0 and receive.recv() == "OSError: File too large"
    assert torn.samples.read_bytes() == torn.finished  # the partial batch was cut back off
    resume_loses_nothing(torn)


def test_empty_file_starts_over_and_new_files_appear_whole(tmp_path):
    path = tmp_path / "samples" / "b.jsonl"
    runner.SampleStore(path, {"a": 1}).add([{"id": "1", "x": "é"}])
    assert [json.loads(line)["type" if i == 0 else "id"] for i, line in enumerate(path.read_text().splitlines())] == [
        "header",
        "1",
    ]
    path.write_bytes(b"")  # what an in-place rewrite killed at the wrong moment used to leave
    store = runner.SampleStore(path, {"a": 1})
    assert store.records == {} and json.loads(path.read_text())["type"] == "header"
    with pytest.raises(ValueError, match="no header line"):
        path.write_text("not json\n")
        runner.SampleStore(path, {"a": 1})
