"""Offline NFT: the judged-answer format and its checks, and the trainer on stored answers. The key test: on the first
generation batch of an online run (scripted generation), the offline trainer's first optimizer step equals the online
trainer's on every parameter."""

import json

import pytest
import torch
from conftest import max_abs_diff
from datasets import Dataset

# The online side of each equivalence test is the identity tests' plain-SGD step on the same prompts and verdict.
from test_grpo_identity import MAX_COMPLETION_LENGTH, first_token_mod3, prompts
from test_grpo_identity import common_args as sgd_args
from torch.testing import assert_close

from nft_trl import NFTConfig, NFTTrainer
from nft_trl.embedded.model import build_tiny_model
from nft_trl.offline import from_eval_samples, load_judged, prepare_judged


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


def record_online_batch(tmp_path, tokenizer, model=None, **settings):
    """One online NFT step on scripted answers; its parameter change and its first batch as judged-answer rows."""
    model = model or build_tiny_model(tokenizer, seed=0)
    config = NFTConfig(**sgd_args(tmp_path, "online", **settings))
    trainer = RecordingNFTTrainer(
        model, reward_funcs=[first_token_mod3], args=config, train_dataset=prompts(), processing_class=tokenizer
    )
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
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


def offline_trainer(tmp_path, tokenizer, rows, model=None, **settings):
    config = NFTConfig(**sgd_args(tmp_path, "offline", offline=True, **settings))
    model = model or build_tiny_model(tokenizer, seed=0)
    return NFTTrainer(model, args=config, train_dataset=Dataset.from_list(rows), processing_class=tokenizer)


def offline_step(tmp_path, tokenizer, rows, **settings):
    trainer = offline_trainer(tmp_path, tokenizer, rows, **settings)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    return {n: p.detach() - before[n] for n, p in trainer.model.named_parameters()}, trainer


# Every NFT option keeps its meaning offline: the same first step as online for each (on-policy, eps <= 1 or not).
OPTIONS = {
    "default": {},
    "rft": dict(negative_weight=0.0, prompt_weighting="none"),
    "sqrt-odds-eps0.5": dict(prompt_weighting="sqrt_incorrect_odds", negative_clip=0.5),
    "token-sum-eps2": dict(loss_type="token_sum", negative_clip=2.0),
    "dapo-sequence": dict(loss_type="dapo", importance_sampling_level="sequence"),
}


@pytest.mark.parametrize(
    "stored_logps, option",
    [(False, "default"), (True, "default"), *((False, name) for name in OPTIONS if name != "default")],
    ids=lambda v: {False: "pi-old-computed", True: "pi-old-stored"}.get(v, v) if isinstance(v, bool) else v,
)
def test_offline_first_step_equals_the_online_one(tmp_path, tiny_tokenizer, scripted_generation, stored_logps, option):
    settings = OPTIONS[option]
    online, rows, output = record_online_batch(tmp_path, tiny_tokenizer, **settings)
    assert 0 < sum(r["correct"] for r in rows) < len(rows)  # mixed groups: a real gradient
    if stored_logps:  # pi_old as the generator would store it: the starting model's log-probabilities
        probe = offline_trainer(tmp_path / "probe", tiny_tokenizer, rows)
        probe._offline.fill_cache()
        for row, i in zip(rows, range(len(rows)), strict=True):
            row["completion_logps"] = probe._offline.cache[i].tolist()
    offline, trainer = offline_step(tmp_path, tiny_tokenizer, rows, **settings)
    assert online.keys() == offline.keys()
    assert max(d.abs().max().item() for d in online.values()) > 1e-3  # the step moved the parameters
    largest = max(d.abs().max().item() for d in online.values())
    print(
        f"[{option}] max |online - offline| parameter change: {max_abs_diff(online, offline):.3g} (step {largest:.3g})"
    )
    assert_close(offline, online, rtol=1e-5, atol=1e-6)
    assert trainer._offline.cache is not None


