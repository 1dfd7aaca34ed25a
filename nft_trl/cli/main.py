"""The `nft-trl` command: one dispatcher (`main`) for its five sub-commands.

    nft-trl train --config Qwen2.5-Math-7B/nft/config_paper [--any_field value ...] [--any accelerate flag ...]
    nft-trl check --config Qwen2.5-Math-7B/nft/config_paper [--num_processes N] [--gpu_memory_gb 80]
    nft-trl eval --model PATH --benchmarks aime24,aime25,amc23,math500,minerva,olympiadbench --preset paper
    nft-trl generate --model PATH --dataset FILE --output answers.jsonl --num_answers 8
    nft-trl vllm-serve --model Qwen/Qwen2.5-Math-7B [--tensor_parallel_size 1] ...

`train`, `check` and `vllm-serve` live in `nft_trl.cli.launch`; `eval` and `generate` are below. `python -m nft_trl.cli ...` is the
same without the console script (pyproject: `nft-trl = "nft_trl.cli:main"`). Each command takes the arguments after
its name and returns an exit code; bad input ends with a message that names the fix, not a traceback.
"""

from __future__ import annotations

import argparse
import difflib
import logging
import sys
import time
from collections.abc import Callable, Sequence

from .common import exit_code


def build_eval_parser() -> argparse.ArgumentParser:
    from nft_trl.evaluation import PAPER_BENCHMARKS, PRESETS

    p = argparse.ArgumentParser(
        prog="nft-trl eval",
        description="Evaluate a checkpoint the paper's way (avg@k, pass@k, maj@k with 95%% bootstrap intervals). "
        "Explicit sampling flags override the preset. Rerunning with the same --output_dir resumes: finished "
        "problems are read back, not regenerated.",
    )
    p.add_argument(
        "--model",
        required=True,
        help="Local checkpoint folder or Hub id (owner/name). A value that starts with '.', '/' or '~', or has more "
        "than one '/', is a folder and must exist.",
    )
    p.add_argument(
        "--benchmarks",
        default=",".join(PAPER_BENCHMARKS),
        help="Comma-separated names (aime24, aime25, amc23, math500, minerva, olympiadbench, gsm8k) or "
        "name=path/to/file.jsonl or name=owner/dataset[:split] (default: %(default)s).",
    )
    p.add_argument(
        "--preset", default="paper", choices=sorted(PRESETS), help="Sampling protocol (default: %(default)s)."
    )
    p.add_argument("--n", type=int, default=None, help="Samples per problem for every benchmark (default: preset).")
    p.add_argument("--temperature", type=float, default=None, help="Default: preset. 0 means greedy.")
    p.add_argument("--top_p", type=float, default=None, help="Default: preset.")
    p.add_argument("--max_tokens", type=int, default=None, help="Max new tokens per completion (default: preset).")
    p.add_argument("--seed", type=int, default=0, help="Sampling and bootstrap seed (default: %(default)s).")
    p.add_argument(
        "--backend", default="auto", choices=["auto", "vllm", "transformers"], help="Default auto: vLLM if installed."
    )
    p.add_argument(
        "--prompt_template",
        default="chat",
        choices=["chat", "raw"],
        help="Chat template or raw text (default: %(default)s).",
    )
    p.add_argument(
        "--limit", type=int, default=None, help="Only the first N problems of each benchmark (smoke tests)."
    )
    p.add_argument(
        "--data_dir", default=None, help="Folder of benchmark files (default: $NFT_TRL_BENCHMARKS_DIR, else Hub)."
    )
    p.add_argument("--output_dir", default=None, help="Default: outputs/eval/<model folder name>-<preset>.")
    p.add_argument("--batch_size", type=int, default=None, help="Problems per generate call (and per checkpoint).")
    p.add_argument("--dtype", default="auto", help="auto, bfloat16, float16 or float32 (default: %(default)s).")
    p.add_argument(
        "--device",
        default=None,
        help="transformers backend: cuda, cpu, or auto to spread the model over all GPUs (default: cuda if available).",
    )
    p.add_argument("--tensor_parallel_size", type=int, default=None, help="vLLM tensor parallelism.")
    p.add_argument("--gpu_memory_utilization", type=float, default=None, help="vLLM GPU memory fraction.")
    p.add_argument("--max_model_len", type=int, default=None, help="vLLM context length (prompt + completion).")
    p.add_argument(
        "--bootstrap_resamples", type=int, default=1000, help="Bootstrap replicates (default: %(default)s)."
    )
    return p


