"""The `nft-trl` command line. Each subcommand is one `add_<name>_parser` function plus one `run_<name>` function.

    nft-trl eval --model PATH --benchmarks aime24,aime25,amc23,math500,minerva,olympiadbench --preset paper
    python -m nft_trl.cli eval --model PATH --benchmarks aime24 --n 4 --max_tokens 512 --limit 5

Console script (pyproject): `nft-trl = "nft_trl.cli:main"`.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence


def add_eval_parser(subparsers) -> None:
    from nft_trl.evaluation import PAPER_BENCHMARKS, PRESETS

    p = subparsers.add_parser(
        "eval",
        help="Evaluate a checkpoint on math benchmarks (avg@k, pass@k, maj@k with 95%% bootstrap intervals).",
        description="Evaluate a checkpoint the paper's way. Explicit sampling flags override the preset. Rerunning "
        "with the same --output_dir resumes: finished problems are read back, not regenerated.",
    )
    p.add_argument("--model", required=True, help="Local checkpoint folder or Hub id.")
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
    p.set_defaults(func=run_eval)


def run_eval(args: argparse.Namespace) -> int:
    from pathlib import Path

    from nft_trl.evaluation import evaluate, markdown_table

    output_dir = args.output_dir or str(
        Path("outputs") / "eval" / f"{Path(args.model.rstrip('/')).name}-{args.preset}"
    )
    results = evaluate(
        args.model,
        [b for b in args.benchmarks.split(",") if b.strip()],
        preset=args.preset,
        n=args.n,
        temperature=args.temperature,
        top_p=args.top_p,
        max_tokens=args.max_tokens,
        seed=args.seed,
        backend=args.backend,
        prompt_template=args.prompt_template,
        output_dir=output_dir,
        data_dir=args.data_dir,
        limit=args.limit,
        batch_size=args.batch_size,
        bootstrap_resamples=args.bootstrap_resamples,
        dtype=args.dtype,
        device=args.device,
        tensor_parallel_size=args.tensor_parallel_size,
        gpu_memory_utilization=args.gpu_memory_utilization,
        max_model_len=args.max_model_len,
    )
    print(markdown_table(results))
    print(f"Results: {Path(output_dir) / 'results.json'} (samples under {Path(output_dir) / 'samples'})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from nft_trl.cli.launch import COMMANDS

    parser = argparse.ArgumentParser(prog="nft-trl", description="Negative-aware Fine-Tuning (NFT) for TRL.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:  # parsed by their own TrlParser-based entry points (see `main`); listed here for --help
        subparsers.add_parser(name, add_help=False, help=f"see nft-trl {name} --help")
    add_eval_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from nft_trl.cli.launch import COMMANDS

    argv = list(sys.argv[1:] if argv is None else argv)
    # train, check and vllm-serve take recipe fields and accelerate flags that argparse must not see.
    if argv and argv[0] in COMMANDS:
        return COMMANDS[argv[0]](argv[1:])
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
