"""Look inside one run of the offline comparison: what the model answers before and after training.

`compare_offline.py` keeps only each run's metrics. This script retrains one of its runs exactly as the protocol
does (same starting model, judged dataset, trainer settings and seed) and prints, before and after, the greedy and
a few sampled answers to the first validation questions, the lengths of the sampled answers, how many of them are
distinct and right, and the trainer's logged metrics along the way. It writes nothing.

    python benchmarks/inspect_offline.py --task countdown --start countdown2 --method kto --lr 2e-4 --epochs 1
"""

from __future__ import annotations

import argparse
import collections
import sys
import tempfile
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parent))

import compare_algorithms as online  # noqa: E402
import compare_offline as offline  # noqa: E402
import torch  # noqa: E402
from transformers import PrinterCallback  # noqa: E402

from nft_trl.embedded import make_dataset, task_reward  # noqa: E402
from nft_trl.embedded.config import TASKS  # noqa: E402


LOGGED = ("loss", "kl", "rewards/chosen", "rewards/rejected", "logps/chosen", "logps/rejected", "entropy")


def show(model, tokenizer, questions, reward, samples: int, shown: int, max_new_tokens: int, tag: str) -> None:
    model.eval()
    print(f"--- {tag}", flush=True)
    lengths, texts, right = collections.Counter(), collections.Counter(), 0
    for i, row in enumerate(questions):
        inputs = tokenizer.apply_chat_template(
            row["prompt"], add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
        n = inputs["input_ids"].shape[1]
        torch.manual_seed(i)
        with torch.no_grad():
            common = dict(max_new_tokens=max_new_tokens, pad_token_id=tokenizer.eos_token_id)
            greedy = model.generate(**inputs, do_sample=False, **common)
            sampled = model.generate(**inputs, do_sample=True, temperature=1.0, num_return_sequences=samples, **common)
        answers = [tokenizer.decode(s[n:], skip_special_tokens=True) for s in sampled]
        columns = {k: [v] * samples for k, v in row.items() if k != "prompt"}
        right += sum(v or 0 for v in reward(completions=answers, **columns))
        texts.update(answers)
        for s in sampled:
            lengths[sum(int(t != tokenizer.eos_token_id) for t in s[n:].tolist())] += 1
        if i < shown:
            question = row["prompt"][-1]["content"].replace("\n", " ")[:90]
            greedy_text = tokenizer.decode(greedy[0, n:], skip_special_tokens=True)
            print(f"Q: {question}\n   greedy {greedy_text!r}; sampled {answers[:3]}")
    total = samples * len(questions)
    print(f"sampled answers right: {right:g} of {total}")
    print(f"answer lengths in tokens ({max_new_tokens} = cut at the limit): {sorted(lengths.items())}")
    print(f"distinct sampled answers: {len(texts)} of {total}; most common: {texts.most_common(3)}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", choices=TASKS, default="addition")
    parser.add_argument("--out", default=None, help="the grid's folder, as in compare_offline.py")
    parser.add_argument("--online_out", default=None, help="the online grid's folder, as in compare_offline.py")
    parser.add_argument("--pilot", action="store_true", help="the pilot's settings, as in compare_offline.py")
    parser.add_argument("--start", required=True, help="a starting model of the task, e.g. build1 or countdown2")
    parser.add_argument("--method", choices=offline.METHODS, required=True)
    parser.add_argument("--lr", type=float, required=True)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--seed", type=int, default=100)
    parser.add_argument("--questions", type=int, default=16, help="validation questions to answer")
    parser.add_argument("--samples", type=int, default=4, help="sampled answers per question")
    parser.add_argument("--shown", type=int, default=6, help="questions whose answers are printed")
    opts = parser.parse_args(argv)
    offline.quiet()

    settings, out, online_out = offline.locate(opts.task, opts.pilot, opts.out, opts.online_out)
    if opts.start not in settings.starts:
        raise SystemExit(f"--start must be one of {list(settings.starts)} for --task {opts.task}, got {opts.start!r}.")
    starts = offline.Starts(settings, out, online_out)
    data = starts.data_path(opts.start)
    if not data.exists():
        raise SystemExit(f"{data} is missing: make it with compare_offline.py --phase data --only start={opts.start}.")
    path, _ = starts.model(opts.start)
    model, tokenizer = offline.load_start(path)
    config = online.STARTS[opts.start]
    questions = make_dataset("validation", opts.questions, seed=online.DATA_SEED, config=config)
    reward = task_reward(config)
    look = (reward, opts.samples, opts.shown, settings.max_completion_length)
    show(model, tokenizer, questions, *look, f"{opts.start}, before training")

    rows = offline.read_answers(data)
    with tempfile.TemporaryDirectory() as output_dir:
        torch.manual_seed(opts.seed)
        args = offline.common_args(settings, output_dir, opts.lr, opts.seed, opts.epochs)
        trainer, _ = offline.make_trainer(settings, opts.method, model, tokenizer, rows, args, opts.seed)
        trainer.remove_callback(PrinterCallback)
        trainer.train()
    logged = [h for h in trainer.state.log_history if "loss" in h]
    for h in logged[:: max(1, len(logged) // 8)] + logged[-1:]:
        print({"step": h["step"], **{k: round(h[k], 4) for k in LOGGED if k in h}})
    tag = f"after {opts.method} for {opts.epochs} epoch(s) at {opts.lr:g}, seed {opts.seed}"
    show(model, tokenizer, questions, *look, tag)
    return 0


if __name__ == "__main__":
    sys.exit(main())
