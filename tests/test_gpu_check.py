"""`benchmarks/gpu_check.py --dry-run`: the GPU validation script's code paths, on CPU with a tiny model.

The script is called in-process (importing trl again in a subprocess would cost more than the run itself); `main`
puts back the `generate` it replaces, and the fixture below makes sure of it even if the run fails.
"""

import importlib.util
import re
from pathlib import Path

import pytest
from transformers.generation.utils import GenerationMixin


SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


@pytest.fixture
def gpu_check(monkeypatch):
    monkeypatch.setattr(GenerationMixin, "generate", GenerationMixin.generate)  # restored at teardown
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_dry_run_prints_every_check(gpu_check, capsys):
    original_generate = GenerationMixin.generate
    assert gpu_check.main(["--dry-run"]) == 0
    out = capsys.readouterr().out
    assert GenerationMixin.generate is original_generate

    assert re.search(r"^model: Qwen2 .*parameters: [\d,]+$", out, re.M)
    # Parity: one line per trainer, then the ratios.
    for kind in ("nft", "grpo"):
        assert re.search(rf"^{kind} +median step +[\d.]+ ms .* [\d.]+ completion tokens/s$", out, re.M)
    assert re.search(r"^step-time ratio NFT/GRPO: \d+\.\d{3} \(target <= 1\.02\)$", out, re.M)
    assert re.search(
        r"^step-time ratio per round pair \(2 pairs\): min-max [\d.]+-[\d.]+, 95% interval of the geometric mean "
        r"[\d.]+-[\d.]+$",
        out,
        re.M,
    )
    assert re.search(r"^peak memory ratio NFT/GRPO: (nan|\d+\.\d{3}) \(target <= 1\.01\)", out, re.M)
    # Gradient error: the default eps and the eps=0.1 ablation, overall and near the clamp, plus the baseline.
    number = r"(\d\.\d\de[-+]\d\d|nan)"
    for eps in ("1.0", "0.1"):
        assert re.search(
            rf"^bf16-vs-fp32 NFT gradient rel\. error \(eps={eps}\): parameters {number}; dL/dlogp all tokens "
            rf"{number}, near clamp x~eps {number} \(\d+ tokens\), near R~1/r_hat {number} \(\d+ tokens\)$",
            out,
            re.M,
        )
    assert re.search(rf"^bf16-vs-fp32 likelihood-baseline gradient rel\. error: parameters {number}$", out, re.M)
    # ZeRO-3: the shipped config; a SKIP without DeepSpeed or without a GPU, steps completed with both.
    assert re.search(r"^ZeRO-3 accelerate config: shipped .*accelerate_configs/zero3\.yaml$", out, re.M)
    assert re.search(r"^ZeRO-3: (SKIP \(.+\)|OK: .+)$", out, re.M)
    # Summary block with the targets.
    summary = out.split(" summary ")[-1]
    assert "step-time ratio NFT/GRPO" in summary and "target <= 1.02" in summary
    assert "peak memory ratio NFT/GRPO" in summary and "target <= 1.01" in summary
    assert re.search(r"bf16-vs-fp32 gradient rel\. error .*flag > 1e-02 +(ok|FLAG)", summary)
    assert re.search(r"ZeRO-3 steps complete: (SKIP|OK)", summary) and "FAILED" not in summary

    # The numbers are real: finite ratios and a tiny bf16 error on the tiny model (its log-probs are ~-6, not ~-12).
    ratio = float(re.search(r"^step-time ratio NFT/GRPO: (\S+)", out, re.M).group(1))
    assert 0 < ratio < 10
    params_error = float(re.search(r"eps=1\.0\): parameters (\S+);", out).group(1))
    assert 0 < params_error < 0.1


def test_a_failed_check_fails_the_script(gpu_check, capsys, monkeypatch):
    monkeypatch.setattr(gpu_check, "zero3_check", lambda opts: {"status": "FAIL", "detail": "exit code 1"})
    assert gpu_check.main(["--dry-run"]) == 1
    assert "FAILED: ZeRO-3" in capsys.readouterr().out


def test_step_time_is_judged_on_the_interval_of_paired_rounds(gpu_check):
    # Pairs scattered around 1.00: the interval is within the target.
    low, high = gpu_check.ratio_interval([0.99, 1.00, 1.01, 1.00, 0.995, 1.005])
    assert low < 1.0 < high <= 1.02
    assert gpu_check.step_time_verdict((low, high)) == "PASS"
    # Clearly slower in every pair: the whole interval is above the target.
    assert gpu_check.step_time_verdict(gpu_check.ratio_interval([1.10, 1.12, 1.09, 1.11])) == "FAIL"
    # The spread seen on an H200 with 2-4 rounds (0.83-1.08): no verdict either way.
    assert gpu_check.step_time_verdict(gpu_check.ratio_interval([0.83, 1.08, 0.92, 1.01])) == "INCONCLUSIVE"
    # One pair gives no interval, hence no verdict.
    assert gpu_check.step_time_verdict(gpu_check.ratio_interval([1.0])) == "INCONCLUSIVE"


def test_only_a_failed_check_fails_the_script(gpu_check):
    assert gpu_check.failed_checks("PASS", True, "OK") == []
    assert gpu_check.failed_checks("INCONCLUSIVE (more rounds)", None, "SKIP") == []
    assert gpu_check.failed_checks("not judged (dry run)", None, "OK") == []
    assert gpu_check.failed_checks("FAIL", False, "FAIL") == ["step-time ratio", "peak memory ratio", "ZeRO-3"]