def test_offline_kl_term_equals_the_online_one(tmp_path, tiny_tokenizer, tiny_model_path, scripted_generation):
    """beta > 0 runs offline with the reference model's log-probabilities in the batch. (On a first step the reference
    is the model itself, so the KL gradient is zero: this checks the plumbing, not the KL's value.)"""
    online, rows, _ = record_online_batch(tmp_path, tiny_tokenizer, model=tiny_model_path, beta=0.1)
    offline, trainer = offline_step(tmp_path, tiny_tokenizer, rows, model=tiny_model_path, beta=0.1)
    assert trainer.ref_model is not None
    print(f"[beta=0.1] max |online - offline| parameter change: {max_abs_diff(online, offline):.3g}")
    assert_close(offline, online, rtol=1e-5, atol=1e-6)


def judged_rows(tokenizer, n=8):
    """Scripted answers as judged rows: two questions, four answers each, mixed verdicts."""
    from nft_trl.embedded.scripted import scripted_completion

    rows = []
    for i in range(n):
        ids = scripted_completion(i, MAX_COMPLETION_LENGTH, len(tokenizer), tokenizer.eos_token_id)
        ids = ids[: ids.index(tokenizer.eos_token_id) + 1] if tokenizer.eos_token_id in ids else ids
        text = tokenizer.decode(ids, skip_special_tokens=True) or "x"
        rows.append({"prompt": f"question {i // 4}", "completion": text, "completion_ids": ids, "correct": i % 3 == 0})
    return rows


class LoggingNFTTrainer(NFTTrainer):
    """Keeps every micro-batch's pi_old, keyed by the completion ids."""

    def _compute_loss(self, model, inputs):
        seen = getattr(self, "seen", [])
        for ids, mask, old, rate in zip(
            inputs["completion_ids"],
            inputs["completion_mask"],
            inputs["old_per_token_logps"],
            inputs["nft_correct_rate"],
            strict=True,
        ):
            length = int(mask.sum())
            seen.append((tuple(ids[:length].tolist()), old[:length].clone(), float(rate)))
        self.seen = seen
        return super()._compute_loss(model, inputs)


def test_offline_with_peft_trains_only_the_adapter(tmp_path, tiny_tokenizer):
    peft = pytest.importorskip("peft")
    lora = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    args = sgd_args(tmp_path, "peft", offline=True, max_steps=2, per_device_train_batch_size=4, num_generations=4)
    model = build_tiny_model(tiny_tokenizer, seed=0)
    trainer = LoggingNFTTrainer(
        model,
        args=NFTConfig(**args),
        train_dataset=Dataset.from_list(judged_rows(tiny_tokenizer)),
        processing_class=tiny_tokenizer,
        peft_config=lora,
    )
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    assert trainer.state.global_step == 2
    moved = [n for n, p in trainer.model.named_parameters() if not torch.equal(p, before[n])]
    assert moved and all("lora_" in n for n in moved)  # the base model is frozen
    ratios = [entry["nft/ratio_mean"] for entry in trainer.state.log_history if "nft/ratio_mean" in entry]
    assert abs(ratios[0] - 1) < 1e-5  # pi_old is the starting model's (the adapter starts as the identity)
    assert len(trainer.seen) == 8


def test_later_epochs_keep_the_generating_policy_and_groups_span_batches(tmp_path, tiny_tokenizer):
    rows = judged_rows(tiny_tokenizer)
    config = NFTConfig(
        **sgd_args(
            tmp_path,
            "epochs",
            offline=True,
            max_steps=-1,
            num_train_epochs=3,
            per_device_train_batch_size=2,
            num_generations=2,
        )
    )
    model = build_tiny_model(tiny_tokenizer, seed=0)
    trainer = LoggingNFTTrainer(
        model, args=config, train_dataset=Dataset.from_list(rows), processing_class=tiny_tokenizer
    )
    trainer.train()
    assert trainer.state.global_step == 12  # 8 answers / 2 per step x 3 epochs: each answer once per epoch
    first = {}
    rate_of = {tuple(r["completion_ids"]): (0.5 if r["prompt"] == "question 0" else 0.25) for r in rows}
    for ids, old, rate in trainer.seen:
        assert_close(old, first.setdefault(ids, old), rtol=0, atol=0)  # the same pi_old in every epoch
        assert rate == pytest.approx(rate_of[ids])  # r_hat of the whole group, though a batch holds 2 of its 4
    assert len(first) == len(rows) and len(trainer.seen) == 3 * len(rows)
    ratios = [entry["nft/ratio_mean"] for entry in trainer.state.log_history if "nft/ratio_mean" in entry]
    assert abs(ratios[0] - 1) < 1e-5 and abs(ratios[-1] - 1) > 1e-3  # off-policy once the model has moved


