"""`benchmarks/compare_offline.py`: the grid, the learning-rate choice per epoch count, each method's data, and the
pilot end to end (every method trains and is evaluated after each epoch; rounds against online NFT; the report).

The script runs in-process (a subprocess would import trl again, which costs more than the tiny runs).
"""

import importlib.util
import sys
from pathlib import Path

import pytest


BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    for name in ("compare_algorithms", "compare_offline"):
        spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        monkeypatch.setitem(sys.modules, name, module)  # its dataclasses look their module up there
        spec.loader.exec_module(module)
    yield sys.modules["compare_offline"]
    sys.modules.pop("compare_report", None)


def test_grid_has_the_protocols_size_and_final_runs_follow_the_choices(offline):
    settings = offline.PROTOCOL
    assert len(offline.tune_grid(settings)) == 5 * 3 * 2 * 2
    assert {c.epochs for c in offline.tune_grid(settings)} == {4}
    # nft picks 2e-4 after 1 and 2 epochs and 5e-5 after 4; every other method 2e-4 throughout
    chosen = {(m, e, s): {"lr": 2e-4} for m in settings.methods for e in settings.epochs for s in settings.starts}
    for start in settings.starts:
        chosen[("nft", 4, start)] = {"lr": 5e-5}
    cells, waiting = offline.final_grid(settings, chosen)
    assert not waiting
    nft = [c for c in cells if c.method == "nft" and c.start == "build1"]
    assert sorted({(c.lr, c.epochs) for c in nft}) == [(5e-5, 4), (2e-4, 2)]  # a 2e-4 run stops after epoch 2
    assert len(cells) == 2 * (4 * 5 + 2 * 5)
    assert offline.final_cell_for(settings, chosen, "nft", 1, "build1", 3).name == "final-build1-nft-lr0.0002-seed3-e2"
    del chosen[("kto", 2, "build2")]
    assert ("kto", "build2") in offline.final_grid(settings, chosen)[1]


def test_learning_rate_is_chosen_per_epoch_count_smaller_on_ties(offline):
    settings = offline.Settings(starts=("build1",), learning_rates=(2e-4, 8e-4), tune_seeds=(100,), epochs=(1, 2))
    accuracy = {(2e-4, "1"): 0.5, (8e-4, "1"): 0.5, (2e-4, "2"): 0.4, (8e-4, "2"): 0.6}
    results = [
        {
            "cell": vars(cell),
            "evals": {e: {"sampled": accuracy[(cell.lr, e)]} for e in ("1", "2")},
        }
        for cell in offline.tune_grid(settings)
    ]
    chosen = offline.choose_learning_rates(settings, results)
    assert chosen[("nft", 1, "build1")]["lr"] == 2e-4  # tie: the smaller
    assert chosen[("nft", 2, "build1")]["lr"] == 8e-4 and chosen[("nft", 2, "build1")]["at_edge"]
    assert ("sft", 1, "build1") not in offline.choose_learning_rates(
        settings, [r for r in results if not (r["cell"]["method"] == "sft" and r["cell"]["lr"] == 8e-4)]
    )


def rows():
    prompt = [{"role": "user", "content": "Compute 1 + 2."}]
    answers = [(0, [5, 6, 2], 1.0), (0, [7, 2], 0.0), (0, [8, 2], 0.0), (1, [9, 2], 1.0), (1, [5, 2], 1.0)]
    return [
        {"prompt": prompt, "group": str(g), "completion_ids": ids, "reward": r, "truncated": False}
        for g, ids, r in answers
    ] + [{"prompt": prompt, "group": "2", "completion_ids": [4, 2], "reward": None, "truncated": False}]


class FakeTokenizer:
    eos_token_id = 2

    def apply_chat_template(self, prompt, add_generation_prompt, tokenize):
        return f"<{prompt[0]['content']}>"

    def decode(self, ids, skip_special_tokens):
        return " ".join(map(str, ids))


