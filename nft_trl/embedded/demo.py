"""The embedded offline demo: NFT on the built-in model and task, with held-out accuracy before and after.

`python examples/train_nft.py` (or `accelerate launch examples/train_nft.py`, or `nft-trl train`) with no model runs
this: it loads the shipped model of `nft_trl.embedded`, trains it with NFT on the embedded task on CPU, prints the
held-out accuracy before and after training, how many held-out questions got more and fewer right answers, one of
those questions before and after, and writes a PNG learning curve to the output directory (about 2 minutes on two
CPU cores).

Every field the user leaves at its default gets the demo's value from `DEMO_DEFAULTS`; anything given on the command
line or in a recipe wins.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback, TrainingArguments

from nft_trl.evaluation.accuracy import evaluate_accuracy

from .model import embedded_path
from .task import INSTRUCTION, make_dataset


logger = logging.getLogger(__name__)

#: Training settings of the demo (fields of NFTConfig), sized for 2 CPU cores and about two minutes: 40 steps take the
#: held-out accuracy from about 53% to about 60%, enough to see learning (more steps keep climbing, noisily).
DEMO_DEFAULTS: dict[str, Any] = {
    "output_dir": "outputs/nft-embedded-demo",
    "learning_rate": 2e-4,
    "lr_scheduler_type": "constant",
    "warmup_steps": 0,
    "max_steps": 40,
    "per_device_train_batch_size": 64,
    "num_generations": 8,
    "max_completion_length": 16,
    "temperature": 1.0,
    "logging_steps": 5,
    "save_strategy": "no",
    "report_to": "none",
    "log_completions": False,
}
DEMO_TRAIN_PROMPTS = 4_000
DEMO_EVAL_PROMPTS = 256
DEMO_EVAL_EVERY = 10  # optimizer steps between two points of the learning curve
DEMO_EVAL_SAMPLES = 4  # sampled answers per held-out problem, at the training temperature
CURVE_FILE = "learning_curve.png"


def activation_checkpointing_off() -> dict[str, bool]:
    """The training-arguments field that turns activation checkpointing off, under this transformers' name:
    transformers 5 renamed `gradient_checkpointing` to `activation_checkpointing` (the old name warns); 4.x has only
    the old one."""
    fields = TrainingArguments.__dataclass_fields__
    return {"activation_checkpointing" if "activation_checkpointing" in fields else "gradient_checkpointing": False}


def demo_defaults() -> dict[str, Any]:
    """`DEMO_DEFAULTS`, activation checkpointing off (a 3.3M-parameter model needs no memory saving), plus fp32 on CPU
    when no GPU is present."""
    defaults = {**DEMO_DEFAULTS, **activation_checkpointing_off()}
    if not torch.cuda.is_available():
        defaults.update(use_cpu=True, bf16=False)
    return defaults


class HeldOutAccuracyCallback(TrainerCallback):
    """Accuracy on a held-out set every `every` optimizer steps (main process only), graded by `reward_fn`
    (default `math_verifier`).

    `num_samples` answers per problem at `temperature` (the sampling temperature of training by default), seeded so
    that every point of the curve is measured alike; `temperature=0.0` is greedy decoding.
    """

    def __init__(
        self,
        tokenizer,
        dataset,
        *,
        every: int = DEMO_EVAL_EVERY,
        max_new_tokens: int = 16,
        num_samples: int = DEMO_EVAL_SAMPLES,
        temperature: float = 1.0,
        reward_fn=None,
    ):
        self.tokenizer, self.dataset, self.every, self.max_new_tokens = tokenizer, dataset, every, max_new_tokens
        self.num_samples, self.temperature, self.reward_fn = num_samples, temperature, reward_fn
        self.curve: list[tuple[int, float]] = []
        self.first = self.last = None  # the `EvalResult`s of the first and the latest point

    def evaluate(self, model, step: int):
        self.last = evaluate_accuracy(
            model,
            self.tokenizer,
            self.dataset,
            num_samples=self.num_samples,
            temperature=self.temperature,
            max_new_tokens=self.max_new_tokens,
            reward_fn=self.reward_fn,
            num_examples=len(self.dataset) * self.num_samples,  # every answer, to show one question before and after
        )
        self.first = self.first or self.last
        self.curve.append((step, self.last.accuracy))
        return self.last

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.is_world_process_zero and (
            state.global_step % self.every == 0 or state.global_step == state.max_steps
        ):
            self.evaluate(model, state.global_step)
            logger.info("step %d: held-out accuracy %.1f%%", state.global_step, 100 * self.curve[-1][1])


def load_demo(training_args):
    """The embedded model's local path, its tokenizer, the training prompts and the held-out set."""
    from transformers import AutoTokenizer

    path = str(embedded_path())  # the shipped model (loaded in float32, the dtype of its config)
    tokenizer = AutoTokenizer.from_pretrained(path)
    train = make_dataset("train", DEMO_TRAIN_PROMPTS, seed=training_args.seed)
    held_out = make_dataset("test", DEMO_EVAL_PROMPTS, seed=0)
    return path, tokenizer, train, held_out