def test_text_completions_tokenise_with_eos_unless_truncated(tmp_path, tiny_tokenizer):
    rows = [
        {"prompt": "q", "completion": "12", "correct": True},
        {"prompt": "q", "completion": [{"role": "assistant", "content": "34"}], "correct": False, "truncated": True},
    ]
    rows = [{"truncated": False, **row} for row in rows]
    rows[0]["completion"] = [{"role": "assistant", "content": "12"}]
    trainer = offline_trainer(tmp_path, tiny_tokenizer, rows * 4)
    _, completions = trainer._offline.tokens(trainer.train_dataset.select([0, 1]))
    plain = tiny_tokenizer("12", add_special_tokens=False)["input_ids"]
    assert completions[0] == [*plain, trainer.eos_token_ids[0]]
    assert completions[1] == tiny_tokenizer("34", add_special_tokens=False)["input_ids"]


def test_stored_logps_of_the_wrong_length_fail_naming_the_row(tmp_path, tiny_tokenizer):
    rows = [{**row, "completion_logps": [-1.0] * len(row["completion_ids"])} for row in judged_rows(tiny_tokenizer)]
    rows[5]["completion_ids"] = [*rows[5]["completion_ids"], 9]
    with pytest.raises(ValueError, match="row 5: 'completion_logps' has"):
        offline_trainer(tmp_path, tiny_tokenizer, rows)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(reward_funcs=[first_token_mod3]), "calls no reward function"),
        (dict(eval_dataset=prompts()), "has no eval_dataset"),
    ],
)
def test_offline_refuses_what_it_would_ignore(tmp_path, tiny_tokenizer, kwargs, message):
    config = NFTConfig(**sgd_args(tmp_path, "refuse", offline=True))
    model = build_tiny_model(tiny_tokenizer, seed=0)
    rows = Dataset.from_list(judged_rows(tiny_tokenizer))
    with pytest.raises(ValueError, match=message):
        NFTTrainer(model, args=config, train_dataset=rows, processing_class=tiny_tokenizer, **kwargs)


def test_offline_config_rejects_generation_options(tmp_path):
    with pytest.raises(ValueError, match="nothing to refill"):
        NFTConfig(**sgd_args(tmp_path, "ds", offline=True, dynamic_sampling=True))


def test_resume_keeps_the_cached_generating_policy(tmp_path, tiny_tokenizer):
    rows = judged_rows(tiny_tokenizer)
    settings = dict(offline=True, max_steps=4, per_device_train_batch_size=4, save_strategy="steps", save_steps=2)
    config = NFTConfig(**sgd_args(tmp_path, "resume", **settings))
    trainer = NFTTrainer(
        build_tiny_model(tiny_tokenizer, seed=0),
        args=config,
        train_dataset=Dataset.from_list(rows),
        processing_class=tiny_tokenizer,
    )
    trainer.train()
    cache = trainer._offline.cache
    saved = torch.load(tmp_path / "resume" / "checkpoint-2" / "offline_old_logps.pt")
    assert saved.keys() == cache.keys() and all(torch.equal(saved[k], cache[k]) for k in cache)
    del trainer
    config = NFTConfig(**sgd_args(tmp_path, "resume", **{**settings, "max_steps": 6}))
    resumed = NFTTrainer(
        build_tiny_model(tiny_tokenizer, seed=1),
        args=config,
        train_dataset=Dataset.from_list(rows),
        processing_class=tiny_tokenizer,
    )
    resumed.train(resume_from_checkpoint=str(tmp_path / "resume" / "checkpoint-4"))
    assert resumed.state.global_step == 6
    assert all(torch.equal(resumed._offline.cache[k], cache[k]) for k in cache)


