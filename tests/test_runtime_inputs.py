"""Bad input fails before the first step, with the fix (nft_trl.runtime.inputs, nft_trl.runtime.run_lock).

One test per failure; each builds a real NFTTrainer (or runs the real CLI script) on the tiny local model and checks
that the message names what to change. Nothing here trains: every failure comes at construction.
"""

import fcntl
import gc
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import textwrap

import pytest
from conftest import REPO_ROOT, cpu_training_args
from datasets import Dataset

from nft_trl import NFTConfig, NFTTrainer, math_verifier
from nft_trl.cli.train import NFTScriptArguments, load_datasets
from nft_trl.data import prompt_length
from nft_trl.rewards import countdown_reward
from nft_trl.runtime.inputs import check_context
from nft_trl.runtime.run_lock import LOCK_FILE_NAME


def half_right(completions, **kwargs):
    return [float(i % 2) for i in range(len(completions))]


def chat(content, role="user"):
    return [{"role": role, "content": content}]


def questions(n=8, **columns):
    return Dataset.from_dict({"prompt": [chat(f"What is {i} + {i}?") for i in range(n)], **columns})


def config(output_dir, **overrides):
    return NFTConfig(**cpu_training_args(output_dir, **{"max_completion_length": 6, "max_steps": 1, **overrides}))


def build(model, tokenizer, output_dir, train_dataset, reward=half_right, **overrides):
    args = config(output_dir, **overrides)
    return NFTTrainer(model, reward_funcs=reward, args=args, train_dataset=train_dataset, processing_class=tokenizer)


def child_env():
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1", TOKENIZERS_PARALLELISM="false")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")])
    return env


# ------------------------------------------------------------------------------------------------ datasets and rows
def test_empty_dataset_fails_at_construction(tmp_path, tiny_model, tiny_tokenizer):
    empty = Dataset.from_dict({"prompt": [], "solution": []})
    with pytest.raises(ValueError, match="train dataset has no rows.*Check the split"):
        build(tiny_model, tiny_tokenizer, tmp_path / "out", empty)


def test_fewer_prompts_than_one_generation_batch_fails(tmp_path, tiny_model, tiny_tokenizer):
    # 8 answers per batch in groups of 4: 2 distinct prompts. TRL's sampler would drop the incomplete batch: 0 steps.
    with pytest.raises(ValueError, match="1 prompt.*takes 2 distinct prompts.*lower per_device_train_batch_size"):
        build(tiny_model, tiny_tokenizer, tmp_path / "out", questions(1))


def test_missing_prompt_column_fails_at_construction(tmp_path, tiny_model, tiny_tokenizer):
    dataset = questions().rename_column("prompt", "question")
    with pytest.raises(ValueError, match=r"no 'prompt' column \(it has \['question'\]\).*rename_column"):
        build(tiny_model, tiny_tokenizer, tmp_path / "out", dataset)


@pytest.mark.parametrize(
    ("row", "message", "problem"),
    [
        (3, {"content": "What is 3 + 3?"}, r"row 3: message 0 has no 'role'"),
        (5, {"role": "bot", "content": "What is 5 + 5?"}, r"row 5: message 0 has role 'bot'"),
        (6, {"role": "user"}, r"row 6: message 0 \(user\) has no 'content'"),
    ],
)
def test_malformed_message_names_the_row(tmp_path, tiny_model, tiny_tokenizer, row, message, problem):
    prompts = [chat(f"What is {i} + {i}?") for i in range(8)]
    prompts[row] = [message]
    dataset = Dataset.from_list([{"prompt": prompt} for prompt in prompts])
    with pytest.raises(ValueError, match=problem + r".*'role' \(one of system, developer, user, assistant, tool\)"):
        build(tiny_model, tiny_tokenizer, tmp_path / "out", dataset)


def test_empty_string_prompt_names_the_row(tmp_path, tiny_model, tiny_tokenizer):
    dataset = Dataset.from_dict({"prompt": ["What is 1 + 1?", " ", "", "What is 2 + 2?"]})
    with pytest.raises(ValueError, match=r"row 1: the prompt is an empty string \(1 more rows.*dataset.filter"):
        build(tiny_model, tiny_tokenizer, tmp_path / "out", dataset, per_device_train_batch_size=4)


