"""`nft-trl generate`: K answers per question from a model, judged, written as judged answers (docs/offline.md).

Each answer is one jsonl row: `prompt`, `completion`, `completion_ids` (the generated tokens, with EOS when it
ended), `completion_logps` (the sampling model's log-probability of each token at `temperature`, the quantity the
trainer's `pi_old` is; before top-p truncation, as TRL computes it), `truncated`, `reward` (the verdict reward,
default `math_verifier`; None when it cannot judge), `solution` and `group` (the question's row index). transformers
generation; questions are written a whole group at a time, so a rerun with the same output file skips the questions
already there (and drops a group an interruption left incomplete). Progress is logged with answers and tokens per
second.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch


logger = logging.getLogger(__name__)


def read_done(path: Path, num_answers: int) -> set[str]:
    """Groups complete in `path` (num_answers rows each); rewrites the file without the rest (an interrupted write)."""
    if not path.exists():
        return set()
    rows, dropped = [], 0
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            dropped += 1
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["group"]] = counts.get(row["group"], 0) + 1
    done = {group for group, n in counts.items() if n == num_answers}
    kept = [row for row in rows if row["group"] in done]
    if dropped or len(kept) < len(rows):
        logger.warning(
            "%s: dropped %d unreadable line(s) and %d row(s) of incomplete groups.",
            path,
            dropped,
            len(rows) - len(kept),
        )
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in kept), encoding="utf-8")
    return done


def _prompt_ids(tokenizer, prompt: Any) -> list[int]:
    if isinstance(prompt, str):
        return tokenizer(text=prompt)["input_ids"]
    return list(
        tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
    )


def sample_group(
    model, tokenizer, prompts: list[Any], *, num_answers: int, max_new_tokens: int, temperature: float, top_p: float
) -> list[list[dict[str, Any]]]:
    """`num_answers` sampled answers per prompt: their ids (cut after the first EOS), log-probs and truncation."""
    eos = model.generation_config.eos_token_id
    eos_ids = set(eos if isinstance(eos, list) else [eos]) | {tokenizer.eos_token_id}
    ids = [_prompt_ids(tokenizer, p) for p in prompts]
    width = max(len(i) for i in ids)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = next(model.parameters()).device
    input_ids = torch.tensor([[pad_id] * (width - len(i)) + i for i in ids], device=device)
    attention = torch.tensor([[0] * (width - len(i)) + [1] * len(i) for i in ids], device=device)
    with torch.no_grad():
        out = model.generate(
            input_ids=input_ids,
            attention_mask=attention,
            do_sample=True,
            temperature=temperature,
            top_p=top_p,
            top_k=0,
            max_new_tokens=max_new_tokens,
            num_return_sequences=num_answers,
            output_logits=True,
            return_dict_in_generate=True,
            pad_token_id=pad_id,
        )
    tokens = out.sequences[:, width:]
    logits = torch.stack(out.logits, dim=1).float() / temperature  # (B*K, T, V), before top-p, as TRL's pi_old
    logps = torch.log_softmax(logits, dim=-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1).cpu()
    groups = []
    for q in range(len(prompts)):
        answers = []
        for k in range(num_answers):
            row = q * num_answers + k
            seq = tokens[row].tolist()
            end = next((t for t, token in enumerate(seq) if token in eos_ids), None)
            length = len(seq) if end is None else end + 1
            answers.append({"ids": seq[:length], "logps": logps[row, :length].tolist(), "truncated": end is None})
        groups.append(answers)
    return groups


def generate_judged(
    model,
    tokenizer,
    questions,
    output: str | Path,
    *,
    num_answers: int = 8,
    max_new_tokens: int = 1024,
    temperature: float = 1.0,
    top_p: float = 1.0,
    batch_size: int = 8,
    seed: int = 0,
    reward: Callable[..., list[float | None]] | None = None,
) -> Path:
    """Generate, judge and append to `output` the answers of every question of `questions` (columns `prompt`,
    `solution`) not already there. Returns the output path."""
    if reward is None:
        from ..rewards import math_verifier as reward
    if num_answers < 1 or batch_size < 1 or max_new_tokens < 1 or temperature <= 0:
        raise ValueError("num_answers, batch_size and max_new_tokens must be >= 1 and temperature > 0.")
    for column in ("prompt", "solution"):
        if column not in questions.column_names:
            raise ValueError(f"The questions need a {column!r} column (they have {questions.column_names}).")
    path = Path(output)
    path.parent.mkdir(parents=True, exist_ok=True)
    done = read_done(path, num_answers)
    todo = [i for i in range(len(questions)) if str(i) not in done]
    logger.info("%d of %d questions already answered in %s.", len(questions) - len(todo), len(questions), path)
    started, answers, tokens = time.perf_counter(), 0, 0
    model.eval()
    for start in range(0, len(todo), batch_size):
        chunk = todo[start : start + batch_size]
        rows = [questions[i] for i in chunk]
        torch.manual_seed(seed * 1_000_003 + chunk[0])  # the same answers whatever was done before
        groups = sample_group(
            model,
            tokenizer,
            [r["prompt"] for r in rows],
            num_answers=num_answers,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_p=top_p,
        )
        lines = []
        for index, row, group in zip(chunk, rows, groups, strict=True):
            texts = [tokenizer.decode(a["ids"], skip_special_tokens=True) for a in group]
            completions = (
                texts if isinstance(row["prompt"], str) else [[{"role": "assistant", "content": t}] for t in texts]
            )
            verdicts = reward(
                completions=completions, solution=[row["solution"]] * len(texts), prompts=[row["prompt"]] * len(texts)
            )
            for answer, completion, verdict in zip(group, completions, verdicts, strict=True):
                lines.append(
                    {
                        "prompt": row["prompt"],
                        "completion": completion,
                        "completion_ids": answer["ids"],
                        "completion_logps": answer["logps"],
                        "truncated": answer["truncated"],
                        "reward": None if verdict is None else float(verdict),
                        "solution": row["solution"],
                        "group": str(index),
                    }
                )
                tokens += len(answer["ids"])
        with open(path, "a", encoding="utf-8") as f:  # whole groups per write; fsync before counting them done
            f.write("".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines))
            f.flush()
            os.fsync(f.fileno())
        answers += len(lines)
        elapsed = time.perf_counter() - started
        logger.info(
            "%d/%d questions, %.1f answers/s, %.0f tokens/s.",
            start + len(chunk),
            len(todo),
            answers / elapsed,
            tokens / elapsed,
        )
    return path