# ------------------------------------------------------------------------------------------------------ generate
def questions(n):
    return Dataset.from_dict(
        {
            "prompt": [[{"role": "user", "content": f"{i} + {i}?"}] for i in range(n)],
            "solution": [str(2 * i) for i in range(n)],
        }
    )


def test_generate_passes_every_question_column_to_the_reward_and_needs_no_solution(tmp_path, tiny_tokenizer):
    """A countdown-style task has `numbers` and `target` instead of `solution`: the reward gets them, one per answer
    (as TRL passes dataset columns), the rows carry no `solution`, and a question set without `prompt` is refused."""
    from nft_trl.offline.generate import generate_judged
    from nft_trl.rewards.countdown import countdown_reward

    questions = Dataset.from_dict({"prompt": ["3 4 ->", "5 6 ->"], "numbers": [[3, 4], [5, 6]], "target": [7, 11]})
    seen = []

    def reward(completions, numbers, target, **kwargs):
        seen.append((numbers, target))
        assert "solution" not in kwargs
        return countdown_reward(completions, numbers=numbers, target=target)

    out = tmp_path / "answers.jsonl"
    model = build_tiny_model(tiny_tokenizer, seed=0)
    generate_judged(model, tiny_tokenizer, questions, out, num_answers=3, max_new_tokens=4, reward=reward)
    assert seen == [([[3, 4]] * 3, [7] * 3), ([[5, 6]] * 3, [11] * 3)]
    data = load_judged(out)
    assert len(data) == 6 and "solution" not in data.column_names
    with pytest.raises(ValueError, match="'prompt' column"):
        generate_judged(model, tiny_tokenizer, questions.rename_column("prompt", "question"), tmp_path / "b.jsonl")


def test_generate_writes_judged_answers_whose_logps_are_the_trainers_pi_old(tmp_path, tiny_tokenizer):
    from nft_trl.offline.generate import generate_judged

    model = build_tiny_model(tiny_tokenizer, seed=0)
    calls = []

    def first_token_even(completions, solution, **kwargs):
        calls.append(len(completions))
        return [float(len(c[0]["content"]) % 2 == 0) for c in completions]

    out = tmp_path / "answers.jsonl"
    settings = dict(num_answers=4, max_new_tokens=5, batch_size=2, reward=first_token_even)
    generate_judged(model, tiny_tokenizer, questions(2), out, **settings)
    generate_judged(model, tiny_tokenizer, questions(3), out, **settings)  # resumes: only question 2 is new
    assert calls == [4, 4, 4]
    data = load_judged(out)
    assert len(data) == 12 and sorted(set(data["group"])) == ["0", "1", "2"]
    assert all(len(i) == len(lp) for i, lp in zip(data["completion_ids"], data["completion_logps"], strict=True))
    # The stored log-probabilities are what the offline trainer would compute as pi_old from the same model.
    rows = [{k: v for k, v in row.items() if not k.startswith("nft_")} for row in data]
    trainer = offline_trainer(tmp_path, tiny_tokenizer, [{**r, "completion_logps": None} for r in rows])
    trainer._offline.fill_cache()
    diff = max(
        (trainer._offline.cache[i] - torch.tensor(r["completion_logps"])).abs().max() for i, r in enumerate(rows)
    )
    print(f"max |generated - trainer| log-prob: {diff:.3g}")
    for i, row in enumerate(rows):
        assert_close(trainer._offline.cache[i], torch.tensor(row["completion_logps"]), rtol=1e-4, atol=1e-4)


def test_generate_drops_a_group_an_interruption_left_incomplete(tmp_path):
    from nft_trl.offline.generate import read_done

    out = tmp_path / "answers.jsonl"
    rows = [{"group": "0"}, {"group": "0"}, {"group": "1"}]
    out.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"group": "1", "pro')
    assert read_done(out, num_answers=2) == {"0"}
    assert [json.loads(line)["group"] for line in out.read_text().splitlines()] == ["0", "0"]


