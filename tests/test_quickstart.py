"""The README's Quickstart runs as written, offline: its code blocks are read from README.md, so they cannot drift."""

import os
import re
import subprocess
import sys

from conftest import REPO_ROOT


def quickstart_blocks() -> list[str]:
    """The Python code blocks of the README's `## Quickstart` section, in order."""
    readme = (REPO_ROOT / "README.md").read_text()
    section = readme[readme.index("\n## Quickstart\n") :]
    section = section[: section.index("\n## ", 1)]
    return re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)


def run_python(code: str, cwd) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO_ROOT)}
    env.pop("PYTHONWARNINGS", None)  # the user's default: every warning shows, once
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=900)


def test_quickstart_trains_the_embedded_model_offline_and_quietly(tmp_path):
    result = run_python(quickstart_blocks()[0], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert lines[0].startswith("On-policy: NFT's loss value is 0")  # said once, before the first step
    # One compact line per log (logging_steps=2), then the summary: no dict of metrics.
    assert [line.split("  ")[0] for line in lines[1:-1]] == [f"step {n}/10" for n in (2, 4, 6, 8, 10)]
    assert all(" correct " in line and " grad_norm " in line and "{" not in line for line in lines[1:-1])
    assert lines[-1].startswith("training done: 10 steps in")
    # Quiet: no warning from the project or the libraries under it (progress bars are all stderr holds).
    assert "Warning" not in result.stderr and "warn(" not in result.stderr, result.stderr[-3000:]
    assert (tmp_path / "nft-quickstart" / "checkpoint-10" / "model.safetensors").is_file()


def test_hub_model_offline_stops_at_once_with_what_to_pass_instead(tmp_path):
    quickstart, hub = quickstart_blocks()[:2]
    before_trainer = quickstart[: quickstart.index("\nargs = NFTConfig(")]  # the imports and the dataset
    result = run_python(before_trainer + "\n" + hub, tmp_path)
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("nft_trl.runtime.hub.ModelSourceError: Cannot load the model 'Qwen/Qwen2.5-Math-1.5B'")
    assert "offline mode is on (HF_HUB_OFFLINE)" in last and "nft_trl.embedded.EMBEDDED_MODEL" in last
    # Raised by NFTTrainer before transformers tries the Hub: a short traceback, none of transformers' frames.
    assert "transformers" not in result.stderr and len(result.stderr.strip().splitlines()) < 12, result.stderr
