"""`benchmarks/compare_algorithms.py --pilot`: two cells of the grid, resumability, the learning-rate choice, the report.

The script runs in-process (a subprocess would import trl again, which costs more than the two tiny cells).
"""

import gzip
import importlib.util
import json
import multiprocessing
import resource
import sys
from pathlib import Path

import pytest


BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture
def compare(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location("compare_algorithms", BENCHMARKS / "compare_algorithms.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "compare_algorithms", module)  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("compare_report", None)


def test_grid_has_the_protocols_size(compare):
    settings = compare.PROTOCOL
    assert len(compare.tune_grid(settings)) == 7 * 3 * 2 * 2 * 2
    chosen = {cell.group: {"lr": 2e-4} for cell in compare.tune_grid(settings)}
    cells, waiting = compare.final_grid(settings, chosen)
    assert len(cells) == 7 * 2 * 2 * 5 and not waiting
    assert len({c.name for c in cells}) == len(cells)
    only = compare.parse_only(["variant=nft,rft", "lr=0.0002", "regime=off"])
    assert {c.variant for c in cells if compare.selected(c, only)} == {"nft", "rft"}


def test_learning_rate_choice_takes_the_best_mean_and_the_smaller_on_ties(compare):
    settings = compare.PILOT
    results = [
        {"cell": {**vars(cell)}, "final": {"sampled": {1e-4: 0.5, 4e-4: 0.5}[cell.lr]}}
        for cell in compare.tune_grid(settings)
    ]
    chosen = compare.choose_learning_rates(settings, results)
    assert all(choice["lr"] == 1e-4 for choice in chosen.values())
    results[0]["final"]["sampled"] = 0.4  # the first group's 1e-4 cell is now worse
    group = compare.Cell(**results[0]["cell"]).group
    assert compare.choose_learning_rates(settings, results)[group]["lr"] == 4e-4
    # a group with an unfinished tune cell is not chosen, and its final cells wait
    chosen = compare.choose_learning_rates(settings, results[1:])
    assert group not in chosen
    assert group in compare.final_grid(settings, chosen)[1]


def test_pair_verdict_waits_for_every_seed_then_needs_both_models_to_agree(compare):
    import compare_report

    starts = ("build1", "build2")
    full = {"build1": (-2.0, 1.0, 5), "build2": (-1.0, 1.5, 5)}
    assert compare_report.pair_verdict(full, (-1.5, 0.8), starts, 5) == "differs"
    assert compare_report.pair_verdict(full, (-1.5, 1.6), starts, 5) == "within interval"
    opposite = {"build1": (-2.0, 1.0, 5), "build2": (0.5, 1.5, 5)}
    assert compare_report.pair_verdict(opposite, (-0.9, 0.8), starts, 5) == "within interval"
    partial = {"build1": (-2.0, 1.0, 5), "build2": (-1.0, 1.5, 3)}
    assert compare_report.pair_verdict(partial, (-1.5, 0.8), starts, 5) == "incomplete"
    assert compare_report.pair_verdict({"build1": full["build1"]}, (-2.0, 1.0), starts, 5) == "incomplete"


def read_gz(path):
    return json.loads(gzip.decompress(path.read_bytes()))


def test_json_files_are_compressed_read_in_either_form_and_refused_in_both(compare, tmp_path):
    import compare_report

    payload = {"cell": {"lr": 1e-4}, "curve": [[0, 0.5], [1, float("nan")]], "name": "é"}
    compare_report.write_json(tmp_path / "a.json.gz", payload)
    data = (tmp_path / "a.json.gz").read_bytes()
    assert data[:2] == b"\x1f\x8b"  # gzip
    assert gzip.decompress(data) == json.dumps(payload, indent=1).encode()
    compare_report.write_json(tmp_path / "a.json.gz", payload)
    assert (tmp_path / "a.json.gz").read_bytes() == data  # no time stamp: the same payload, the same bytes
    compare_report.write_json(tmp_path / "b.json", payload)  # a plain name stays plain
    assert json.loads((tmp_path / "b.json").read_text())["name"] == "é"
    assert json.dumps(compare_report.read_json(tmp_path / "b.json")) == json.dumps(payload)
    assert json.dumps(compare_report.read_json(tmp_path / "a.json.gz")) == json.dumps(payload)
    (tmp_path / "c.txt").write_text("not a result")
    assert compare_report.json_files(tmp_path) == {"a": tmp_path / "a.json.gz", "b": tmp_path / "b.json"}
    assert compare_report.json_files(tmp_path, "b*") == {"b": tmp_path / "b.json"}
    assert compare_report.json_files(tmp_path / "missing") == {}
    (tmp_path / "a.json").write_text("{}")
    with pytest.raises(SystemExit, match="a.json.gz and .*a.json are one result in two forms"):
        compare_report.json_files(tmp_path)


def _write_under_file_size_limit(path, payload, limit):
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    import compare_report

    compare_report.write_json(path, payload)


def test_a_failed_write_leaves_the_previous_file(compare, tmp_path):
    import compare_report

    path = tmp_path / "cells" / "tune-build1-on-nft-lr0.0001-seed100.json.gz"
    compare_report.write_json(path, {"old": True})
    before = path.read_bytes()
    payload = {"noise": [str(i * 7919 % 104729) for i in range(200_000)]}  # about 1 MB compressed
    # A child whose files may not grow past 64 KiB: its write fails partway, as on a full disk.
    child = multiprocessing.get_context("fork").Process(
        target=_write_under_file_size_limit, args=(path, payload, 64 * 1024)
    )
    child.start()
    child.join(60)
    assert child.exitcode != 0
    assert path.read_bytes() == before
    assert compare_report.json_files(path.parent) == {"tune-build1-on-nft-lr0.0001-seed100": path}


def test_fingerprint_check_reads_starts_and_cells_in_either_form(compare, tmp_path):
    import compare_report

    compare_report.write_json(tmp_path / "starts" / "build2-validation.json", {"start_fingerprint": "aaaa"})
    compare_report.write_json(tmp_path / "cells" / "tune-build2-on-nft-lr0.0001-seed100.json", {})
    compare_report.write_json(
        tmp_path / "cells" / "tune-build2-on-rft-lr0.0001-seed100.json.gz", {"start_fingerprint": "aaaa"}
    )
    compare.check_fingerprint(tmp_path, "build2", "aaaa")
    compare.check_fingerprint(tmp_path, "build1", "bbbb")  # no runs of build1 yet
    compare_report.write_json(tmp_path / "starts" / "build2-validation.json", {"start_fingerprint": "bbbb"})
    with pytest.raises(SystemExit, match="tune-build2-on-rft-lr0.0001-seed100.json.gz began from \\(aaaa\\)"):
        compare.check_fingerprint(tmp_path, "build2", "bbbb")


def test_pilot_runs_resumes_and_reports(compare, tmp_path, monkeypatch):
    out = tmp_path / "out"
    args = ["--pilot", "--out", str(out), "--only", "variant=nft", "regime=on"]
    assert compare.main(["--phase", "tune", *args, "--max_cells", "1"]) == 0
    cells = sorted((out / "cells").iterdir())
    assert [c.name for c in cells] == ["tune-build1-on-nft-lr0.0001-seed100.json.gz"]
    first = read_gz(cells[0])
    assert set(first["final"]["pass_at_k"]) == {"1", "2", "4"}
    assert first["final"]["pass_at_k"]["1"] == pytest.approx(first["final"]["sampled"])
    assert [step for step, _ in first["curve"]] == [0, 1, 2]
    assert len(first["entropy_curve"]) == 2
    assert (out / "results.json.gz").exists() and not (out / "results.json").exists()

    # The cell as an older version wrote it (plain JSON) counts as finished: a second invocation skips it and runs
    # only the other learning rate.
    plain = cells[0].with_name(cells[0].name.removesuffix(".gz"))
    plain.write_bytes(gzip.decompress(cells[0].read_bytes()))
    cells[0].unlink()
    ran = []
    original = compare.run_cell
    monkeypatch.setattr(
        compare, "run_cell", lambda settings, cell, path: ran.append(cell.name) or original(settings, cell, path)
    )
    assert compare.main(["--phase", "tune", *args]) == 0
    assert ran == ["tune-build1-on-nft-lr0.0004-seed100"]
    assert plain.read_text() == json.dumps(first, indent=1)  # untouched
    assert (out / "cells" / "tune-build1-on-nft-lr0.0004-seed100.json.gz").exists()

    # Both tune cells of the group are in: the final phase runs at the chosen learning rate.
    assert compare.main(["--phase", "final", *args, "--max_cells", "1", "--no_report"]) == 0
    (out / "results.json").write_text("{}")  # an older version's report, replaced by the new one
    assert compare.main(["--phase", "report", *args]) == 0
    assert not (out / "results.json").exists()
    report = read_gz(out / "results.json.gz")
    assert report["phase_reported"] == "final"
    assert len(report["cells"]) == 3
    (choice,) = report["chosen_learning_rates"]
    assert (choice["variant"], choice["regime"], choice["start"]) == ("nft", "on", "build1")
    final_cells = [c for c in report["cells"] if c["cell"]["phase"] == "final"]
    assert len(final_cells) == 1 and final_cells[0]["cell"]["lr"] == choice["lr"]
    for name in ("results.md", "curves.png", "entropy.png", "pass_at_k.png"):
        assert (out / name).stat().st_size > 0
    assert "| on | build1 | nft |" in (out / "results.md").read_text()

    # Results of other settings are refused rather than mixed in.
    with pytest.raises(SystemExit, match="other settings"):
        compare.main(["--phase", "report", "--out", str(out)])
    # One cell in both forms is refused rather than guessed at.
    (out / "cells" / f"{plain.name}.gz").write_bytes(gzip.compress(plain.read_bytes()))
    with pytest.raises(SystemExit, match="one result in two forms"):
        compare.main(["--phase", "report", *args])


def test_countdown_task_runs_the_same_grid_from_its_own_models(compare, tmp_path, monkeypatch):
    import dataclasses

    from test_embedded import TINY

    import nft_trl.embedded.model as model_module
    from nft_trl.embedded import CACHE_ENV_VAR, EmbeddedConfig
    from nft_trl.embedded.config import COUNTDOWN_PRESET

    settings = compare.for_task(compare.PROTOCOL, "countdown")
    assert settings.starts == ("countdown1", "countdown2")
    assert dataclasses.replace(settings, starts=compare.PROTOCOL.starts) == compare.PROTOCOL
    assert compare.STARTS["countdown2"] == EmbeddedConfig.countdown(seed=2)
    # A tiny countdown build stands in for the real one (which takes minutes to build).
    # The tiny tokenizer spells its prompts in 124-128 tokens: give it room for the answer too.
    tiny = dataclasses.replace(TINY, **COUNTDOWN_PRESET, max_position_embeddings=256)
    monkeypatch.setitem(compare.STARTS, "countdown1", tiny)
    monkeypatch.setenv(CACHE_ENV_VAR, str(tmp_path / "cache"))
    out = tmp_path / "out"
    args = ["--pilot", "--task", "countdown", "--out", str(out), "--only", "variant=nft", "regime=on", "lr=0.0001"]
    assert compare.main(["--phase", "tune", *args]) == 0
    (cell,) = [read_gz(p) for p in (out / "cells").glob("*.json.gz")]
    assert cell["cell"]["start"] == "countdown1" and cell["settings"]["starts"] == ["countdown1"]
    assert 0.0 <= cell["final"]["sampled"] <= 1.0
    assert "| countdown1 | validation |" in (out / "results.md").read_text()

    # The built model is kept with the results, and every run records which weights it began from.
    kept = out / "models" / "embedded" / tiny.version_hash()
    assert kept.is_dir()
    fingerprint = compare.model_fingerprint(kept)
    assert cell["start_fingerprint"] == fingerprint
    assert json.loads((out / "starts" / "countdown1-validation.json").read_text())["start_fingerprint"] == fingerprint
    # On another machine (no cache) the kept copy is used as it is: no rebuild, which could come out different.
    monkeypatch.setenv(CACHE_ENV_VAR, str(tmp_path / "empty-cache"))
    monkeypatch.setattr(model_module, "build_embedded", lambda *_: pytest.fail("rebuilt although a copy is kept"))
    assert compare.main(["--phase", "tune", *args[:-1], "lr=0.0004", "--no_report"]) == 0
    assert len(list((out / "cells").glob("*.json.gz"))) == 2
    # A different model under the same name is refused before any run, with what to do about it.
    (weights,) = kept.glob("*.safetensors")
    weights.write_bytes(weights.read_bytes() + b" ")
    with pytest.raises(SystemExit, match="is not the one .* Restore that model"):
        compare.main(["--phase", "final", *args[:-1], "lr=0.0001,0.0004", "--no_report"])
