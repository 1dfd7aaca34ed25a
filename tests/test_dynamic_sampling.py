"""Dynamic sampling: only mixed groups reach the loss, the batch stays full, the cap holds, resume continues."""

import logging
from collections import Counter

import pytest
import torch
from conftest import cpu_training_args

from nft_trl import NFTConfig, NFTTrainer
from nft_trl.algorithm.dynamic_sampling import RefillStream, merge_rows, mixed_groups, select_groups


DEGENERATE = set(range(0, 16, 2))  # prompts whose answers are all right (id % 4 == 0) or all wrong (id % 4 == 2)


def prompt_id(prompt) -> int:
    return int(prompt[-1]["content"].split()[-1].rstrip("?"))


def known_degenerate_reward(prompts, completions, **kwargs):
    """All right for ids 0, 4, 8, 12; all wrong for 2, 6, 10, 14; alternating right/wrong in the odd ids' groups."""
    seen = Counter()
    verdicts = []
    for prompt in prompts:
        pid = prompt_id(prompt)
        if pid in DEGENERATE:
            verdicts.append(float(pid % 4 == 0))
        else:
            verdicts.append(float(seen[pid] % 2 == 0))
        seen[pid] += 1
    return verdicts


def all_right(prompts, **kwargs):
    return [1.0] * len(prompts)


def dataset(n=16):
    from datasets import Dataset

    return Dataset.from_dict({"prompt": [[{"role": "user", "content": f"What is question {i}?"}] for i in range(n)]})


def config(tmp_path, **overrides):
    settings = dict(
        max_completion_length=4, max_steps=3, learning_rate=0.05, dynamic_sampling=True, max_sampling_rounds=6
    )
    return NFTConfig(**cpu_training_args(tmp_path / "out", **{**settings, **overrides}))


class LossSpy:
    """Wraps `_compute_loss` and each generation round (`_generate_and_judge`) to record what they see."""

    def __init__(self, trainer, tokenizer):
        self.batches, self.generated = [], []
        self.tokenizer = tokenizer
        compute, generate = trainer._compute_loss, trainer._generate_and_judge

        def spy_loss(model, inputs):
            self.batches.append({k: v for k, v in inputs.items() if isinstance(v, torch.Tensor)})
            return compute(model, inputs)

        def spy_generate(inputs):
            self.generated.append([prompt_id(x["prompt"]) for x in inputs])
            return generate(inputs)

        trainer._compute_loss, trainer._generate_and_judge = spy_loss, spy_generate

    def prompt_ids_of(self, batch):
        texts = self.tokenizer.batch_decode(batch["prompt_ids"], skip_special_tokens=True)
        return [int(t.split("question ")[1].split("?")[0]) for t in texts]


def test_loss_sees_only_mixed_groups_and_a_full_batch(tmp_path, tiny_model, tiny_tokenizer, scripted_generation):
    trainer = NFTTrainer(
        tiny_model,
        reward_funcs=[known_degenerate_reward],
        args=config(tmp_path),
        train_dataset=dataset(),
        processing_class=tiny_tokenizer,
    )
    spy = LossSpy(trainer, tiny_tokenizer)
    trainer.train()
    assert len(spy.batches) == 3
    for batch in spy.batches:
        assert batch["completion_ids"].size(0) == 8, "the batch stays full"
        assert batch["nft_valid"].all()
        rates = batch["nft_correct_rate"]
        assert ((rates > 0) & (rates < 1)).all(), "only mixed groups reach the loss"
        assert not set(spy.prompt_ids_of(batch)) & DEGENERATE
    logs = [h for h in trainer.state.log_history if "nft/dynamic_sampling/rounds" in h]
    assert len(logs) == 3
    assert all(h["nft/dynamic_sampling/batch_fill"] == 1.0 for h in logs)
    assert all(0 < h["nft/dynamic_sampling/kept_group_frac"] <= 1 for h in logs)
    # The main loader draws 2 prompts per step from 16, half of them degenerate: some step needs a second round.
    assert max(h["nft/dynamic_sampling/rounds"] for h in logs) >= 2
    assert any(h["nft/dynamic_sampling/extra_generated_tokens"] > 0 for h in logs)


def test_cap_is_respected_and_short_batch_is_masked(tmp_path, tiny_model, tiny_tokenizer, scripted_generation, caplog):
    args = config(tmp_path, max_sampling_rounds=3, max_steps=1)
    trainer = NFTTrainer(
        tiny_model, reward_funcs=[all_right], args=args, train_dataset=dataset(), processing_class=tiny_tokenizer
    )
    spy = LossSpy(trainer, tiny_tokenizer)
    before = {n: p.detach().clone() for n, p in tiny_model.named_parameters()}
    with caplog.at_level(logging.WARNING, logger="nft_trl.algorithm"):
        trainer.train()
    assert len(spy.generated) == 3, "exactly max_sampling_rounds generation rounds"
    log = next(h for h in trainer.state.log_history if "nft/dynamic_sampling/rounds" in h)
    assert log["nft/dynamic_sampling/rounds"] == 3 and log["nft/dynamic_sampling/batch_fill"] == 0.0
    assert any("max_sampling_rounds=3" in r.getMessage() for r in caplog.records)
    (batch,) = spy.batches
    assert batch["completion_ids"].size(0) == 8 and not batch["nft_valid"].any()
    assert all(torch.equal(p.detach(), before[n]) for n, p in trainer.model.named_parameters())