# --------------------------------------------------------------------------------------------- reward columns
@pytest.mark.parametrize(
    ("reward", "missing"),
    [(math_verifier, r"\['solution'\]"), (countdown_reward, r"\['numbers', 'target'\]")],
    ids=["math_verifier", "countdown_reward"],
)
def test_reward_without_its_gold_column_fails_at_construction(tmp_path, tiny_model, tiny_tokenizer, reward, missing):
    # math_verifier's `solution` has a default in its signature: it is required through `required_columns`.
    with pytest.raises(ValueError, match=missing + r".*lacks.*rename"):
        build(tiny_model, tiny_tokenizer, tmp_path / "out", questions(), reward=[reward])


def test_custom_reward_declares_its_columns(tmp_path, tiny_model, tiny_tokenizer):
    def graded(completions, answer=None, **kwargs):
        return [float(a == "0") for a in answer]

    graded.required_columns = ("answer",)
    with pytest.raises(ValueError, match=r"'graded' needs the dataset column\(s\) \['answer'\]"):
        build(tiny_model, tiny_tokenizer, tmp_path / "out", questions(), reward=[graded])
    build(tiny_model, tiny_tokenizer, tmp_path / "ok", questions(answer=["0"] * 8), reward=[graded])


# ------------------------------------------------------------------------------------------ max_prompt_length (CLI)
def write_jsonl(path, contents):
    path.write_text("".join(json.dumps({"prompt": chat(c), "solution": "2"}) + "\n" for c in contents))
    return path


def test_cli_max_prompt_length_dropping_every_prompt_fails(tmp_path, tiny_model_path):
    data = write_jsonl(tmp_path / "train.jsonl", [f"What is {i} + 1?" for i in range(8)])
    script = [sys.executable, "-m", "nft_trl.cli.train", "--model_name_or_path", tiny_model_path]
    flags = ["--dataset_name", str(data), "--max_prompt_length", "5", "--output_dir", str(tmp_path / "out")]
    flags += ["--use_cpu", "--report_to", "none", "--reward_funcs", "math_verifier"]
    result = subprocess.run(
        [*script, *flags], cwd=tmp_path, env=child_env(), capture_output=True, text=True, timeout=300
    )
    assert result.returncode != 0, result.stdout[-2000:]
    assert "max_prompt_length=5 drops every prompt" in result.stderr, result.stderr[-3000:]
    assert "Raise max_prompt_length to at least" in result.stderr
    assert not (tmp_path / "out" / "model.safetensors").exists()


def test_max_prompt_length_warns_with_the_count(tmp_path, tiny_tokenizer, caplog):
    data = write_jsonl(tmp_path / "train.jsonl", ["What is 1 + 1?"] * 6 + ["What is 1 + 1? " * 40] * 2)
    short = prompt_length(chat("What is 1 + 1?"), tiny_tokenizer)
    script_args = NFTScriptArguments(dataset_name=str(data), max_prompt_length=short)
    with caplog.at_level(logging.WARNING, logger="nft_trl.data"):
        train, _ = load_datasets(script_args, config(tmp_path / "out"), tiny_tokenizer)
    assert len(train) == 6
    assert [r.levelno for r in caplog.records if r.name == "nft_trl.data"] == [logging.WARNING]
    assert f"max_prompt_length={short}: dropped 2 of 8 prompts" in caplog.text


# ----------------------------------------------------------------------------------------- the model's context
def test_prompts_longer_than_the_context(tmp_path, tiny_model, tiny_tokenizer, caplog):
    context = tiny_model.config.max_position_embeddings
    short, long = "What is 1 + 1?", "What is 1 + 1? " * 20
    room = context - prompt_length(chat(short), tiny_tokenizer)  # the short prompt plus this many tokens fit exactly
    assert prompt_length(chat(long), tiny_tokenizer) > prompt_length(chat(short), tiny_tokenizer)

    every = Dataset.from_dict({"prompt": [chat(long)] * 8})
    with pytest.raises(ValueError, match=r"Every one of the train dataset's prompts is too long.*max_prompt_length"):
        build(tiny_model, tiny_tokenizer, tmp_path / "out", every, max_completion_length=room)

    some = Dataset.from_dict({"prompt": [chat(short)] * 5 + [chat(long)] * 3})
    with caplog.at_level(logging.WARNING, logger="nft_trl.runtime.inputs"):
        build(tiny_model, tiny_tokenizer, tmp_path / "out", some, max_completion_length=room)
    assert "3 of the train dataset's prompts are too long" in caplog.text
    assert f"max_position_embeddings={context}" in caplog.text and "lower max_completion_length" in caplog.text


