"""NFTConfig: defaults from the paper, validation messages, YAML/CLI parsing with TRL's parser."""

import warnings

import pytest
import torch
from trl import TrlParser

from nft_trl import NFTConfig


def make(**kwargs):
    return NFTConfig(output_dir="out", use_cpu=True, bf16=False, report_to="none", **kwargs)


def test_paper_defaults():
    args = make()
    assert (args.negative_weight, args.negative_clip, args.prompt_weighting) == (1.0, 1.0, "incorrect_rate")
    assert args.max_log_ratio == 10.0 and args.beta == 0.0 and args.entropy_coef == 0.0
    assert args.loss_type == "dr_grpo" and args.importance_sampling_level == "token"
    assert args.correctness_reward is None and args.correctness_threshold == 0.5


def test_default_config_runs_on_a_cpu_only_machine():
    # GRPOConfig turns bf16 on by default, which TrainingArguments rejects without a bf16 accelerator.
    import torch

    args = NFTConfig(output_dir="out")
    if not torch.cuda.is_available():
        assert args.bf16 is False
    assert NFTConfig(output_dir="out", use_cpu=True).bf16 is True  # explicit CPU autocast still honoured


@pytest.mark.parametrize("loss_type", ["cispo", "sapo", "luspo", "vespo", "bogus"])
def test_unsupported_loss_type_names_the_supported_values(loss_type):
    with pytest.raises(ValueError, match=r"'dr_grpo', 'dapo', 'grpo', 'bnpo'"):
        make(loss_type=loss_type)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"negative_weight": -0.1}, "negative_weight must be >= 0"),
        ({"negative_clip": 0.0}, "negative_clip .* must be > 0"),
        ({"max_log_ratio": -1.0}, "max_log_ratio must be > 0 or None"),
        ({"prompt_weighting": "sqrt"}, "'incorrect_rate', 'sqrt_incorrect_odds', 'none'"),
        ({"importance_sampling_level": "tokens"}, "'token'.*'sequence'"),
        ({"non_binary_rewards": "shout"}, "'warn', 'error' or 'ignore'"),
        ({"beta": -0.1}, "beta"),
        ({"delta": 2.0}, "does not support `delta`"),
        ({"off_policy_mask_threshold": 0.5}, "does not support `off_policy_mask_threshold`"),
        ({"entropy_coef": 0.01}, "does not support `entropy_coef`"),
        ({"use_adaptive_entropy": True}, "does not support `use_adaptive_entropy`"),
        ({"dynamic_sampling_multiplier": 0}, "dynamic_sampling_multiplier must be >= 1"),
        ({"correct_rate_margin": 0.5}, r"correct_rate_margin must be in \[0, 0.5\)"),
        ({"correct_rate_margin": -0.01}, r"correct_rate_margin must be in \[0, 0.5\)"),
        ({"token_sum_divisor": 0.0}, "token_sum_divisor must be > 0"),
        # some TRL releases route it to Liger's GRPO loss, around NFT's
        ({"use_liger_kernel": True}, r"does not support `use_liger_kernel=True`.*use_kernels"),
    ],
)
def test_validation_says_what_to_change(kwargs, message):
    with pytest.raises(ValueError, match=message):
        make(**kwargs)


def test_beta_is_accepted():
    assert make(beta=0.04).beta == 0.04


def test_yaml_and_flags_parse_into_nft_config(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        "output_dir: out\nuse_cpu: true\nbf16: false\nreport_to: none\n"
        "negative_weight: 0.5\nprompt_weighting: sqrt_incorrect_odds\nmax_log_ratio: 5.0\nloss_type: dapo\n"
    )
    parser = TrlParser((NFTConfig,))
    (args,) = parser.parse_args_and_config(["--config", str(recipe), "--negative_clip", "0.5"])
    assert isinstance(args, NFTConfig)
    assert (args.negative_weight, args.negative_clip, args.prompt_weighting) == (0.5, 0.5, "sqrt_incorrect_odds")
    assert args.max_log_ratio == 5.0 and args.loss_type == "dapo"


def test_help_lists_nft_fields_with_their_help(capsys):
    parser = TrlParser((NFTConfig,))
    with pytest.raises(SystemExit):
        parser.parse_args_and_config(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    for name in (
        "--negative_weight",
        "--negative_clip",
        "--prompt_weighting",
        "--max_log_ratio",
        "--correctness_reward",
    ):
        assert name in text
    assert "0.0 is RFT" in text


def test_config_defaults_raise_no_warning(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        args = NFTConfig(str(tmp_path))
    # TRL's default, checkpointing on, without transformers 5's deprecation; but on a CPU it would only cost time,
    # and pinned memory would only make torch warn.
    accelerator = torch.cuda.is_available()
    assert args.gradient_checkpointing is accelerator and args.dataloader_pin_memory is accelerator
    on_cpu = NFTConfig(str(tmp_path), use_cpu=True)
    assert on_cpu.gradient_checkpointing is False and on_cpu.dataloader_pin_memory is False