def test_resume_continues_the_refill_stream(tmp_path, tiny_model_path, tiny_tokenizer, scripted_generation):
    args = config(tmp_path, max_steps=4, save_strategy="steps", save_steps=2)
    first = NFTTrainer(tiny_model_path, reward_funcs=[known_degenerate_reward], args=args, train_dataset=dataset())
    first_spy = LossSpy(first, tiny_tokenizer)
    first.train()

    resumed = NFTTrainer(tiny_model_path, reward_funcs=[known_degenerate_reward], args=args, train_dataset=dataset())
    resumed_spy = LossSpy(resumed, tiny_tokenizer)
    resumed.train(resume_from_checkpoint=str(tmp_path / "out" / "checkpoint-2"))
    # Steps 3 and 4 see the same prompts (main loader and extra rounds alike) as in the uninterrupted run.
    assert [resumed_spy.prompt_ids_of(b) for b in resumed_spy.batches] == [
        first_spy.prompt_ids_of(b) for b in first_spy.batches[2:]
    ]
    assert resumed._sampler.stream.state_dict() == first._sampler.stream.state_dict()


def test_refill_stream_is_deterministic_across_epochs_and_restorable():
    stream = RefillStream(5, seed=3)
    taken = [stream.take(3) for _ in range(4)]  # 12 prompts: crosses two epoch boundaries
    flat = sum(taken, [])
    assert sorted(flat[:5]) == list(range(5)) and sorted(flat[5:10]) == list(range(5))
    replay = RefillStream(5, seed=3)
    assert [replay.take(3) for _ in range(4)] == taken
    restored = RefillStream(5, seed=3)
    replay_mid = RefillStream(5, seed=3)
    replay_mid.take(7)
    restored.load_state_dict(replay_mid.state_dict())
    assert restored.take(5) == flat[7:12]
    with pytest.raises(ValueError, match="same training dataset and seed"):
        RefillStream(6, seed=3).load_state_dict(replay_mid.state_dict())


def test_select_groups_prefers_mixed_and_fills_at_the_cap():
    correct = torch.tensor([1, 1, 1, 0, 0, 0, 1, 1, 0, 1, 0, 0], dtype=torch.bool)
    mixed = mixed_groups(correct, torch.ones(12, dtype=torch.bool), 2)
    assert mixed.tolist() == [False, True, False, False, True, False]
    selection = select_groups([mixed], num_generations=2, target_rows=6)
    assert selection.kept_groups == 2
    assert selection.rows == [2, 3, 8, 9, 0, 1] and selection.keep == [True] * 4 + [False] * 2


def test_merge_rows_pads_each_field_on_its_side():
    a = {
        "prompt_ids": torch.tensor([[5, 6]]),
        "prompt_mask": torch.tensor([[1, 1]]),
        "completion_ids": torch.tensor([[7]]),
        "completion_mask": torch.tensor([[1]]),
        "nft_valid": torch.tensor([True]),
    }
    b = {
        "prompt_ids": torch.tensor([[4, 5, 6]]),
        "prompt_mask": torch.tensor([[1, 1, 1]]),
        "completion_ids": torch.tensor([[8, 9]]),
        "completion_mask": torch.tensor([[1, 1]]),
        "nft_valid": torch.tensor([False]),
    }
    merged = merge_rows([a, b], rounds=[1, 0], rows=[0, 0], pad_token_id=0)
    assert merged["prompt_ids"].tolist() == [[4, 5, 6], [0, 5, 6]]
    assert merged["prompt_mask"].tolist() == [[1, 1, 1], [0, 1, 1]]
    assert merged["completion_ids"].tolist() == [[8, 9], [7, 0]]
    assert merged["completion_mask"].tolist() == [[1, 1], [1, 0]]
    assert merged["nft_valid"].tolist() == [False, True]


def test_multiplier_generates_whole_rounds_and_scales_the_cap(
    tmp_path, tiny_model, tiny_tokenizer, scripted_generation, caplog
):
    # The authors' budget: each round is `multiplier` batches of questions, up to max_sampling_rounds rounds.
    args = config(tmp_path, max_sampling_rounds=2, dynamic_sampling_multiplier=3, max_steps=1)
    trainer = NFTTrainer(
        tiny_model, reward_funcs=[all_right], args=args, train_dataset=dataset(), processing_class=tiny_tokenizer
    )
    spy = LossSpy(trainer, tiny_tokenizer)
    with caplog.at_level(logging.WARNING, logger="nft_trl.algorithm"):
        trainer.train()
    assert len(spy.generated) == 6, "2 rounds x 3 batches of questions"
    log = next(h for h in trainer.state.log_history if "nft/dynamic_sampling/rounds" in h)
    assert log["nft/dynamic_sampling/rounds"] == 2
    assert any("max_sampling_rounds=2" in r.getMessage() for r in caplog.records)


def test_multiplier_finishes_the_round_even_when_the_first_batch_suffices(
    tmp_path, tiny_model, tiny_tokenizer, scripted_generation
):
    def all_mixed(prompts, **kwargs):
        return [float(i % 2 == 0) for i in range(len(prompts))]

    args = config(tmp_path, dynamic_sampling_multiplier=3, max_steps=1)
    trainer = NFTTrainer(
        tiny_model, reward_funcs=[all_mixed], args=args, train_dataset=dataset(), processing_class=tiny_tokenizer
    )
    spy = LossSpy(trainer, tiny_tokenizer)
    trainer.train()
    # As verl generates gen_batch_size questions per round: one round of 3 batches, the first mixed groups kept.
    assert len(spy.generated) == 3
    (batch,) = spy.batches
    assert batch["nft_valid"].all()
    assert Counter(spy.prompt_ids_of(batch)) == Counter(spy.generated[0]), "TRL's batch, shuffled"