def test_each_method_gets_its_rows(offline):
    tok = FakeTokenizer()
    sft = offline.sft_rows(tok, rows())
    assert sft == [
        {"prompt": "<Compute 1 + 2.>", "completion": "5 6"},
        {"prompt": "<Compute 1 + 2.>", "completion": "9"},
        {"prompt": "<Compute 1 + 2.>", "completion": "5"},
    ]  # right answers only, EOS left to TRL
    kto = offline.kto_rows(tok, rows(), seed=0)
    assert sorted(r["label"] for r in kto) == sorted([True, False, False, True, True])  # the unjudged one left out
    # TRL's KTO samples in dataset order: the seed shuffles the rows (the same seed the same way), so the answers to
    # one question no longer sit side by side
    prompt = rows()[0]["prompt"]
    many = [
        {
            "prompt": prompt,
            "group": str(i // 4),
            "completion_ids": [10 + i, 2],
            "reward": float(i % 2),
            "truncated": False,
        }
        for i in range(32)
    ]
    judged_order = [str(10 + i) for i in range(32)]
    orders = [[r["completion"] for r in offline.kto_rows(tok, many, seed)] for seed in (100, 100, 101)]
    assert orders[0] == orders[1] != orders[2] and sorted(orders[0]) == sorted(orders[2]) == sorted(judged_order)
    assert orders[0] != judged_order
    dpo = offline.dpo_rows(tok, rows())
    assert len(dpo) == 1 and dpo[0]["chosen"] == "5 6" and dpo[0]["rejected"] in ("7", "8")  # min(#right, #wrong)
    summary = offline.data_summary(rows()[:5])
    assert summary["answers"] == 5 and summary["correct_rate"] == 0.6 and summary["mixed_groups"] == 0.5


def test_processes_sharing_a_grid_skip_the_runs_another_one_holds_or_finished(offline, tmp_path):
    """One grid, several processes (one per core): a run whose lock another live process holds is skipped, a run
    finished meanwhile is not redone, and a lock left by a killed process does not block (the kernel drops it)."""
    import subprocess

    out, settings = tmp_path / "out", offline.PILOT
    cells = [offline.Cell("tune", "build1", method, 2e-4, 100, 2) for method in ("nft", "rft", "sft", "kto")]
    (out / "cells").mkdir(parents=True)
    (out / "work").mkdir()
    hold = "import fcntl, sys, time; f = open(sys.argv[1], 'a'); fcntl.flock(f, fcntl.LOCK_EX); print('held', flush=True); time.sleep(60)"
    holder = subprocess.Popen(
        [sys.executable, "-c", hold, str(out / "work" / f"{cells[0].name}.lock")], stdout=subprocess.PIPE, text=True
    )
    killed = subprocess.Popen(
        [sys.executable, "-c", hold, str(out / "work" / f"{cells[3].name}.lock")], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held" and killed.stdout.readline().strip() == "held"
        killed.kill()
        killed.wait()
        ran = []

        class Starts:
            def model(self, start):
                return "model-path", "fingerprint"

            def point(self, start, split):
                pass

        def runner(cell, path, work):
            ran.append(cell.method)
            if cell.method == "rft":  # meanwhile another process finishes sft
                offline.write_json(out / "cells" / f"{cells[2].name}.json.gz", {"done": "elsewhere"})
            return {"split": "validation", "evals": {"2": {"sampled": 0.5, "greedy": 0.5}}, "wall_seconds": 1.0}

        assert offline.run_cells(cells, settings, out, Starts(), None, runner) == 2
        assert ran == ["rft", "kto"]
        assert offline.read_json(out / "cells" / f"{cells[2].name}.json.gz") == {"done": "elsewhere"}
        assert not (out / "cells" / f"{cells[0].name}.json.gz").exists()
    finally:
        holder.kill()
        holder.wait()


def load_inspect(monkeypatch):
    spec = importlib.util.spec_from_file_location("inspect_offline", BENCHMARKS / "inspect_offline.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "inspect_offline", module)
    spec.loader.exec_module(module)
    return module


def test_inspect_refuses_an_unknown_start_or_missing_data_before_loading_a_model(offline, monkeypatch, tmp_path):
    inspect = load_inspect(monkeypatch)
    common = ["--pilot", "--out", str(tmp_path), "--method", "kto", "--lr", "2e-4"]
    with pytest.raises(SystemExit, match=r"--start must be one of \['build1'"):
        inspect.main([*common, "--start", "countdown1"])
    with pytest.raises(SystemExit, match="build1.jsonl.gz is missing: make it with compare_offline.py --phase data"):
        inspect.main([*common, "--start", "build1"])


@pytest.mark.slow
def test_pilot_trains_every_method_runs_the_rounds_and_reports(offline, monkeypatch, tmp_path, capsys):
    out = tmp_path / "out"
    common = ["--pilot", "--out", str(out), "--only"]
    # each trainer once (RFT is NFTTrainer with other settings); the pilot's grid has one learning rate
    assert offline.main(["--phase", "tune", *common, "method=nft,sft,kto,dpo"]) == 0
    cells = sorted(p.name for p in (out / "cells").iterdir())
    assert cells == sorted(f"tune-build1-{m}-lr0.0002-seed100-e2.json.gz" for m in ("nft", "sft", "kto", "dpo"))
    results = offline.load_finished(out, offline.PILOT)
    for result in results:
        assert set(result["evals"]) == {"1", "2"}, result["cell"]  # evaluated after each epoch
        assert 0 <= result["evals"]["2"]["sampled"] <= 1 and result["evals"]["2"]["entropy"] > 0
        assert len(result["loss_curve"]) == 2 * result["steps_per_epoch"]
    nft = next(r for r in results if r["cell"]["method"] == "nft")
    assert nft["train_rows"] == 16  # every judged answer; SFT fewer (the right ones only)
    assert next(r for r in results if r["cell"]["method"] == "sft")["train_rows"] < 16
    # inspect_offline retrains one of these runs on the same judged data and prints its answers before and after
    capsys.readouterr()
    inspect = load_inspect(monkeypatch)
    args = ["--pilot", "--out", str(out), "--start", "build1", "--method", "kto", "--lr", "2e-4", "--epochs", "1"]
    assert inspect.main([*args, "--questions", "2", "--samples", "3", "--shown", "1"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("sampled answers right: ") == 2 and printed.count(" of 6\n") == 2
    assert "--- build1, before training" in printed and "--- after kto for 1 epoch(s) at 0.0002, seed 100" in printed
    assert printed.count("Q: ") == 2 and "'step': 1, 'loss': " in printed
    # a rerun skips the finished runs
    assert offline.main(["--phase", "tune", *common, "method=nft,sft,kto,dpo"]) == 0
    assert sorted(p.name for p in (out / "cells").iterdir()) == cells
    # the rounds: offline generate + train vs online NFT, evaluated after each round
    assert offline.main(["--phase", "rounds", "--pilot", "--out", str(out), "--only", "seed=0"]) == 0
    report = (out / "results.md").read_text()
    assert "| build1 | offline | 2 | 32 |" in report and "| build1 | online | 2 | 32 |" in report
    # the primary rounds comparison: offline - online, paired by seed, per round; one seed of one model: incomplete
    paired = report.split("## Rounds, paired by seed")[1]
    assert "| 2 | 32 | build1 |" in paired and "| 2 | 32 | pooled |" in paired and "| incomplete |" in paired
    assert "judged data `build1`: 16 answers" in report
