"""Offline NFT: the judged-answer format and its checks, and the trainer on stored answers. The key test: on the first
generation batch of an online run (scripted generation), the offline trainer's first optimizer step equals the online
trainer's on every parameter."""

import json

import pytest
from conftest import cpu_training_args
from datasets import Dataset
from torch.testing import assert_close

from nft_trl import NFTConfig, NFTTrainer
from nft_trl.embedded.model import build_tiny_model
from nft_trl.offline import from_eval_samples, load_judged, prepare_judged


NUM_GENERATIONS = 4
MAX_COMPLETION_LENGTH = 6


def first_token_mod3(completions, completion_ids, **kwargs):
    """Binary verdict of a scripted completion; gives groups with r_hat 0.5 and 0.25 (see conftest's script)."""
    return [float(ids[0] % 3 == 0) for ids in completion_ids]


def prompts():
    return Dataset.from_dict({"prompt": [[{"role": "user", "content": f"What is {i} + {i}?"}] for i in range(8)]})


def sgd_args(tmp_path, name, **overrides):
    settings = dict(
        num_generations=NUM_GENERATIONS,
        max_completion_length=MAX_COMPLETION_LENGTH,
        max_steps=1,
        optim="sgd",
        learning_rate=0.5,
        lr_scheduler_type="constant",
        weight_decay=0.0,
        max_grad_norm=0.0,  # no clipping: the step is exactly -lr * gradient
    )
    return cpu_training_args(tmp_path / name, **{**settings, **overrides})


# ------------------------------------------------------------------------------------------------------ the format
def answers(**columns):
    base = {
        "prompt": ["a", "a", "a", "b", "b", "c"],
        "completion": ["x", "y", "z", "u", "v", "w"],
        "correct": [True, False, False, True, True, False],
    }
    return Dataset.from_dict({**base, **columns})


def test_r_hat_is_the_whole_group_rate_and_groups_of_one_keep_their_online_meaning():
    data = prepare_judged(answers())
    assert data["nft_correct_rate"] == pytest.approx([1 / 3] * 3 + [1.0, 1.0] + [0.0])
    assert data["nft_correct"] == [True, False, False, True, True, False]
    assert data["nft_row"] == list(range(6))


def test_reward_is_thresholded_and_none_is_unscored():
    data = prepare_judged(
        Dataset.from_dict({"prompt": ["a"] * 4, "completion": list("wxyz"), "reward": [1.0, 0.2, None, 0.7]}),
        correctness_threshold=0.5,
    )
    assert data["nft_correct"] == [True, False, False, True]
    assert data["nft_valid"] == [True, True, False, True]
    assert data["nft_correct_rate"] == pytest.approx([2 / 3] * 4)  # unscored rows count neither way


def test_explicit_group_overrides_the_prompt():
    data = prepare_judged(answers(group=[1, 1, 2, 2, 2, 3]))
    assert data["nft_correct_rate"] == pytest.approx([0.5, 0.5, 2 / 3, 2 / 3, 2 / 3, 0.0])


def test_conversational_rows_group_by_their_messages():
    user = [[{"role": "user", "content": q}] for q in ("a", "a", "b")]
    said = [[{"role": "assistant", "content": t}] for t in ("x", "y", "z")]
    data = prepare_judged(Dataset.from_dict({"prompt": user, "completion": said, "correct": [True, False, True]}))
    assert data["nft_correct_rate"] == pytest.approx([0.5, 0.5, 1.0])


