"""NFTTrainer end to end on a tiny local model: training, metrics, evaluation, checkpoints, PEFT, KL, bad input."""

import logging
import math
from pathlib import Path

import pytest
import torch
from conftest import cpu_training_args
from datasets import Dataset
from torch.testing import assert_close

from nft_trl import NFTConfig, NFTTrainer
from nft_trl.algorithm.loss import nft_per_token_loss


def first_token_mod3(completions, completion_ids, **kwargs):
    """Binary verdict of a scripted completion (see conftest): mixed groups."""
    return [float(ids[0] % 3 == 0) for ids in completion_ids]


def needs_solution(completions, solution, **kwargs):
    return [float(s == "0") for s in solution]


def math_dataset(n=8):
    return Dataset.from_dict(
        {
            "prompt": [[{"role": "user", "content": f"What is {i} + {i}?"}] for i in range(n)],
            "solution": [str(2 * i) for i in range(n)],
        }
    )


def config(tmp_path, **overrides):
    settings = dict(max_completion_length=6, max_steps=2, learning_rate=0.05)
    return NFTConfig(**cpu_training_args(tmp_path / "out", **{**settings, **overrides}))


def make_trainer(model, tokenizer, args, reward=first_token_mod3, **kwargs):
    kwargs.setdefault("train_dataset", math_dataset())
    return NFTTrainer(model, reward_funcs=reward, args=args, processing_class=tokenizer, **kwargs)


def test_trains_logs_evaluates_checkpoints_and_resumes(tmp_path, tiny_model, tiny_tokenizer, scripted_generation):
    args = config(
        tmp_path,
        max_steps=4,
        save_strategy="steps",
        save_steps=2,
        eval_strategy="steps",
        eval_steps=2,
        per_device_eval_batch_size=8,
    )
    before = {n: p.detach().clone() for n, p in tiny_model.named_parameters()}
    trainer = make_trainer(tiny_model, tiny_tokenizer, args, eval_dataset=math_dataset(8))
    trainer.train()

    unchanged = [n for n, p in trainer.model.named_parameters() if torch.equal(p.detach(), before[n])]
    assert not unchanged, f"parameters that did not move: {unchanged}"
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())

    train_logs = [h for h in trainer.state.log_history if "nft/correct_rate" in h]
    assert len(train_logs) == 4
    for key in (
        "nft/correct_rate",
        "nft/positive_token_frac",
        "nft/negative_token_frac",
        "nft/clamped_frac",
        "nft/ratio_mean",
        "nft/policy_loss",
        "nft/degenerate_group_frac",
        "entropy",
    ):
        assert key in train_logs[0] and math.isfinite(train_logs[0][key]), key
    first = train_logs[0]
    # Scripted groups: first tokens 3, 10, 17, 24 | 31, 38, 45, 52 -> r_hat 0.5 and 0.25 -> 3 of 8 correct.
    assert first["nft/correct_rate"] == pytest.approx(3 / 8)
    assert first["nft/degenerate_group_frac"] == 0.0
    assert first["nft/positive_token_frac"] + first["nft/negative_token_frac"] == pytest.approx(1.0)
    assert first["nft/ratio_mean"] == pytest.approx(1.0)  # on-policy

    eval_logs = [h for h in trainer.state.log_history if "eval_loss" in h]
    assert len(eval_logs) == 2 and "eval_nft/correct_rate" in eval_logs[0]

    checkpoint = Path(args.output_dir) / "checkpoint-2"
    assert (checkpoint / "model.safetensors").exists() and (checkpoint / "trainer_state.json").exists()
    card = (Path(args.output_dir) / "README.md").read_text()
    assert "NFT" in card and "2505.18116" in card and "nft" in card

    # Resume from the step-2 checkpoint and finish the same 4 steps.
    resumed = make_trainer(trainer.model, tiny_tokenizer, args, eval_dataset=math_dataset(8))
    calls = []
    original = resumed._compute_loss
    resumed._compute_loss = lambda model, inputs: calls.append(model.training) or original(model, inputs)
    resumed.train(resume_from_checkpoint=str(checkpoint))
    assert resumed.state.global_step == 4
    assert calls.count(True) == 2, "only steps 3 and 4 are trained after resuming"
    resumed_steps = [h["step"] for h in resumed.state.log_history if "nft/correct_rate" in h]
    assert resumed_steps == [1, 2, 3, 4]  # 1-2 restored from the checkpoint's state, 3-4 trained now


