"""`nft-trl generate`: K answers per question from a model, judged, written as judged answers (docs/offline.md).

Each answer is one jsonl row: `prompt`, `completion`, `completion_ids` (the generated tokens, with EOS when it
ended), `completion_logps` (the sampling model's log-probability of each token at `temperature`, the quantity the
trainer's `pi_old` is; before top-p truncation, as TRL computes it), `truncated`, `reward` (the verdict reward,
default `math_verifier`, which gets every question column but `prompt`, as TRL passes a dataset's columns; None when
it cannot judge), `solution` (when the questions have one) and `group` (the question's row index). transformers
generation, or TRL's vLLM server through TRL's own client (`vllm_sample_group`); questions are written a whole group
at a time, so a rerun with the same output file skips the questions already there (and drops a group an interruption
left incomplete). Progress is logged with answers and tokens per second and an ETA.

Several processes (`torchrun` / `accelerate launch`, which set RANK and WORLD_SIZE): process r of n takes the
questions whose index is r modulo n and writes its own shard, `answers.rank{r}.jsonl` for `answers.jsonl`
(`shard_path`). There is no collective: a process that dies stops no other, and each shard resumes on its own. A
rerun with another number of processes skips the questions done in any shard. `output_files` lists the file and its
shards; `nft_trl.offline.load_judged` reads them all from the output's name.

Next to each file it writes, `generate_judged` records how its answers were made, `<file>.settings.json`
(`nft_trl.offline.settings`), and a resume with other answer-changing settings stops before generating.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..sampling import generate_per_prompt
from .dataset import group_summary
from .settings import build_settings, check_resume, has_rows, settings_path, write_settings


logger = logging.getLogger(__name__)


def shard_path(output: str | Path, rank: int, world_size: int) -> Path:
    """The file process `rank` of `world_size` writes: `output` itself for one process, else `<stem>.rank<r><suffix>`."""
    output = Path(output)
    return output if world_size == 1 else output.with_name(f"{output.stem}.rank{rank}{output.suffix}")


def output_files(output: str | Path) -> list[Path]:
    """`output` (when it exists) and its shards `<stem>.rank<r><suffix>`, by rank."""
    output = Path(output)
    pattern = re.compile(rf"^{re.escape(output.stem)}\.rank(\d+){re.escape(output.suffix)}$")
    shards = []
    if output.parent.is_dir():
        shards = [(int(m.group(1)), p) for p in output.parent.iterdir() if (m := pattern.match(p.name))]
    return ([output] if output.is_file() else []) + [p for _, p in sorted(shards)]


def read_done(path: Path, num_answers: int, rewrite: bool = True) -> set[str]:
    """Groups complete in `path` (num_answers rows each). With `rewrite`, the file is atomically replaced by one
    without the rest (an interrupted write); a process reads the files others write with `rewrite=False`."""
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
    if rewrite and (dropped or len(kept) < len(rows)):
        logger.warning(
            "%s: dropped %d unreadable line(s) and %d row(s) of incomplete groups.",
            path,
            dropped,
            len(rows) - len(kept),
        )
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in kept), encoding="utf-8")
        os.replace(tmp, path)  # readers in other processes see the old file or the new one, never half of it
    return done


def summarize(paths: list[Path], threshold: float = 0.5) -> dict[str, float]:
    """Answers, groups, correct rate and share of mixed groups (a right and a wrong scored answer) of judged-answer
    files; answers that could not be judged (`reward` None) count neither way."""
    hits: dict[str, int] = {}
    counts: dict[str, int] = {}
    answers = 0
    for path in paths:
        lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []  # none written yet
        for line in lines:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            answers += 1
            key = f"{row['group']}"
            hits.setdefault(key, 0)
            counts.setdefault(key, 0)
            if row.get("reward") is not None:
                counts[key] += 1
                hits[key] += int(row["reward"] >= threshold)
    return {"answers": answers, **group_summary(hits, counts)}


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
        out = generate_per_prompt(
            model,
            input_ids,
            attention,
            num_answers,
            do_sample=True,
            temperature=temperature,
            top_p=top_p,
            top_k=0,
            max_new_tokens=max_new_tokens,
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


def vllm_sample_group(
    client, tokenizer, prompts: list[Any], *, num_answers: int, max_new_tokens: int, temperature: float, top_p: float
) -> list[list[dict[str, Any]]]:
    """As `sample_group`, from TRL's vLLM server through TRL's client (`trl.generation.vllm_client.VLLMClient`):
    prompt token ids in, the sampled ids and the log-probability vLLM gives of each sampled token out. Not exercised
    by the tests (no vLLM, no GPU there); the server's log-probabilities are `pi_old` only when it reports them after
    temperature scaling (`--logprobs-mode processed_logprobs`, as TRL's documentation starts it)."""
    eos_ids = {tokenizer.eos_token_id}
    out = client.generate(
        prompts=[_prompt_ids(tokenizer, p) for p in prompts],
        n=num_answers,
        temperature=temperature,
        top_p=top_p,
        top_k=0,
        max_tokens=max_new_tokens,
        logprobs=0,
    )
    groups = []
    for q in range(len(prompts)):
        answers = []
        for k in range(num_answers):
            row = q * num_answers + k  # vLLM returns a prompt's n completions together, prompt by prompt
            seq, logps = list(out["completion_ids"][row]), [position[0] for position in out["logprobs"][row]]
            end = next((t for t, token in enumerate(seq) if token in eos_ids), None)
            length = len(seq) if end is None else end + 1
            truncated = end is None and len(seq) >= max_new_tokens
            answers.append({"ids": seq[:length], "logps": logps[:length], "truncated": truncated})
        groups.append(answers)
    return groups


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


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
    rank: int = 0,
    world_size: int = 1,
    vllm_client=None,
    model_name: str | None = None,
) -> Path:
    """Generate, judge and append the answers of every question of `questions` (a `prompt` column; every other
    column, such as `solution`, goes to the reward) not already in `output` or its shards. Process `rank` of
    `world_size` takes the questions whose index is `rank` modulo `world_size` and writes
    `shard_path(output, rank, world_size)`, which it returns. With `vllm_client` (a TRL `VLLMClient`) the answers come
    from the vLLM server and `model` is not used.

    The settings (`model_name`, default the model's `name_or_path`; `num_answers`, `temperature`, `top_p`,
    `max_new_tokens`, `seed`, the reward's name, the backend, the nft-trl version) are written atomically to
    `<file>.settings.json` before the file's first answers. On resume, before anything is read, rewritten or
    generated, every file of `output` that holds answers and a settings file must record the same answer-changing
    settings (`settings.ANSWER_SETTINGS`), else a `ValueError` names each differing setting with both values.

    A file holding answers but no settings file (written by an nft-trl before settings files) is accepted and this
    run's settings are recorded for it, with a warning: nothing says how its answers were made, refusing would leave
    every such file impossible to resume (no settings could satisfy the check), and a resume is usually the same
    command again. Recording the settings once makes every later resume checked.
    """
    if reward is None:
        from ..rewards import math_verifier as reward
    if num_answers < 1 or batch_size < 1 or max_new_tokens < 1 or temperature <= 0:
        raise ValueError("num_answers, batch_size and max_new_tokens must be >= 1 and temperature > 0.")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in 0..{world_size - 1} (world_size {world_size}).")
    if "prompt" not in questions.column_names:
        raise ValueError(f"The questions need a 'prompt' column (they have {questions.column_names}).")
    # The reward gets every other column, one value per answer, as TRL passes a dataset's columns to a reward
    # function: `solution` for math_verifier, `numbers` and `target` for countdown_reward.
    columns = [c for c in questions.column_names if c != "prompt"]
    path = shard_path(output, rank, world_size)
    path.parent.mkdir(parents=True, exist_ok=True)
    loaded_from = (getattr(model, "name_or_path", None) or None) if model is not None else None  # None: in memory
    settings = build_settings(
        model=model_name if model_name is not None else loaded_from,
        model_folder=loaded_from,
        num_answers=num_answers,
        temperature=temperature,
        top_p=top_p,
        max_new_tokens=max_new_tokens,
        seed=seed,
        reward=reward,
        backend="transformers" if vllm_client is None else "vllm server",
    )
    # Before anything is read (read_done rewrites files) or generated: the files' answers were made as these will be.
    unrecorded = check_resume(output_files(output), settings)
    for other in unrecorded:
        if other == path:
            logger.warning(
                "%s holds answers but no settings file (an older nft-trl generate): assuming they were made with "
                "this run's settings, now recorded in %s. If they were not, stop and write to another output.",
                path,
                settings_path(path).name,
            )
        else:
            logger.info("%s has no settings file (an older nft-trl generate); its questions are skipped.", other)
    done = read_done(path, num_answers)
    # Files no current process writes (the other shards of an earlier run with more or fewer processes): process 0
    # cleans them; the shards of the other current processes are only read (they hold none of this one's questions).
    writers = {shard_path(output, r, world_size) for r in range(world_size)}
    for other in output_files(output):
        if other != path:
            done |= read_done(other, num_answers, rewrite=rank == 0 and other not in writers)
    mine = range(rank, len(questions), world_size)
    todo = [i for i in mine if str(i) not in done]
    logger.info(
        "Process %d of %d: %d of its %d questions already answered; writing %s.",
        rank,
        world_size,
        len(mine) - len(todo),
        len(mine),
        path,
    )
    if todo or has_rows(path):
        write_settings(path, settings)  # before the first answers: a file with answers always has its settings
    started, answers, tokens = time.perf_counter(), 0, 0
    if vllm_client is None:
        model.eval()
    for start in range(0, len(todo), batch_size):
        chunk = todo[start : start + batch_size]
        rows = [questions[i] for i in chunk]
        torch.manual_seed(seed * 1_000_003 + chunk[0])  # the same answers whatever was done before
        sampler = sample_group if vllm_client is None else vllm_sample_group
        groups = sampler(
            model if vllm_client is None else vllm_client,
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
                completions=completions,
                prompts=[row["prompt"]] * len(texts),
                **{c: [row[c]] * len(texts) for c in columns},
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
                        **({"solution": row["solution"]} if "solution" in row else {}),
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
        finished = start + len(chunk)
        logger.info(
            "Process %d: %d/%d questions, %.2f answers/s, %.0f tokens/s, %s elapsed, ETA %s.",
            rank,
            finished,
            len(todo),
            answers / elapsed,
            tokens / elapsed,
            _duration(elapsed),
            _duration(elapsed / finished * (len(todo) - finished)),
        )
    return path