def eval_main(argv: list[str]) -> int:
    """`nft-trl eval`: evaluate a checkpoint on math benchmarks."""
    from pathlib import Path

    from .environment import missing_model_folder

    try:
        args = build_eval_parser().parse_args(argv)
    except SystemExit as exit_:
        return exit_code(exit_)
    missing = missing_model_folder(args.model)
    if missing:
        print(f"nft-trl eval: --model: {missing}", file=sys.stderr)
        return 1
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from nft_trl.evaluation import evaluate, markdown_table

    output_dir = args.output_dir or str(
        Path("outputs") / "eval" / f"{Path(args.model.rstrip('/')).name}-{args.preset}"
    )
    # Every other flag is a keyword argument of `evaluate` by the same name.
    options = {key: value for key, value in vars(args).items() if key not in ("model", "benchmarks", "output_dir")}
    benchmarks = [b for b in args.benchmarks.split(",") if b.strip()]
    results = evaluate(args.model, benchmarks, output_dir=output_dir, **options)
    print(markdown_table(results))
    print(f"Results: {Path(output_dir) / 'results.json'} (samples under {Path(output_dir) / 'samples'})")
    return 0


def build_generate_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="nft-trl generate",
        description="Sample K answers per question with transformers (or TRL's vLLM server), judge them "
        "(math_verifier) and write judged answers (jsonl, docs/offline.md) with the sampling log-probabilities, for "
        "offline NFT (nft-trl train --offline true --dataset_name OUTPUT). Rerunning with the same --output skips "
        "the questions already answered. Under torchrun / accelerate launch each process takes every n-th question "
        "and writes its own shard (answers.jsonl -> answers.rank0.jsonl, answers.rank1.jsonl, ...); nft-trl train "
        "and load_judged read the shards from the --output name.",
    )
    p.add_argument(
        "--model",
        required=True,
        help="Local checkpoint folder, Hub id, or 'embedded' (the model shipped with nft-trl).",
    )
    p.add_argument(
        "--dataset",
        required=True,
        help="Questions with a gold answer: a file, folder or Hub id, as nft-trl train's dataset_name; 'embedded' is "
        "the embedded addition task (the questions nft-trl train --dataset_name embedded trains on).",
    )
    p.add_argument("--dataset_format", default="auto", help="As nft-trl train's (default: %(default)s).")
    p.add_argument("--split", default="train", help="Dataset split (default: %(default)s).")
    p.add_argument(
        "--output",
        required=True,
        help="The jsonl file to write (appended to when it exists); with several processes, its shards.",
    )
    p.add_argument("--num_answers", type=int, default=8, help="Answers per question (default: %(default)s).")
    p.add_argument("--max_new_tokens", type=int, default=1024, help="Default: %(default)s.")
    p.add_argument("--temperature", type=float, default=1.0, help="Default: %(default)s (> 0).")
    p.add_argument("--top_p", type=float, default=1.0, help="Default: %(default)s.")
    p.add_argument("--batch_size", type=int, default=8, help="Questions per generate call (default: %(default)s).")
    p.add_argument("--limit", type=int, default=None, help="Only the first N questions.")
    p.add_argument("--seed", type=int, default=0, help="Default: %(default)s.")
    p.add_argument("--dtype", default="auto", help="auto, bfloat16, float16 or float32 (default: %(default)s).")
    p.add_argument(
        "--device", default=None, help="cuda or cpu (default: cuda if available, cuda:LOCAL_RANK per process)."
    )
    p.add_argument(
        "--vllm_server_host",
        default=None,
        help="Generate with TRL's vLLM server at this host (nft-trl vllm-serve --model M; the server must serve the "
        "same model as --model, whose tokenizer is used) through TRL's VLLMClient, instead of transformers. "
        "UNTESTED: this machine's tests have no vLLM and no GPU; only the flags are tested.",
    )
    p.add_argument(
        "--vllm_server_port", type=int, default=8000, help="Port of the vLLM server (default: %(default)s)."
    )
    p.add_argument(
        "--vllm_server_timeout",
        type=float,
        default=240.0,
        help="Seconds to wait for the vLLM server to be up (default: %(default)s).",
    )
    return p


def load_questions(name: str, dataset_format: str = "auto", split: str = "train"):
    """The questions of `nft-trl generate`: `name` as `nft-trl train`'s `dataset_name` ('embedded' included)."""
    from .common import EMBEDDED

    if name == EMBEDDED:
        from nft_trl.embedded import make_dataset
        from nft_trl.embedded.demo import DEMO_EVAL_PROMPTS, DEMO_TRAIN_PROMPTS

        # nft-trl train draws the training questions with the run's seed (TrainingArguments' default 42), the
        # held-out ones with seed 0.
        train = split == "train"
        return make_dataset(split, DEMO_TRAIN_PROMPTS if train else DEMO_EVAL_PROMPTS, seed=42 if train else 0)
    from nft_trl.data import load_math_dataset

    return load_math_dataset(name, dataset_format, split=split)


