"""Train with Negative-aware Fine-Tuning (NFT).

With no arguments, the embedded offline demo: a small model (shipped with the package) learns a math task
on CPU; prints held-out accuracy before and after, how many held-out questions got more and fewer right answers, and
saves a learning curve (`accelerate launch examples/train_nft.py` runs the same, in as many processes as asked):

    python examples/train_nft.py

Any model and dataset, e.g. Qwen2.5-Math-7B on DAPO-Math-17k with vLLM generation:

    accelerate launch --config_file nft_trl/accelerate_configs/zero3.yaml examples/train_nft.py \
        --model_name_or_path Qwen/Qwen2.5-Math-7B --dataset_name BytedTsinghua-SIA/DAPO-Math-17k \
        --dataset_format dapo --use_vllm --vllm_mode colocate --num_generations 16

or a recipe (`--config nft_trl/recipes/Qwen2.5-Math-7B/nft/config_paper.yaml`). `--help` lists every option. This file
is the `nft_trl.cli.train` module's entry point, which `nft-trl train` launches too.
"""

from nft_trl.cli.train import main, parse_args


if __name__ == "__main__":
    main(*parse_args())