def test_context_check_on_a_sample_estimates_the_share():
    warning = check_context([10] * 250 + [600] * 6, max_completion_length=100, context=512, num_rows=17_000)
    assert warning.startswith("6 of the 256 prompts sampled from the train dataset (about 2% of its 17000 rows)")
    assert check_context([10] * 256, max_completion_length=100, context=512, num_rows=17_000) is None
    with pytest.raises(ValueError, match="Every one of the 256 prompts sampled.*413 to 923 tokens"):
        check_context(list(range(413, 925, 2)), max_completion_length=100, context=512, num_rows=17_000)


# --------------------------------------------------------------------------------------------- the output folder
def test_unwritable_output_dir_fails_at_construction(tmp_path, tiny_model, tiny_tokenizer):
    (tmp_path / "a_file").write_text("not a folder")
    with pytest.raises(ValueError, match=r"output_dir .*a_file/out cannot be written.*Choose a folder"):
        build(tiny_model, tiny_tokenizer, tmp_path / "a_file" / "out", questions())


def test_read_only_output_dir_fails_at_construction(tmp_path, tiny_model, tiny_tokenizer):
    read_only = tmp_path / "read_only"
    read_only.mkdir(mode=0o500)
    immutable = os.geteuid() == 0  # root writes through permissions: make the folder immutable instead
    if immutable and (shutil.which("chattr") is None or subprocess.run(["chattr", "+i", read_only]).returncode):
        pytest.skip("running as root on a file system without chattr +i: no folder is read-only")
    try:
        with pytest.raises(ValueError, match=r"read_only cannot be written \(PermissionError.*Choose a folder"):
            build(tiny_model, tiny_tokenizer, read_only, questions())
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", read_only], check=True)


HOLDER = """
import sys, time
from datasets import Dataset
from nft_trl import NFTConfig, NFTTrainer

def reward(completions, **kwargs):
    return [0.0] * len(completions)

args = NFTConfig(output_dir=sys.argv[2], use_cpu=True, report_to="none", per_device_train_batch_size=8,
                 num_generations=4, max_completion_length=6, bf16=False)
prompts = [[{"role": "user", "content": f"What is {i} + {i}?"}] for i in range(8)]
trainer = NFTTrainer(sys.argv[1], reward_funcs=reward, args=args, train_dataset=Dataset.from_dict({"prompt": prompts}))
print("holding", flush=True)
time.sleep(600)
"""


def test_second_live_run_on_the_output_dir_fails_and_a_killed_one_leaves_no_lock(
    tmp_path, tiny_model_path, tiny_model, tiny_tokenizer
):
    out = tmp_path / "out"
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(HOLDER), tiny_model_path, str(out)],
        env=child_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        lines = iter(holder.stdout.readline, "")  # until "holding", or the end if the first run failed
        assert any(line.strip() == "holding" for line in lines), f"the first run exited with {holder.wait()}"
        with pytest.raises(ValueError, match=rf"in use by another training run \(pid {holder.pid} on host .*another"):
            build(tiny_model, tiny_tokenizer, out, questions())
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=60)
    # The kernel dropped the killed run's lock: the folder is free, and the lock file names the new holder.
    trainer = build(tiny_model, tiny_tokenizer, out, questions())
    assert json.loads((out / LOCK_FILE_NAME).read_text())["pid"] == os.getpid()
    del trainer


def test_same_process_builds_a_second_trainer_on_its_folder(tmp_path, tiny_model, tiny_tokenizer):
    out = tmp_path / "out"
    first = build(tiny_model, tiny_tokenizer, out, questions())
    second = build(tiny_model, tiny_tokenizer, out, questions())  # a notebook re-running its cell
    with open(out / LOCK_FILE_NAME) as file, pytest.raises(BlockingIOError):
        fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)  # still held: by this process, for those trainers
    del first, second
    gc.collect()
    with open(out / LOCK_FILE_NAME) as file:
        fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released with the last trainer
