"""Shared fixtures and helpers: a tiny local tokenizer and Qwen2 model (no Hub), scripted generation, CPU settings."""

import os


# Offline and quiet before anything imports transformers / huggingface_hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_DISABLED", "true")
if os.environ.get("PYTEST_XDIST_WORKER"):  # a pytest-xdist worker: one torch thread (see "parallel workers" below)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("MKL_NUM_THREADS", "1")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from nft_trl.embedded.model import build_tiny_model, save_tiny_model  # noqa: E402
from nft_trl.embedded.scripted import scripted_completion  # noqa: E402
from nft_trl.embedded.scripted import scripted_generation as scripted  # noqa: E402
from nft_trl.embedded.tokenizer import build_tiny_tokenizer  # noqa: E402


REPO_ROOT = Path(__file__).resolve().parents[1]


def benchmarks_dir() -> Path:
    """The real benchmark files: `$NFT_TRL_BENCHMARKS_DIR`, else `shared/data/benchmarks` beside the checkout."""
    return Path(os.environ.get("NFT_TRL_BENCHMARKS_DIR", REPO_ROOT.parent / "shared" / "data" / "benchmarks"))


def cpu_training_args(output_dir, **settings) -> dict:
    """Keyword arguments of a small CPU run for `NFTConfig` or `GRPOConfig`: fp32, no reporting, no checkpoints,
    seeded, batches of 8 answers in groups of 4; `settings` override or add fields."""
    return {
        "output_dir": str(output_dir),
        "use_cpu": True,
        "bf16": False,
        "report_to": "none",
        "save_strategy": "no",
        "logging_steps": 1,
        "gradient_checkpointing": False,
        "seed": 0,
        "per_device_train_batch_size": 8,
        "num_generations": 4,
        **settings,
    }


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return build_tiny_tokenizer()


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory):
    """A tiny Qwen2 model and tokenizer saved to a local folder (usable as `model_name_or_path`)."""
    return str(save_tiny_model(tmp_path_factory.mktemp("tiny-qwen2")))


@pytest.fixture
def tiny_model(tiny_tokenizer):
    return build_tiny_model(tiny_tokenizer, seed=0)


@pytest.fixture
def scripted_generation():
    """`generate` replaced by a deterministic script (`nft_trl.embedded.scripted`), so that several trainers see
    exactly the same completions. Yields the script, `scripted_completion(row, length, num_ids, eos_id)`."""
    with scripted():
        yield scripted_completion


# ---------------------------------------------------------------------------------------------------- progress lines
# `pytest -q` prints one dot per test: a test that runs for minutes looks like a hang. Each test marked `slow`, and any
# test that took more than SLOW_REPORT_S, gets a line of its own: what runs (in a single process), then how long it
# took (always; under pytest-xdist the line comes from the controller, which sees every worker's reports).
SLOW_REPORT_S = 20.0
_slow_ids: set[str] = set()
_config = None


def pytest_configure(config):
    global _config
    _config = config
    # Hand tests to workers one or two at a time (xdist's default sends a quarter of them at once), so that the
    # longest-first order below is followed across workers.
    if getattr(config.option, "maxschedchunk", "absent") is None:
        config.option.maxschedchunk = 1


def pytest_collection_modifyitems(config, items):
    _slow_ids.update(item.nodeid for item in items if item.get_closest_marker("slow"))

    # Longest first: the tests that fill a cache on a fresh machine (a minute of compiling or converting each, on
    # one worker while the other works), then the other tests marked `slow`, then those that read what the first ones
    # made (run beside their maker, they would wait on its lock with a core idle), then those that start processes,
    # then the rest, each in file order. With workers (`-n`), taking tests one at a time in this order keeps both
    # cores busy to the end instead of leaving one worker alone with a minute-long test after the other has finished.
    def rank(item) -> int:
        for position, marker in enumerate(("fills_cache", "reads_cache", "slow", "distributed")):
            if item.get_closest_marker(marker):
                return (0, 2, 1, 3)[position]
        return 4

    items.sort(key=rank)  # stable: file order within each rank
    # xdist starts each worker with two consecutive tests (then one at a time): one cache-filling test in each pair,
    # so that the two one-time builds run side by side on different workers, not one after the other on the same.
    fills, rest = [item for item in items if rank(item) == 0], [item for item in items if rank(item) != 0]
    paired = []
    for fill in fills:
        paired += [fill, rest.pop(0)] if rest else [fill]
    items[:] = paired + rest


def _write_line(config, text: str) -> None:
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write("\n")  # after the dots of `-q`
        reporter.write_line(text)


def pytest_runtest_logstart(nodeid, location):
    if nodeid in _slow_ids and _config is not None:
        _write_line(_config, f"[slow] {nodeid} ...")


def pytest_runtest_logreport(report):
    if _config is None or report.when != "call":
        return
    if "slow" in report.keywords or report.nodeid in _slow_ids or report.duration > SLOW_REPORT_S:
        worker = getattr(report, "node", None)
        where = f" [{worker.gateway.id}]" if worker is not None and hasattr(worker, "gateway") else ""
        _write_line(_config, f"[slow] {report.nodeid}: {report.outcome} in {report.duration:.0f} s{where}")


# ------------------------------------------------------------------------------------------------ parallel workers
# `pytest -n auto` (the README's command) runs the tests in worker processes. The CPUs are shared, not multiplied: each
# worker, and every process a test starts from it, uses one torch thread, so that two workers on two cores do not
# oversubscribe them (torch's default is one thread per core in every process).
MAX_AUTO_WORKERS = 4


def pytest_xdist_auto_num_workers(config):
    """`-n auto`: one worker per CPU, at most MAX_AUTO_WORKERS (each holds a model or starts training processes)."""
    return max(1, min(MAX_AUTO_WORKERS, len(os.sched_getaffinity(0))))


# (The thread settings themselves are at the top of this file: they must come before torch is imported.)


def max_abs_diff(a, b) -> float:
    """The largest absolute difference between two mappings of tensors with the same keys (e.g. two state dicts)."""
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)
