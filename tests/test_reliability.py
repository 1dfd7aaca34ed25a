"""Crash-consistent checkpoints, resume from the newest complete one, preemption by signal, a failed save.

The fault-injection tests start real training processes (`benchmarks/fault_injection.py`) and kill, signal or starve
them; `python benchmarks/fault_injection.py --trials 12` runs many more trials (docs/reliability.md).
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from launching import free_port

from nft_trl.algorithm.dynamic_sampling import DynamicSampler, RefillStream
from nft_trl.runtime.checkpoints import (
    MARKER,
    atomic_write_text,
    incomplete_reason,
    mark_complete,
    newest_complete,
    read_json_state,
    rotate,
)
from nft_trl.runtime.resilient import resolve_resume


REPO_ROOT = Path(__file__).resolve().parents[1]
FAULTS = REPO_ROOT / "benchmarks" / "fault_injection.py"


def make_checkpoint(root: Path, step: int, complete: bool = True) -> Path:
    folder = root / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"w" * 100)
    (folder / "trainer_state.json").write_text("{}")
    if complete:
        mark_complete(folder, step=step)
    return folder


# ---------------------------------------------------------------------------------------------- the file functions
def test_newest_complete_skips_and_names_incomplete_checkpoints(tmp_path):
    make_checkpoint(tmp_path, 2)
    make_checkpoint(tmp_path, 4)
    make_checkpoint(tmp_path, 6, complete=False)
    cut = make_checkpoint(tmp_path, 8)
    (cut / "model.safetensors").write_bytes(b"w" * 10)  # cut short after the marker
    found, skipped = newest_complete(tmp_path)
    assert found == tmp_path / "checkpoint-4"
    assert [s.path.name for s in skipped] == ["checkpoint-8", "checkpoint-6"]
    assert "model.safetensors has 10 bytes, 100 were written" in skipped[0].reason
    assert "interrupted" in skipped[1].reason


def test_resume_true_takes_the_newest_complete_and_warns(tmp_path, caplog):
    make_checkpoint(tmp_path, 1)
    make_checkpoint(tmp_path, 2, complete=False)
    assert resolve_resume(str(tmp_path), True) == str(tmp_path / "checkpoint-1")
    assert "checkpoint-2" in caplog.text and "incomplete" in caplog.text
    assert resolve_resume(str(tmp_path), "true") == str(tmp_path / "checkpoint-1")  # the CLI's string
    assert resolve_resume(str(tmp_path), None) is None and resolve_resume(str(tmp_path), "false") is None


def test_resume_errors_name_what_to_do(tmp_path):
    make_checkpoint(tmp_path, 3, complete=False)
    with pytest.raises(ValueError, match=r"no complete checkpoint.*only incomplete ones \(checkpoint-3\)"):
        resolve_resume(str(tmp_path), True)
    partial = tmp_path / "checkpoint-5"
    partial.mkdir()
    with pytest.raises(ValueError, match="checkpoint-5 is not a complete checkpoint"):
        resolve_resume(str(partial), None or str(partial))
    with pytest.raises(FileNotFoundError, match="no such folder"):
        resolve_resume(str(tmp_path / "nope"), str(tmp_path / "nope"))


def test_rotate_keeps_the_newest_complete_and_drops_stale_leftovers(tmp_path):
    for step in (1, 2, 3):
        make_checkpoint(tmp_path, step)
    make_checkpoint(tmp_path, 4, complete=False)  # an interrupted save, older than the newest complete
    make_checkpoint(tmp_path, 5)
    make_checkpoint(tmp_path, 6, complete=False)  # newer than the newest complete: kept (resume overwrites it)
    deleted = rotate(tmp_path, 2, protect=(str(tmp_path / "checkpoint-1"),))
    assert sorted(p.name for p in deleted) == ["checkpoint-2", "checkpoint-4"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "checkpoint-1",
        "checkpoint-3",
        "checkpoint-5",
        "checkpoint-6",
    ]


def test_atomic_write_and_state_file_errors_name_the_file(tmp_path):
    path = tmp_path / "state.json"
    atomic_write_text(path, json.dumps({"a": 1}))
    assert read_json_state(path, "state") == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]  # no temporary file left
    path.write_text("")
    with pytest.raises(ValueError, match=r"state.json is not valid JSON"):
        read_json_state(path, "Dynamic sampling's refill state")
    with pytest.raises(FileNotFoundError, match=r"missing\.json does not exist"):
        read_json_state(tmp_path / "missing.json", "Dynamic sampling's refill state")


def test_dynamic_sampling_state_missing_from_a_checkpoint_is_an_error(tmp_path):
    sampler = DynamicSampler.__new__(DynamicSampler)
    sampler.stream = RefillStream(8, seed=0)
    with pytest.raises(FileNotFoundError, match="refill state is missing"):
        sampler.load(str(tmp_path))
    sampler.stream.take(3)
    sampler.save(str(tmp_path))
    other = DynamicSampler.__new__(DynamicSampler)
    other.stream = RefillStream(8, seed=0)
    other.load(str(tmp_path))
    assert other.stream.state_dict() == sampler.stream.state_dict()


def test_marker_lists_every_file_with_its_size(tmp_path):
    folder = make_checkpoint(tmp_path, 7)
    (folder / "sub").mkdir()
    (folder / "sub" / "shard.pt").write_bytes(b"x" * 5)
    mark_complete(folder, step=7)
    record = json.loads((folder / MARKER).read_text())
    assert record["files"] == {"model.safetensors": 100, "sub/shard.pt": 5, "trainer_state.json": 2}
    assert incomplete_reason(folder) is None
    os.unlink(folder / "sub" / "shard.pt")
    assert incomplete_reason(folder) == "sub/shard.pt is missing"


# ------------------------------------------------------------------------------------------- real faults, real runs
@pytest.mark.slow
def test_fault_injection_resumes_to_the_uninterrupted_weights(tmp_path):
    """A kill inside a save, then a full disk on the resume, in a real process with dynamic sampling on; the run
    resumed after both ends with the uninterrupted run's exact weights. (SIGTERM: the torchrun test below, on every
    rank; the random kills, SIGINT and the double signal: the benchmark.)"""
    faults, extra = "disk", ["--dynamic-sampling"]
    results_file = tmp_path / "results.json"
    cmd = [sys.executable, str(FAULTS), "--out", str(tmp_path), "--trials", "1", "--faults", faults, "--seed", "1"]
    done = subprocess.run(
        [*cmd, *extra, "--json", str(results_file)], capture_output=True, text=True, timeout=900, cwd=REPO_ROOT
    )
    assert results_file.exists(), done.stderr[-3000:]
    results = json.loads(results_file.read_text())
    assert len(results) == len(faults.split(","))
    for result in results:
        assert result["fault_hit"], result
        assert result["equal"] and result["max_abs_diff"] == 0.0, result
        assert "resume_error" not in result, result
        assert result.get("expected_exit", True) and result.get("said_how_to_resume", True), result
        if result["fault"] == "disk":
            assert result["killed_inside_a_save"], result
            assert result["disk_exit_code"] != 0 and result["disk_error_clear"], result
            assert "intact" in result["disk_message"], result
    assert done.returncode == 0, done.stdout[-2000:]


@pytest.mark.slow
@pytest.mark.distributed
def test_sigterm_under_torchrun_saves_on_every_rank_and_resumes(tmp_path):
    """A scheduler's SIGTERM to the launcher: both ranks stop at the same step, one complete checkpoint, exit != 0."""
    from nft_trl.embedded.model import save_tiny_model

    model = save_tiny_model(tmp_path / "model")
    out = tmp_path / "out"

    def launch(*args):
        return [
            sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
            f"--master_port={free_port()}", str(FAULTS), "train", "--model", str(model), "--out", str(out),
            "--steps", "8", *args,
        ]  # fmt: skip

    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "CI": "true"}
    process = subprocess.Popen(
        launch("--step-sleep", "1.0"), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 400
        while not (out / "checkpoint-1" / MARKER).exists():
            assert process.poll() is None, process.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "no checkpoint within the deadline"
            time.sleep(0.05)
        process.send_signal(signal.SIGTERM)  # to torchrun, which forwards it to both workers
        _, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode != 0
    assert "Stopped by SIGTERM" in stderr and "--resume_from_checkpoint true" in stderr, stderr[-3000:]
    found, skipped = newest_complete(out)
    assert found is not None and not skipped
    stopped_at = int(found.name.split("-")[1])
    assert 1 <= stopped_at < 8
    resumed = subprocess.run(launch("--resume"), env=env, capture_output=True, text=True, timeout=400)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert (out / "final_params.pt").exists()
    assert json.loads((out / "checkpoint-8" / "trainer_state.json").read_text())["global_step"] == 8


def test_preemption_handler_keeps_ignored_signals_ignored_and_restores_the_others():
    from nft_trl.runtime.preemption import PreemptionHandler

    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # as nohup or a background job of a script
    term = signal.getsignal(signal.SIGTERM)
    try:
        handler = PreemptionHandler()
        assert handler.install()
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        assert signal.getsignal(signal.SIGTERM) == handler._handle
        handler.restore()
        assert signal.getsignal(signal.SIGTERM) == term
    finally:
        signal.signal(signal.SIGINT, previous)
