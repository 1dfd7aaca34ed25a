"""The training script: NFT (or a GRPO/DAPO/RFT baseline) on a math dataset, from a YAML recipe and/or flags.

Launched by `nft-trl train --config recipe.yaml` through `accelerate launch`; it can also be run directly (this is
what `examples/train_nft.py` runs):

    accelerate launch --config_file nft_trl/accelerate_configs/zero3.yaml nft_trl/cli/train.py \
        --config nft_trl/recipes/Qwen2.5-Math-7B/nft/config_paper.yaml

Arguments are three dataclasses (`nft_trl.cli.arguments`) parsed by TRL's `TrlParser`: `NFTScriptArguments` (data,
rewards, which trainer), the training config and TRL's `ModelConfig` (model loading, LoRA). The training config is
`NFTConfig` for `method: nft` and TRL's plain `GRPOConfig` for `method: grpo` (the GRPO and DAPO baselines run through
TRL's own `GRPOTrainer`, untouched by NFT's validation). `--help` lists them all. A key that is none of their fields,
nor an option of the launcher or of `accelerate launch`, stops the run with the field it probably meant.
`model_name_or_path: embedded` is the model shipped with the package, `dataset_name: embedded` its addition task
(with held-out accuracy before and after training); no model at all runs the embedded demo (`nft_trl.embedded.demo`).
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from typing import Any

from trl import GRPOConfig, ModelConfig

from nft_trl.cli.arguments import (
    CONFIG_CLASSES,
    NFTScriptArguments,
    RecipeError,
    make_parser,
    requested_method,
    unknown_key_problems,
)
from nft_trl.cli.common import EMBEDDED, resolve_embedded_model


logger = logging.getLogger(__name__)

#: Reward functions selectable by name; anything else in `reward_funcs` is read as a dotted import path.
#: Values are import paths so that the heavy verifier loads only when used.
REWARD_FUNCS = {
    "math_verifier": "nft_trl.rewards.verifier.math_verifier",
    "dapo_strict_box": "nft_trl.rewards.verifier.dapo_strict_box",
    "countdown_reward": "nft_trl.rewards.countdown.countdown_reward",
}


def resolve_reward_funcs(names: list[str]) -> list[Any]:
    funcs = []
    for name in names:
        path = REWARD_FUNCS.get(name, name)
        if "." not in path:
            raise ValueError(
                f"Unknown reward function {name!r}: use one of {', '.join(REWARD_FUNCS)} or a dotted import path "
                "(my_pkg.rewards.my_reward)."
            )
        module_name, attr = path.rsplit(".", 1)
        if os.getcwd() not in sys.path:
            sys.path.insert(0, os.getcwd())  # let recipes name reward functions in the launch directory
        funcs.append(getattr(importlib.import_module(module_name), attr))
    return funcs


def load_datasets(script_args: NFTScriptArguments, training_args: GRPOConfig, tokenizer: Any):
    from nft_trl.data import filter_long_prompts, load_math_dataset, prompt_lengths
    from nft_trl.runtime.inputs import check_prompt_filter

    def load(split: str):
        if script_args.dataset_name == EMBEDDED:  # the embedded addition task: prompt and solution columns
            from nft_trl.embedded import make_dataset
            from nft_trl.embedded.demo import DEMO_EVAL_PROMPTS, DEMO_TRAIN_PROMPTS

            train_split = split == script_args.dataset_train_split
            size = DEMO_TRAIN_PROMPTS if train_split else DEMO_EVAL_PROMPTS
            return make_dataset(split, size, seed=training_args.seed if train_split else 0)
        return load_math_dataset(
            script_args.dataset_name, script_args.dataset_format, split=split, config=script_args.dataset_config
        )

    train = load(script_args.dataset_train_split)
    if script_args.max_prompt_length is not None:
        lengths = prompt_lengths(train, tokenizer)
        check_prompt_filter(lengths, script_args.max_prompt_length)  # none left: an error, not 0 steps
        train = filter_long_prompts(train, tokenizer, script_args.max_prompt_length, lengths)
    evaluate = training_args.eval_strategy != "no"
    eval_dataset = None
    if evaluate and script_args.dataset_test_split is not None:
        eval_dataset = load(script_args.dataset_test_split)
    elif evaluate and script_args.eval_fraction > 0:
        split = train.train_test_split(test_size=script_args.eval_fraction, seed=training_args.seed)
        train, eval_dataset = split["train"], split["test"]
    elif evaluate:
        raise ValueError(
            "eval_strategy is set but there is nothing to evaluate: set dataset_test_split or eval_fraction."
        )
    if script_args.max_train_samples is not None:
        train = train.select(range(min(script_args.max_train_samples, len(train))))
    if eval_dataset is not None and script_args.eval_limit is not None:
        eval_dataset = eval_dataset.select(range(min(script_args.eval_limit, len(eval_dataset))))
    return train, eval_dataset


def load_offline_dataset(script_args: NFTScriptArguments, training_args: Any):
    """With `offline: true`: the judged answers named by `dataset_name` (a file, the `--output` of `nft-trl generate`
    with its shards, a glob or a comma-separated list; `nft_trl.offline.load_judged`), checked and prepared."""
    from nft_trl.offline import load_judged

    name = script_args.dataset_name
    if name is None or name == EMBEDDED:
        raise ValueError(
            f"offline: true trains on judged answers, and dataset_name is {name!r}: make them with `nft-trl generate "
            "--model M --dataset D --output answers.jsonl`, then pass --dataset_name answers.jsonl."
        )
    ignored = [
        key
        for key in ("dataset_test_split", "max_prompt_length", "max_train_samples")
        if getattr(script_args, key) is not None
    ]
    if ignored:
        logger.warning("offline: true uses every judged answer as stored; %s ignored.", ", ".join(ignored))
    if training_args.eval_strategy != "no":
        raise ValueError(
            "offline: true has no eval_dataset (the trainer would generate from it): set eval_strategy: 'no' and "
            "evaluate with nft-trl eval."
        )
    return load_judged(name, training_args.correctness_threshold)


def is_embedded_model(model: str) -> bool:
    from pathlib import Path

    from nft_trl.embedded import embedded_path

    return Path(model).resolve() == Path(embedded_path()).resolve()


def main(script_args: NFTScriptArguments, training_args: GRPOConfig, model_args: ModelConfig) -> None:
    from transformers import AutoTokenizer
    from trl import GRPOTrainer, get_peft_config, get_quantization_config

    from nft_trl.algorithm.trainer import NFTTrainer
    from nft_trl.runtime.hub import check_model_source

    logging.basicConfig(
        format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=training_args.get_process_log_level()
    )
    from nft_trl.embedded import demo as demo_module

    if model_args.model_name_or_path is None:
        # The embedded offline demo: the shipped model and its task (nft_trl.embedded).
        model, tokenizer, train_dataset, held_out = demo_module.load_demo(training_args)
        eval_dataset = None
        script_args.dataset_name = "the embedded task (nft_trl.embedded)"
    else:
        if script_args.dataset_name is None:
            raise ValueError("--dataset_name is required with --model_name_or_path (a Hub id or a local file).")
        # A Hub id this machine cannot load stops here in one sentence, before transformers' retries.
        model = check_model_source(model_args.model_name_or_path, {"revision": model_args.model_revision})
        model_init_kwargs = dict(
            revision=model_args.model_revision,
            trust_remote_code=training_args.trust_remote_code,
            attn_implementation=model_args.attn_implementation,
            dtype=model_args.dtype,
        )
        quantization_config = get_quantization_config(model_args)
        if quantization_config is not None:
            from trl.trainer.utils import get_kbit_device_map

            model_init_kwargs.update(quantization_config=quantization_config, device_map=get_kbit_device_map())
        training_args.model_init_kwargs = {**model_init_kwargs, **(training_args.model_init_kwargs or {})}
        tokenizer = AutoTokenizer.from_pretrained(
            model, revision=model_args.model_revision, trust_remote_code=training_args.trust_remote_code
        )
        if getattr(training_args, "offline", False):
            train_dataset, eval_dataset = load_offline_dataset(script_args, training_args), None
        else:
            train_dataset, eval_dataset = load_datasets(script_args, training_args, tokenizer)
        held_out = None
        if script_args.dataset_name == EMBEDDED or (
            getattr(training_args, "offline", False) and is_embedded_model(model)
        ):  # the embedded task has a held-out split: accuracy before and after
            from nft_trl.embedded import make_dataset

            held_out = make_dataset("test", demo_module.DEMO_EVAL_PROMPTS, seed=0)
    demo = None
    if held_out is not None:
        demo = demo_module.HeldOutAccuracyCallback(
            tokenizer, held_out, max_new_tokens=training_args.max_completion_length
        )
    logger.info("Training on %d questions (%s)", len(train_dataset), script_args.dataset_name)

    # `training_args` is a GRPOConfig for method grpo (see `make_parser`), an NFTConfig for method nft.
    trainer_class = GRPOTrainer if script_args.method == "grpo" else NFTTrainer
    trainer = trainer_class(
        model=model,
        # Offline, the verdicts are stored with the answers and NFTTrainer takes no reward function.
        reward_funcs=None
        if getattr(training_args, "offline", False)
        else resolve_reward_funcs(script_args.reward_funcs),
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        peft_config=get_peft_config(model_args),
        callbacks=[demo] if demo is not None else None,
    )
    if demo is not None and trainer.accelerator.is_main_process:
        demo_module.print_before(demo.evaluate(trainer.model, 0))
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    if demo is not None and trainer.accelerator.is_main_process:
        demo_module.print_comparison(demo.first, demo.last)
        demo_module.report(demo, training_args.output_dir)
    trainer.save_model(training_args.output_dir)
    logger.info("Model saved to %s", training_args.output_dir)
    if training_args.push_to_hub:
        trainer.push_to_hub(dataset_name=script_args.dataset_name)
    # Every rank waits for the final save before the process group goes away (gloo can abort a rank that tears down
    # while another still talks to it).
    trainer.accelerator.wait_for_everyone()
    trainer.accelerator.end_training()  # finish the trackers and destroy the process group


def cpu_rehearsal_defaults() -> dict[str, Any]:
    """`{"use_cpu": True}` in a process accelerate started with DeepSpeed on a machine without GPUs, else `{}`.

    There accelerate picks no distributed backend (it does so only for GPUs and other accelerators): the Trainer sees
    one process while DeepSpeed sees all of them, and DeepSpeed stops with "Check batch related parameters.
    train_batch_size is not equal to micro_batch_per_gpu * gradient_acc_step * world_size" (or, first, with a bf16
    mismatch against the accelerate config). `use_cpu=True` starts the processes over gloo, DeepSpeed runs on its CPU
    accelerator, and bf16 follows the accelerate config: a CPU rehearsal of a cluster recipe. It is a default, so a
    recipe's or a flag's `use_cpu` still wins.

    Before DeepSpeed starts (it builds its CPU ops while the training config is parsed), build locks that an
    interrupted build left behind are deleted (`nft_trl.cli.build_locks`): DeepSpeed would wait on them forever.
    """
    import torch

    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() != "true" or torch.cuda.is_available():
        return {}
    from nft_trl.cli.build_locks import clear_stale_build_locks

    clear_stale_build_locks()
    if os.environ.get("RANK", "0") == "0":
        print(
            "DeepSpeed on a machine without GPUs: a CPU rehearsal (use_cpu=True: gloo, DeepSpeed's CPU accelerator)."
        )
    return {"use_cpu": True}


def parse_args(argv: list[str] | None = None) -> tuple[NFTScriptArguments, GRPOConfig, ModelConfig]:
    """Parse flags and `--config`; without a model, fields left at their defaults get the embedded demo's values.

    The training config is `CONFIG_CLASSES[method]`. Keys that are not fields must be options of the launcher or of
    `accelerate launch` (a recipe holds `num_processes` or `accelerate_config` for `nft-trl train`); any other key
    exits with the field it probably meant.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        config_class = CONFIG_CLASSES[requested_method(argv)]
    except RecipeError as error:
        raise SystemExit(f"ERROR: {error}") from None
    launch_defaults = cpu_rehearsal_defaults()
    parser = make_parser(config_class)
    parser.set_defaults(**launch_defaults)  # below the recipe's values and the flags
    *parsed, config_remaining, cli_remaining = parser.parse_args_and_config(
        argv, return_remaining_strings=True, separate_remaining_strings=True
    )
    problems = unknown_key_problems(config_remaining, cli_remaining, config_class)
    if problems:
        raise SystemExit("\n".join(f"ERROR: {p}" for p in problems))
    script_args, training_args, model_args = parsed
    resolve_embedded_model(model_args)
    if model_args.model_name_or_path is None:
        from nft_trl.embedded.demo import demo_defaults

        parser = make_parser(config_class)
        parser.set_defaults(**{**launch_defaults, **demo_defaults()})  # below the recipe's values and the flags
        script_args, training_args, model_args = parser.parse_args_and_config(argv, fail_with_unknown_args=False)[:3]
    return script_args, training_args, model_args


if __name__ == "__main__":
    main(*parse_args())