def test_generate_command(tmp_path, tiny_model_path, capsys):
    from nft_trl.cli.main import main

    source = tmp_path / "questions.jsonl"
    source.write_text("".join(json.dumps({"prompt": f"{i} + {i}?", "solution": str(2 * i)}) + "\n" for i in range(3)))
    out = tmp_path / "answers.jsonl"
    argv = ["generate", "--model", tiny_model_path, "--dataset", str(source), "--output", str(out)]
    argv += ["--num_answers", "2", "--max_new_tokens", "4", "--device", "cpu", "--dtype", "float32"]
    assert main(argv) == 0
    data = load_judged(out)
    assert len(data) == 6 and set(data["reward"]) <= {0.0, 1.0, None}
    from nft_trl.offline.settings import model_fingerprint, read_settings

    recorded = read_settings(out)  # the model as typed, the fingerprint of its weights
    assert recorded["model"] == tiny_model_path and recorded["model_fingerprint"] == model_fingerprint(tiny_model_path)
    assert (recorded["reward"], recorded["num_answers"], recorded["backend"]) == ("math_verifier", 2, "transformers")
    assert main(["generate", "--model", str(tmp_path / "nowhere"), "--dataset", str(source), "--output", "x"]) == 1
    assert "--model" in capsys.readouterr().err


def test_offline_config_says_num_generations_is_unused(tmp_path):
    with pytest.raises(ValueError, match="With offline=True num_generations is not used"):
        NFTConfig(**sgd_args(tmp_path, "k", offline=True, per_device_train_batch_size=2))


CHILD = """
import sys, time
from datasets import Dataset
from nft_trl.embedded.model import build_tiny_model
from nft_trl.embedded.tokenizer import build_tiny_tokenizer
from nft_trl.offline.generate import generate_judged

def slow_verdict(completions, solution, **kwargs):
    time.sleep(0.3)
    return [float(len(c[0]["content"]) % 2 == 0) for c in completions]

tokenizer = build_tiny_tokenizer()
questions = Dataset.from_dict(
    {"prompt": [[{"role": "user", "content": f"{i} + {i}?"}] for i in range(30)], "solution": ["0"] * 30}
)
generate_judged(build_tiny_model(tokenizer, seed=0), tokenizer, questions, sys.argv[1], num_answers=3,
                max_new_tokens=4, batch_size=1, reward=slow_verdict)
"""


def test_generate_resumes_after_a_kill(tmp_path, tiny_tokenizer):
    import os
    import subprocess
    import sys
    import time

    from nft_trl.offline.generate import generate_judged

    out = tmp_path / "answers.jsonl"
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(out)], env=env)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and (not out.exists() or len(out.read_text().splitlines()) < 6):
        time.sleep(0.05)
    child.kill()
    child.wait()
    assert child.returncode != 0  # killed, not finished
    written = len(out.read_text().splitlines())
    assert 6 <= written < 90

    def slow_verdict(completions, solution, **kwargs):  # the child's reward (its name is recorded), without the wait
        return [float(len(c[0]["content"]) % 2 == 0) for c in completions]

    questions = Dataset.from_dict(
        {"prompt": [[{"role": "user", "content": f"{i} + {i}?"}] for i in range(30)], "solution": ["0"] * 30}
    )
    model = build_tiny_model(tiny_tokenizer, seed=0)
    generate_judged(
        model, tiny_tokenizer, questions, out, num_answers=3, max_new_tokens=4, batch_size=4, reward=slow_verdict
    )
    data = load_judged(out)
    groups = data["group"]
    assert sorted(set(groups), key=int) == [str(i) for i in range(30)]
    assert all(groups.count(g) == 3 for g in set(groups))


# ------------------------------------------------------------------------------------- generation settings
def even_length(completions, solution, **kwargs):
    return [float(len(c[0]["content"]) % 2 == 0) for c in completions]