@pytest.mark.parametrize(
    "columns, message",
    [
        ({"correct": [True, None, False, True, True, False]}, "row 1, column 'correct': no verdict"),
        ({"completion": ["x", "y", " ", "u", "v", "w"]}, "row 2, column 'completion': the completion is empty"),
        ({"prompt": ["a", "a", "a", "", "b", "c"]}, "row 3, column 'prompt'"),
        ({"solution": ["1", "1", "2", "3", "3", "4"]}, "row 2, column 'solution': '2' differs from '1' of row 0"),
        ({"correct": [1.0, 0.0, 0.5, 1.0, 1.0, 0.0]}, "row 2, column 'correct': 0.5 is not a bool"),
    ],
)
def test_bad_rows_name_the_row_and_the_column(columns, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        prepare_judged(answers(**columns))


def test_a_dataset_without_a_verdict_says_so():
    with pytest.raises(ValueError, match="verdict column"):
        prepare_judged(Dataset.from_dict({"prompt": ["a"], "completion": ["x"]}))


def test_jsonl_and_parquet_load_the_same(tmp_path):
    rows = answers(solution=["1", "1", "1", "2", "2", "3"]).to_list()
    jsonl = tmp_path / "answers.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))
    Dataset.from_list(rows).to_parquet(str(tmp_path / "answers.parquet"))
    from_jsonl, from_parquet = load_judged(jsonl), load_judged(tmp_path / "answers.parquet")
    assert from_jsonl.to_list() == from_parquet.to_list() == load_judged(Dataset.from_list(rows)).to_list()
    jsonl.write_text(jsonl.read_text() + "{not json\n")
    with pytest.raises(ValueError, match="line 7: not valid JSON"):
        load_judged(jsonl)


def test_eval_samples_become_judged_answers(tmp_path):
    from nft_trl.evaluation.runner import SampleStore

    settings = {"prompt_template": "chat", "instruction": "Box it.", "benchmark": "toy"}
    store = SampleStore(tmp_path / "toy.jsonl", settings)
    record = dict(gold="4", answers=["4", "5"], truncated=[False, True], num_tokens=[3, 9], verifier="v")
    store.add([{"id": "p1", "scores": [1.0, 0.0], "completions": ["\\boxed{4}", "\\boxed{5"], **record}])
    store.add([{"id": "p2", "scores": None, "completions": ["?", "?"], **record}])  # gold unparsable: left out
    data = from_eval_samples(tmp_path / "toy.jsonl", {"p1": "2 + 2?", "p2": "?"})
    assert len(data) == 2
    assert data[0]["prompt"] == [{"role": "user", "content": "2 + 2?\nBox it."}]
    assert data[1]["completion"] == [{"role": "assistant", "content": "\\boxed{5"}]
    assert data["truncated"] == [False, True]
    assert data["nft_correct"] == [True, False]
    assert data["nft_correct_rate"] == [0.5, 0.5]


# ------------------------------------------------------------------------------------------------------ the trainer
class RecordingNFTTrainer(NFTTrainer):
    """Keeps the first generation batch (before TRL shuffles it) and the prompts it was made from."""

    recorded = None

    def _generate_and_score_completions(self, inputs):
        output = super()._generate_and_score_completions(inputs)
        if self.recorded is None:
            self.recorded = ([row["prompt"] for row in inputs], output)
        return output


def record_online_batch(tmp_path, tokenizer, **settings):
    """One online NFT step on scripted answers; its parameter change and its first batch as judged-answer rows."""
    model = build_tiny_model(tokenizer, seed=0)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    config = NFTConfig(**sgd_args(tmp_path, "online", **settings))
    trainer = RecordingNFTTrainer(
        model, reward_funcs=[first_token_mod3], args=config, train_dataset=prompts(), processing_class=tokenizer
    )
    trainer.train()
    delta = {n: p.detach() - before[n] for n, p in trainer.model.named_parameters()}
    batch_prompts, output = trainer.recorded
    rows = []
    for i, prompt in enumerate(batch_prompts):
        ids = output["completion_ids"][i][: int(output["completion_mask"][i].sum())].tolist()
        rows.append(
            {
                "prompt": prompt,
                "completion": [{"role": "assistant", "content": tokenizer.decode(ids, skip_special_tokens=True)}],
                "completion_ids": ids,
                "correct": bool(output["nft_correct"][i]),
            }
        )
    return delta, rows, output


def offline_trainer(tmp_path, tokenizer, rows, **settings):
    config = NFTConfig(**sgd_args(tmp_path, "offline", offline=True, **settings))
    model = build_tiny_model(tokenizer, seed=0)
    return NFTTrainer(model, args=config, train_dataset=Dataset.from_list(rows), processing_class=tokenizer)


def offline_step(tmp_path, tokenizer, rows, **settings):
    trainer = offline_trainer(tmp_path, tokenizer, rows, **settings)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    return {n: p.detach() - before[n] for n, p in trainer.model.named_parameters()}, trainer


def max_abs_diff(a, b):
    return max((a[n] - b[n]).abs().max().item() for n in a)


@pytest.mark.parametrize("stored_logps", [False, True], ids=["pi-old-computed", "pi-old-stored"])
def test_offline_first_step_equals_the_online_one(tmp_path, tiny_tokenizer, scripted_generation, stored_logps):
    online, rows, output = record_online_batch(tmp_path, tiny_tokenizer)
    assert 0 < sum(r["correct"] for r in rows) < len(rows)  # mixed groups: a real gradient
    if stored_logps:  # pi_old as the generator would store it: the starting model's log-probabilities
        probe = offline_trainer(tmp_path / "probe", tiny_tokenizer, rows)
        probe._offline.fill_cache()
        for row, i in zip(rows, range(len(rows)), strict=True):
            row["completion_logps"] = probe._offline.cache[i].tolist()
    offline, trainer = offline_step(tmp_path, tiny_tokenizer, rows)
    assert online.keys() == offline.keys()
    assert max(d.abs().max().item() for d in online.values()) > 1e-3  # the step moved the parameters
    print(f"max |online - offline| parameter change: {max_abs_diff(online, offline):.3g}")
    assert_close(offline, online, rtol=1e-5, atol=1e-6)
    assert trainer._offline.cache is not None