def test_one_liner_with_default_config(tmp_path, monkeypatch, tiny_model_path):
    monkeypatch.chdir(tmp_path)
    trainer = NFTTrainer(tiny_model_path, reward_funcs=[needs_solution], train_dataset=math_dataset())
    assert isinstance(trainer.args, NFTConfig)
    assert trainer.args.output_dir.endswith("-NFT")
    assert trainer.args.loss_type == "dr_grpo" and trainer.args.prompt_weighting == "incorrect_rate"
    assert trainer.args.negative_weight == 1.0 and trainer.args.negative_clip == 1.0
    assert trainer.args.beta == 0.0


def test_model_as_path_trains(tmp_path, tiny_model_path, scripted_generation):
    trainer = NFTTrainer(
        tiny_model_path,
        reward_funcs=[first_token_mod3],
        args=config(tmp_path, max_steps=1),
        train_dataset=math_dataset(),
    )
    trainer.train()
    assert trainer.state.global_step == 1


def test_peft_trains_only_the_adapter(tmp_path, tiny_model, tiny_tokenizer, scripted_generation):
    peft = pytest.importorskip("peft")
    lora = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    trainer = make_trainer(tiny_model, tiny_tokenizer, config(tmp_path, learning_rate=0.1), peft_config=lora)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    after = dict(trainer.model.named_parameters())
    moved = {n for n in before if not torch.equal(before[n], after[n].detach())}
    assert moved and all("lora_" in n for n in moved)
    assert any("lora_B" in n for n in moved)


def test_kl_to_reference_is_added_as_in_grpo(tmp_path, tiny_model_path, scripted_generation):
    trainer = NFTTrainer(
        tiny_model_path,
        reward_funcs=[first_token_mod3],
        args=config(tmp_path, beta=0.1, max_steps=2, learning_rate=0.2),
        train_dataset=math_dataset(),
    )
    assert trainer.ref_model is not None
    trainer.train()
    kls = [h["kl"] for h in trainer.state.log_history if "kl" in h]
    assert len(kls) == 2 and kls[0] == pytest.approx(0.0, abs=1e-7) and kls[1] > 0


def test_missing_reward_column_names_it(tmp_path, tiny_model, tiny_tokenizer):
    dataset = math_dataset().rename_column("solution", "answer")
    with pytest.raises(ValueError, match=r"needs the dataset column\(s\) \['solution'\].*rename_column"):
        make_trainer(tiny_model, tiny_tokenizer, config(tmp_path), reward=[needs_solution], train_dataset=dataset)
    with pytest.raises(ValueError, match="eval dataset"):
        make_trainer(
            tiny_model, tiny_tokenizer, config(tmp_path), reward=[needs_solution], eval_dataset={"holdout": dataset}
        )
    with pytest.raises(ValueError, match="remove_unused_columns=False"):
        make_trainer(tiny_model, tiny_tokenizer, config(tmp_path, remove_unused_columns=True), reward=[needs_solution])


def test_all_rewards_none_keeps_loss_finite(tmp_path, tiny_model, tiny_tokenizer, scripted_generation):
    def never_sure(completions, **kwargs):
        return [None] * len(completions)

    trainer = make_trainer(tiny_model, tiny_tokenizer, config(tmp_path), reward=[never_sure])
    before = {n: p.detach().clone() for n, p in tiny_model.named_parameters()}
    result = trainer.train()
    assert math.isfinite(result.training_loss)
    for name, p in trainer.model.named_parameters():
        assert torch.isfinite(p).all()
        assert torch.equal(p.detach(), before[name]), "no verdict, no update"
    log = next(h for h in trainer.state.log_history if "nft/unscored_frac" in h)
    assert log["nft/unscored_frac"] == 1.0


def test_non_binary_verdict_reward_is_loud(tmp_path, tiny_model, tiny_tokenizer, scripted_generation, caplog):
    def reward_model_like(completions, completion_ids, **kwargs):
        return [0.1 * (ids[0] % 7) for ids in completion_ids]

    trainer = make_trainer(tiny_model, tiny_tokenizer, config(tmp_path, max_steps=1), reward=[reward_model_like])
    with caplog.at_level(logging.WARNING, logger="nft_trl.algorithm"):
        trainer.train()
    messages = [r.getMessage() for r in caplog.records if "non-binary" in r.getMessage()]
    assert len(messages) == 1 and "reward_model_like" in messages[0] and "median" in messages[0]

    strict = make_trainer(
        tiny_model,
        tiny_tokenizer,
        config(tmp_path, max_steps=1, non_binary_rewards="error"),
        reward=[reward_model_like],
    )
    with pytest.raises(ValueError, match="non-binary"):
        strict.train()