def test_generate_records_its_settings_beside_the_file(tmp_path, tiny_tokenizer, tiny_model_path):
    from nft_trl import __version__
    from nft_trl.offline import generation_settings
    from nft_trl.offline.generate import generate_judged
    from nft_trl.offline.settings import model_fingerprint

    out = tmp_path / "answers.jsonl"
    model = build_tiny_model(tiny_tokenizer, seed=0)
    generate_judged(
        model,
        tiny_tokenizer,
        questions(2),
        out,
        num_answers=2,
        max_new_tokens=3,
        temperature=0.7,
        top_p=0.9,
        seed=5,
        reward=even_length,
        model_name=tiny_model_path,
    )
    recorded = json.loads((tmp_path / "answers.jsonl.settings.json").read_text())
    fingerprint = model_fingerprint(tiny_model_path)
    assert fingerprint is not None and len(fingerprint) == 16
    assert recorded == {
        "model": tiny_model_path,
        "model_fingerprint": fingerprint,
        "num_answers": 2,
        "temperature": 0.7,
        "top_p": 0.9,
        "max_new_tokens": 3,
        "seed": 5,
        "reward": "even_length",
        "backend": "transformers",
        "nft_trl_version": __version__,
    }
    assert generation_settings(load_judged(out)) == recorded  # the loader carries them with the answers
    assert not list(tmp_path.glob("*.tmp"))


def test_generate_resume_with_other_settings_stops_before_generating(tmp_path, tiny_tokenizer):
    from nft_trl.offline.generate import generate_judged

    calls = []

    def verdict(completions, solution, **kwargs):
        calls.append(len(completions))
        return even_length(completions, solution)

    model = build_tiny_model(tiny_tokenizer, seed=0)
    out = tmp_path / "answers.jsonl"
    settings = dict(num_answers=2, max_new_tokens=3, temperature=1.0, reward=verdict)
    generate_judged(model, tiny_tokenizer, questions(2), out, **settings)
    before, recorded = out.read_bytes(), (tmp_path / "answers.jsonl.settings.json").read_bytes()
    with pytest.raises(ValueError) as err:
        generate_judged(model, tiny_tokenizer, questions(3), out, **{**settings, "temperature": 0.7, "num_answers": 3})
    message = str(err.value)
    assert "temperature: recorded 1.0, requested 0.7" in message and "num_answers: recorded 2, requested 3" in message
    assert "max_new_tokens" not in message and "another output file" in message
    assert out.read_bytes() == before and calls == [2, 2]  # nothing generated, nothing rewritten
    assert (tmp_path / "answers.jsonl.settings.json").read_bytes() == recorded

    generate_judged(model, tiny_tokenizer, questions(3), out, **settings)  # the same settings: it resumes
    assert calls == [2, 2, 2] and out.read_bytes().startswith(before)
    assert sorted(set(load_judged(out)["group"])) == ["0", "1", "2"]


def test_generate_accepts_an_older_file_without_settings_and_records_them(tmp_path, tiny_tokenizer, caplog):
    from nft_trl.offline.generate import generate_judged

    model = build_tiny_model(tiny_tokenizer, seed=0)
    out = tmp_path / "answers.jsonl"
    settings = dict(num_answers=2, max_new_tokens=3, reward=even_length)
    generate_judged(model, tiny_tokenizer, questions(1), out, **settings)
    (tmp_path / "answers.jsonl.settings.json").unlink()  # as an older nft-trl wrote it
    with caplog.at_level("WARNING", logger="nft_trl.offline.generate"):
        generate_judged(model, tiny_tokenizer, questions(2), out, **{**settings, "temperature": 0.5})
    assert "no settings file" in caplog.text
    assert json.loads((tmp_path / "answers.jsonl.settings.json").read_text())["temperature"] == 0.5
    assert sorted(set(load_judged(out)["group"])) == ["0", "1"]
    with pytest.raises(ValueError, match="temperature: recorded 0.5, requested 1.0"):  # from now on, checked
        generate_judged(model, tiny_tokenizer, questions(3), out, **settings)