def _question(example: dict[str, Any]) -> str:
    question = example["prompt"].split("user\n")[-1].split("<|im_end|>")[0].strip()
    return question.removesuffix(INSTRUCTION).strip()


def _answers(result, index: int) -> list[dict[str, Any]]:
    return result.examples[index * result.num_samples : (index + 1) * result.num_samples]


def _right(answers: list[dict[str, Any]]) -> int:
    return sum(answer["reward"] == 1.0 for answer in answers)


def print_before(result) -> None:
    """The held-out accuracy of the untrained model."""
    how = f"{result.num_samples} samples per problem"
    print(f"\nBefore training: held-out accuracy {result.accuracy:.1%} ({result.num_prompts} problems, {how})")


def print_comparison(first, last) -> None:
    """How many held-out questions got more and fewer right answers, and the one whose count rose the most, before
    and after (labelled as what it is: one picked question, whose samples alone would be noise)."""
    counts = [(_right(_answers(first, i)), _right(_answers(last, i))) for i in range(first.num_prompts)]
    rose = sum(after > before for before, after in counts)
    fell = sum(after < before for before, after in counts)
    k = first.num_samples
    print(
        f"\nPer held-out question ({len(counts)}, {k} answers each): {rose} got more right answers after training, "
        f"{fell} fewer, {len(counts) - rose - fell} the same."
    )
    index = max(range(len(counts)), key=lambda i: counts[i][1] - counts[i][0])
    if counts[index][1] <= counts[index][0]:
        return
    print("The question whose right answers rose the most (one question is noise; the accuracy below is the measure):")
    for title, result in (("before", first), ("after ", last)):
        answers = _answers(result, index)
        graded = "  ".join(f"{a['completion'].strip()} {'right' if a['reward'] == 1.0 else 'wrong'}" for a in answers)
        right = _right(answers)
        if title == "before":
            print(f"  {_question(answers[0])}  (gold {answers[0]['solution']})")
        print(f"    {title}: {right} of {k} right   {graded}")


def report(callback: HeldOutAccuracyCallback, output_dir: str) -> dict[str, float]:
    """Print before/after accuracy and write the learning curve PNG; returns the two accuracies."""
    before, after = callback.curve[0][1], callback.curve[-1][1]
    how = "greedy" if callback.temperature == 0 else f"{callback.num_samples} samples at T={callback.temperature}"
    print(f"\nHeld-out accuracy ({len(callback.dataset)} problems, {how}): {before:.1%} before -> {after:.1%} after")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(output_dir) / CURVE_FILE
    steps, accuracy = zip(*callback.curve, strict=True)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(steps, [100 * a for a in accuracy], marker="o")
    ax.set(xlabel="optimizer step", ylabel="held-out accuracy (%)", title="NFT on the embedded task")
    ax.grid(alpha=0.3)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    print(f"Learning curve: {path}")
    return {"before": before, "after": after}
