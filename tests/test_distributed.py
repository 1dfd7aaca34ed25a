"""Two processes (torchrun, gloo): every row's r_hat is its whole group's rate, even when the group spans ranks."""

import json
import sys
from pathlib import Path

import pytest
import torch
from launching import free_port, run

from nft_trl.algorithm.loss import group_correct_rate


SCRIPTS = Path(__file__).parent / "scripts"


def run_torchrun(script: str, nproc: int, out_dir: Path) -> list[dict]:
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc_per_node={nproc}",
        "--master_addr=127.0.0.1",
        f"--master_port={free_port()}",
        str(SCRIPTS / script),
        str(out_dir),
    ]
    run(cmd, expect=out_dir / f"rank{nproc - 1}.json")
    return [json.loads((out_dir / f"rank{r}.json").read_text()) for r in range(nproc)]


@pytest.mark.distributed
def test_group_rates_span_processes(tmp_path):
    ranks = run_torchrun("record_correct_rates.py", 2, tmp_path)
    assert [r["world_size"] for r in ranks] == [2, 2]
    num_steps = len(ranks[0]["calls"])
    assert num_steps == 2 and len(ranks[1]["calls"]) == num_steps
    spanning_mixed = 0
    for step in range(num_steps):
        rank_calls = [r["calls"][step] for r in ranks]
        # TRL's gathered order is rank 0's rows, then rank 1's: groups of 4 over 12 rows, the middle one spans ranks.
        prompts = sum((c["prompts"] for c in rank_calls), [])
        verdicts = torch.tensor(sum((c["verdicts"] for c in rank_calls), []))
        assert all(len(set(prompts[i : i + 4])) == 1 for i in range(0, len(prompts), 4)), prompts
        single_process = group_correct_rate(verdicts.bool(), torch.ones_like(verdicts, dtype=torch.bool), 4)
        recorded_rate = torch.tensor(sum((c["nft_correct_rate"] for c in rank_calls), []))
        recorded_correct = torch.tensor(sum((c["nft_correct"] for c in rank_calls), []))
        torch.testing.assert_close(recorded_rate, single_process)
        assert torch.equal(recorded_correct, verdicts.bool())
        middle = verdicts[4:8]
        spanning_mixed += bool(0 < middle.sum() < 4)
        # A per-process computation would have given rank 0's half of the middle group its own rate.
    assert spanning_mixed >= 1, "the test needs at least one mixed group that spans both processes"


@pytest.mark.distributed
def test_dynamic_sampling_two_processes_agree_with_one(tmp_path):
    (one,) = run_torchrun("record_dynamic_batches.py", 1, tmp_path / "one")
    two = run_torchrun("record_dynamic_batches.py", 2, tmp_path / "two")
    assert two[0]["rounds"] == two[1]["rounds"] == one["rounds"], "every process takes the same number of rounds"
    assert max(one["rounds"]) >= 2, "the test must exercise extra rounds"
    for step, expected in enumerate(one["records"]):
        for field in ("prompts", "correct", "rate", "valid"):
            assert two[0]["records"][step][field] + two[1]["records"][step][field] == expected[field], (step, field)
        rates = torch.tensor(expected["rate"])
        assert ((rates > 0) & (rates < 1)).all()
