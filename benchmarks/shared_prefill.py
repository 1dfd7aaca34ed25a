"""n samples per prompt with each prompt read once (`nft_trl.sampling.generate_per_prompt`) against `generate` with
`num_return_sequences=n`, on the embedded model, interleaved, the same seed for both.

    python benchmarks/shared_prefill.py [--prompts 256] [--batch 64] [--max_new_tokens 16] [--ns 4 8 16] [--rounds 3]

Per n: the median time of each over `--rounds` interleaved rounds, their ratio, and whether the sampled tokens were
identical. Where it is used: held-out evaluation (`evaluate_accuracy`, `nft-trl eval`'s transformers backend) and
`nft-trl generate`.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time


os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=256)
    parser.add_argument("--batch", type=int, default=64, help="prompts per generate call")
    parser.add_argument("--max_new_tokens", type=int, default=16)
    parser.add_argument("--ns", type=int, nargs="+", default=[4, 8, 16])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)

    import torch

    from nft_trl.embedded import load_embedded_model, make_dataset
    from nft_trl.evaluation.accuracy import prompt_text
    from nft_trl.sampling import generate_per_prompt

    model, tokenizer = load_embedded_model()
    model.eval()
    tokenizer.padding_side = "left"
    texts = [prompt_text(tokenizer, p) for p in make_dataset("test", args.prompts, seed=0)["prompt"]]
    batches = [
        tokenizer(texts[i : i + args.batch], return_tensors="pt", padding=True, add_special_tokens=False)
        for i in range(0, len(texts), args.batch)
    ]
    settings = dict(do_sample=True, top_k=0, temperature=1.0, max_new_tokens=args.max_new_tokens, pad_token_id=0)

    def run(shared: bool, n: int) -> tuple[float, list[torch.Tensor]]:
        torch.manual_seed(0)
        start, outputs = time.perf_counter(), []
        with torch.no_grad():
            for b in batches:
                if shared:
                    outputs.append(generate_per_prompt(model, b["input_ids"], b["attention_mask"], n, **settings))
                else:
                    outputs.append(model.generate(**b, num_return_sequences=n, **settings))
        return time.perf_counter() - start, outputs

    print(f"torch threads {torch.get_num_threads()}, {args.prompts} prompts in batches of {args.batch}, "
          f"{args.max_new_tokens} new tokens at most")  # fmt: skip
    print("n   generate (s)  prompt read once (s)  ratio  identical tokens")
    for n in args.ns:
        times: dict[bool, list[float]] = {True: [], False: []}
        same = True
        for round_ in range(args.rounds):
            order = (False, True) if round_ % 2 == 0 else (True, False)
            outs = {}
            for shared in order:
                seconds, outs[shared] = run(shared, n)
                times[shared].append(seconds)
            same &= all(torch.equal(a, b) for a, b in zip(outs[True], outs[False], strict=True))
        plain, once = statistics.median(times[False]), statistics.median(times[True])
        print(f"{n:<3} {plain:>12.2f}  {once:>20.2f}  {once / plain:>5.2f}  {same}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