def test_correctness_reward_by_name(tmp_path, tiny_model, tiny_tokenizer, scripted_generation):
    def length_bonus(completions, **kwargs):
        return [0.3] * len(completions)

    args = config(tmp_path, max_steps=1, correctness_reward="first_token_mod3")
    trainer = make_trainer(tiny_model, tiny_tokenizer, args, reward=[length_bonus, first_token_mod3])
    trainer.train()
    log = next(h for h in trainer.state.log_history if "nft/correct_rate" in h)
    assert log["nft/correct_rate"] == pytest.approx(3 / 8)  # from first_token_mod3, not the constant 0.3

    with pytest.raises(ValueError, match="not one of the reward functions"):
        make_trainer(tiny_model, tiny_tokenizer, config(tmp_path, correctness_reward="nope"), reward=[length_bonus])


def test_compute_loss_honours_masks_is_ratio_and_multimodal_inputs(tmp_path, tiny_model, tiny_tokenizer, monkeypatch):
    trainer = make_trainer(tiny_model, tiny_tokenizer, config(tmp_path, loss_type="bnpo"))
    batch, length = 4, 5
    g = torch.Generator().manual_seed(0)
    logps = -torch.rand(batch, length, generator=g)
    old = logps - 0.3 * torch.randn(batch, length, generator=g)
    seen = {}

    def fake_logps(model, input_ids, attention_mask, logits_to_keep, **kwargs):
        seen.update(kwargs)
        return logps.clone().requires_grad_(), torch.ones(batch, length), None

    monkeypatch.setattr(trainer, "_get_per_token_logps_and_entropies", fake_logps)
    completion_mask = torch.ones(batch, length, dtype=torch.long)
    completion_mask[0, 3:] = 0
    tool_mask = torch.ones(batch, length, dtype=torch.long)
    tool_mask[1, 1:3] = 0
    is_ratio = 0.5 + torch.rand(batch, length, generator=g)
    inputs = {
        "prompt_ids": torch.ones(batch, 2, dtype=torch.long),
        "prompt_mask": torch.ones(batch, 2, dtype=torch.long),
        "completion_ids": torch.ones(batch, length, dtype=torch.long),
        "completion_mask": completion_mask,
        "tool_mask": tool_mask,
        "old_per_token_logps": old,
        "importance_sampling_ratio": is_ratio,
        "num_items_in_batch": torch.tensor(17.0),
        "nft_correct": torch.tensor([True, False, True, False]),
        "nft_valid": torch.tensor([True, True, True, True]),
        "nft_correct_rate": torch.tensor([0.5, 0.5, 0.5, 0.5]),
        "pixel_values": torch.zeros(1, 3),
        "image_grid_thw": torch.ones(1, 3, dtype=torch.long),
    }
    trainer.use_vllm, trainer.vllm_importance_sampling_correction = True, True
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 2  # set by the training loop; the loss must divide by it
    loss = trainer._compute_loss(trainer.model, inputs)

    mask = completion_mask * tool_mask
    expected_tokens, _ = nft_per_token_loss(logps, old, inputs["nft_correct"], inputs["nft_correct_rate"], mask)
    expected = (expected_tokens * is_ratio * mask).sum() / mask.sum() / 2
    assert_close(loss.detach(), expected)
    assert seen["pixel_values"] is inputs["pixel_values"] and seen["image_grid_thw"] is inputs["image_grid_thw"]


def test_wrong_config_type_is_rejected(tmp_path, tiny_model, tiny_tokenizer):
    from trl import GRPOConfig

    grpo_args = GRPOConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, report_to="none")
    with pytest.raises(TypeError, match="NFTConfig"):
        NFTTrainer(tiny_model, reward_funcs=[first_token_mod3], args=grpo_args, train_dataset=math_dataset())
    with pytest.raises(ValueError, match="binary verifier"):
        NFTTrainer(tiny_model, reward_funcs=None, args=config(tmp_path), train_dataset=math_dataset())