def vllm_client(host: str, port: int, timeout: float):
    """TRL's client of its vLLM server; imported only here, so that transformers generation never imports it."""
    try:
        from trl.generation.vllm_client import VLLMClient
    except ImportError:  # older TRL
        from trl.extras.vllm_client import VLLMClient
    return VLLMClient(host=host, server_port=port, connection_timeout=timeout)


def generate_main(argv: list[str]) -> int:
    """`nft-trl generate`: judged answers for offline NFT; one shard per process under torchrun / accelerate."""
    import os

    from .common import resolve_embedded_model
    from .environment import missing_model_folder

    try:
        args = build_generate_parser().parse_args(argv)
    except SystemExit as exit_:
        return exit_code(exit_)
    given_model = args.model  # as typed ('embedded' included): recorded in the output's settings file
    model_ref = argparse.Namespace(model_name_or_path=args.model)
    resolve_embedded_model(model_ref)  # 'embedded' -> the shipped model's folder
    args.model = model_ref.model_name_or_path
    missing = missing_model_folder(args.model)
    if missing:
        print(f"nft-trl generate: --model: {missing}", file=sys.stderr)
        return 1
    rank, world_size = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from nft_trl.offline.generate import generate_judged, output_files, summarize

    try:
        questions = load_questions(args.dataset, args.dataset_format, args.split)
        if args.limit is not None:
            questions = questions.select(range(min(args.limit, len(questions))))
        tokenizer = AutoTokenizer.from_pretrained(args.model)
        model, client = None, None
        if args.vllm_server_host is not None:
            client = vllm_client(args.vllm_server_host, args.vllm_server_port, args.vllm_server_timeout)
        else:
            device = args.device or (
                f"cuda:{os.environ.get('LOCAL_RANK', '0')}" if torch.cuda.is_available() else "cpu"
            )
            model = AutoModelForCausalLM.from_pretrained(args.model, dtype=args.dtype).to(device)
        options = ("num_answers", "max_new_tokens", "temperature", "top_p", "batch_size", "seed")
        started = time.perf_counter()
        path = generate_judged(
            model,
            tokenizer,
            questions,
            args.output,
            rank=rank,
            world_size=world_size,
            vllm_client=client,
            model_name=given_model,
            **{k: getattr(args, k) for k in options},
        )
    except (ValueError, FileNotFoundError, ImportError, ConnectionError) as err:
        print(f"nft-trl generate: {err}", file=sys.stderr)
        return 1
    stats = summarize(output_files(args.output) if world_size == 1 else [path])  # one process: all shards too
    who = f"process {rank} of {world_size}, " if world_size > 1 else ""
    print(
        f"Judged answers: {path} ({who}{stats['answers']} answers in {stats['groups']} groups, correct rate "
        f"{100 * stats['correct_rate']:.1f}%, mixed groups {100 * stats['mixed_group_frac']:.1f}%; "
        f"{time.perf_counter() - started:.0f} s)"
    )
    if world_size > 1 and rank == 0:
        print(
            f"Each process wrote its own shard; nft-trl train --offline true --dataset_name {args.output} reads them "
            "all (or concatenate them: cat answers.rank*.jsonl > answers.jsonl)."
        )
    return 0


def _train(argv: list[str]) -> int:
    from .launch import train_main

    return train_main(argv)


def _check(argv: list[str]) -> int:
    from .launch import check_main

    return check_main(argv)


def _vllm_serve(argv: list[str]) -> int:
    from .launch import vllm_serve_main

    return vllm_serve_main(argv)


#: name -> (function of the arguments after the name, one line for the usage). Imports happen on use: `eval` does not
#: load the launcher, nor `train` the evaluation.
COMMANDS: dict[str, tuple[Callable[[list[str]], int], str]] = {
    "train": (_train, "check a recipe for its launch, then `accelerate launch` the training script"),
    "check": (_check, "batch arithmetic, consistency and a memory estimate of a recipe, without launching"),
    "eval": (eval_main, "evaluate a checkpoint on math benchmarks (avg@k, pass@k, maj@k with 95% intervals)"),
    "generate": (generate_main, "sample and judge K answers per question, for offline NFT (NFTConfig(offline=True))"),
    "vllm-serve": (_vllm_serve, "TRL's vLLM server, for vllm_mode: server (needs nft-trl[vllm])"),
}


def usage() -> str:
    lines = ["usage: nft-trl COMMAND [ARGS ...]   (nft-trl COMMAND --help for its arguments)", "", "Commands:"]
    lines += [f"  {name:<11} {summary}" for name, (_, summary) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage(), file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        guess = difflib.get_close_matches(name, COMMANDS, n=1)
        hint = f" Did you mean {guess[0]!r}?" if guess else ""
        print(f"nft-trl: unknown command {name!r}.{hint}\n\n{usage()}", file=sys.stderr)
        return 2
    return COMMANDS[name][0](rest)


if __name__ == "__main__":
    sys.exit(main())