def stored_answers(tmp_path, tokenizer, temperature=0.7, logps=True):
    """Judged rows with (or without) stored log-probabilities, in a file whose settings say `temperature`."""
    from nft_trl.offline.settings import write_settings

    rows = judged_rows(tokenizer)
    if logps:
        rows = [{**r, "completion_logps": [-1.0] * len(r["completion_ids"])} for r in rows]
    path = tmp_path / "stored.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    settings = dict(model=None, model_fingerprint=None, num_answers=4, temperature=temperature, top_p=1.0)
    write_settings(path, {**settings, "max_new_tokens": MAX_COMPLETION_LENGTH, "seed": 0, "reward": "r"})
    return load_judged(path)


def test_offline_trainer_refuses_a_temperature_other_than_the_stored_logps(tmp_path, tiny_tokenizer):
    data = stored_answers(tmp_path, tiny_tokenizer, temperature=0.7)
    model = build_tiny_model(tiny_tokenizer, seed=0)

    def trainer(**settings):
        config = NFTConfig(**sgd_args(tmp_path, "settings", offline=True, **settings))
        return NFTTrainer(model, args=config, train_dataset=data, processing_class=tiny_tokenizer)

    with pytest.raises(ValueError, match=r"generated at temperature 0.7.*Set temperature to 0.7"):
        trainer(temperature=1.0)
    assert trainer(temperature=0.7).train_dataset is data  # the generation's settings: accepted
    with pytest.raises(
        ValueError, match=r"longer than the trainer's max_completion_length 2.*max_completion_length to"
    ):
        trainer(temperature=0.7, max_completion_length=2)  # the stored answers would be cut


def test_offline_trainer_without_stored_logps_takes_another_temperature(tmp_path, tiny_tokenizer, caplog):
    data = stored_answers(tmp_path, tiny_tokenizer, temperature=0.7, logps=False)
    config = NFTConfig(**sgd_args(tmp_path, "settings", offline=True, temperature=1.0))
    with caplog.at_level("WARNING", logger="nft_trl.offline.settings"):
        NFTTrainer(
            build_tiny_model(tiny_tokenizer, seed=0), args=config, train_dataset=data, processing_class=tiny_tokenizer
        )
    assert "generated at temperature 0.7" in caplog.text  # pi_old is computed at the trainer's: a warning only


def test_an_empty_text_is_an_answer_when_its_tokens_are_stored():
    data = prepare_judged(
        answers(completion=["x", "", "z", "u", "v", "w"], completion_ids=[[5], [2], [6], [7], [8], [9]])
    )
    assert len(data) == 6


def test_online_training_on_judged_answers_warns_that_it_ignores_them(tmp_path, tiny_tokenizer, caplog):
    rows = Dataset.from_list(judged_rows(tiny_tokenizer))
    config = NFTConfig(**sgd_args(tmp_path, "online-judged"))
    with caplog.at_level("WARNING", logger="nft_trl.algorithm.trainer"):
        NFTTrainer(
            build_tiny_model(tiny_tokenizer, seed=0),
            reward_funcs=[first_token_mod3],
            args=config,
            train_dataset=rows,
            processing_class=tiny_tokenizer,
        )
    assert "Set offline=True" in caplog.text


@pytest.mark.slow
@pytest.mark.distributed
def test_two_processes_take_the_same_step_as_one(tmp_path):
    from test_distributed import run_torchrun

    (one,) = run_torchrun("train_offline.py", 1, tmp_path / "one")
    two = run_torchrun("train_offline.py", 2, tmp_path / "two")
    assert [r["world_size"] for r in two] == [2, 2]
    assert sorted(two[0]["rows"] + two[1]["rows"]) == sorted(one["rows"])  # the same 8 answers, split in two
    assert not set(two[0]["rows"]) & set(two[1]["rows"])
    delta_one, delta_two = torch.load(tmp_path / "one" / "delta.pt"), torch.load(tmp_path / "two" / "delta.pt")
    print(f"[2 processes] max |1 process - 2 processes| parameter change: {max_abs_diff(delta_one, delta_two):.3g}")
    assert_close(delta_two, delta_one, rtol=1e-5, atol=1e-6)
