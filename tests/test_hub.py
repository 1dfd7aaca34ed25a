"""`nft_trl.runtime.hub`: a model argument this machine cannot load stops before anything loads, saying what to pass.

No network: the Hub is a local HTTP server that answers, or a closed local port that refuses; the cache is a folder
laid out as huggingface_hub lays out its own.
"""

import http.server
import threading
from pathlib import Path

import pytest
from huggingface_hub import constants

from nft_trl.runtime import hub
from nft_trl.runtime.hub import ModelSourceError, check_model_source


@pytest.fixture
def online(monkeypatch):
    """Offline mode off, whatever the environment says (conftest sets HF_HUB_OFFLINE=1): in huggingface_hub, which
    read it at import, and in the environment, which the probe reads too."""
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.delenv("HF_ENDPOINT", raising=False)  # the tests set huggingface_hub's endpoint


@pytest.fixture
def answering_hub(monkeypatch):
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_HEAD(self):
            self.send_response(404)  # any answer means the Hub is reachable; transformers reports the status
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{server.server_address[1]}")
    yield
    server.shutdown()


def cached_repo(cache_dir: Path, repo_id: str) -> None:
    """`repo_id`'s config.json in a Hugging Face cache at `cache_dir` (models--owner--name/{refs,snapshots})."""
    repo = cache_dir / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")


def test_local_folders_pass_and_paths_become_strings(tmp_path):
    assert check_model_source(tmp_path) == str(tmp_path)
    assert check_model_source(str(tmp_path)) == str(tmp_path)
    model = object()
    assert check_model_source(model) is model  # a model object is the caller's business


@pytest.mark.parametrize("name", ["./my-model", "outputs/run/checkpoint-10", "~/no/such/model"])
def test_a_missing_folder_says_it_does_not_exist(name):
    with pytest.raises(ModelSourceError, match="does not exist") as error:
        check_model_source(name)
    assert "nft_trl.embedded.EMBEDDED_MODEL" in str(error.value)


def test_offline_and_not_cached_is_one_sentence_with_what_to_pass(tmp_path):
    assert constants.HF_HUB_OFFLINE  # conftest
    with pytest.raises(ModelSourceError) as error:
        check_model_source("Qwen/Qwen2.5-Math-1.5B", {"cache_dir": str(tmp_path)})
    message = str(error.value)
    assert "not in the Hugging Face cache" in message and "offline mode is on (HF_HUB_OFFLINE)" in message
    assert "local folder" in message and "nft_trl.embedded.EMBEDDED_MODEL" in message


def test_offline_and_cached_is_left_to_transformers(tmp_path):
    cached_repo(tmp_path, "owner/cached-model")
    assert check_model_source("owner/cached-model", {"cache_dir": str(tmp_path)}) == "owner/cached-model"
    with pytest.raises(ModelSourceError):  # another revision is not cached
        check_model_source("owner/cached-model", {"cache_dir": str(tmp_path), "revision": "v2"})


def test_unreachable_hub_is_one_sentence(tmp_path, online, monkeypatch):
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # the discard port: nothing listens
    with pytest.raises(ModelSourceError, match=r"http://127.0.0.1:9 cannot be reached \(") as error:
        check_model_source("Qwen/Qwen2.5-Math-1.5B", {"cache_dir": str(tmp_path)})
    assert "nft_trl.embedded.EMBEDDED_MODEL" in str(error.value)


def test_a_hub_that_answers_is_left_to_transformers(tmp_path, online, answering_hub):
    assert hub.hub_unreachable() is None
    assert check_model_source("owner/any-model", {"cache_dir": str(tmp_path)}) == "owner/any-model"


def test_nft_trainer_checks_before_loading(tmp_path):
    from nft_trl import NFTConfig, NFTTrainer, math_verifier

    args = NFTConfig(str(tmp_path / "out"), model_init_kwargs={"cache_dir": str(tmp_path)})
    with pytest.raises(ModelSourceError, match="offline mode is on"):
        NFTTrainer("Qwen/Qwen2.5-Math-1.5B", reward_funcs=[math_verifier], args=args, train_dataset=None)
