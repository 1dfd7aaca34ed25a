"""Data loaders on local fixtures: DAPO-Math-17k (de-duplication, prompt), verl parquet, prompt/solution, errors."""

import json

import pytest
from datasets import Dataset

from nft_trl.data import (
    BOXED_INSTRUCTION,
    MissingColumnError,
    dapo_problem,
    detect_format,
    filter_long_prompts,
    load_math_dataset,
    load_raw_dataset,
)


DAPO_INSTRUCTION = (
    "Solve the following math problem step by step. The last line of your response should be of the form "
    "Answer: $Answer (without quotes) where $Answer is the answer to the problem."
)
DAPO_REMINDER = 'Remember to put your answer on its own line after "Answer:".'


def dapo_row(problem: str, answer: str, index: int) -> dict:
    return {
        "data_source": "math_dapo",
        "prompt": [{"role": "user", "content": f"{DAPO_INSTRUCTION}\n\n{problem}\n\n{DAPO_REMINDER}"}],
        "ability": "MATH",
        "reward_model": {"ground_truth": answer, "style": "rule-lm"},
        "extra_info": {"index": f"uuid-{index}"},
    }


def dapo_rows(num_problems: int = 5, repeats: int = 4) -> list[dict]:
    # The public copy repeats the whole problem list; the repeats differ only in extra_info.
    return [
        dapo_row(f"Compute ${i} + {i}$.\n\nGive an integer.", str(2 * i), rep * num_problems + i)
        for rep in range(repeats)
        for i in range(num_problems)
    ]


@pytest.fixture
def dapo_parquet(tmp_path):
    path = tmp_path / "dapo-math-17k.parquet"
    Dataset.from_list(dapo_rows()).to_parquet(str(path))
    return path


def test_dapo_deduplicates_and_builds_boxed_prompt(dapo_parquet):
    dataset = load_math_dataset(str(dapo_parquet), "dapo")
    assert len(dataset) == 5
    assert dataset.column_names == ["prompt", "solution", "data_source"]
    assert dataset["solution"] == ["0", "2", "4", "6", "8"]  # first occurrences, in order
    prompt = dataset[3]["prompt"]
    assert prompt == [{"role": "user", "content": f"Compute $3 + 3$.\n\nGive an integer.\n\n{BOXED_INSTRUCTION}"}]
    assert "Answer:" not in prompt[0]["content"] and "\\boxed{}" in prompt[0]["content"]
    assert set(dataset["data_source"]) == {"math_dapo"}


def test_dapo_keeps_same_problem_with_different_answers(tmp_path):
    rows = [dapo_row("Find x.", "1", 0), dapo_row("Find x.", "2", 1), dapo_row("Find x.", "1", 2)]
    path = tmp_path / "dapo.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    dataset = load_math_dataset(str(path))  # auto-detected as DAPO from the instruction
    assert dataset["solution"] == ["1", "2"]


def test_auto_detects_each_format(dapo_parquet):
    dapo = Dataset.from_parquet(str(dapo_parquet))
    assert detect_format(dapo) == "dapo"
    verl = Dataset.from_list(
        [{"prompt": [{"role": "user", "content": "1+1? \\boxed{}"}], "reward_model": {"ground_truth": "2"}}]
    )
    assert detect_format(verl) == "verl"
    assert detect_format(Dataset.from_dict({"prompt": ["1+1?"], "solution": ["2"]})) == "prompt_solution"


def test_verl_keeps_prompt_and_takes_ground_truth(tmp_path):
    prompt = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "1+1? Answer in \\boxed{}."}]
    rows = [
        {"data_source": "gsm8k", "prompt": prompt, "reward_model": {"ground_truth": "2", "style": "rule"}},
        {"data_source": "gsm8k", "prompt": prompt, "reward_model": {"ground_truth": "2", "style": "rule"}},
    ]
    path = tmp_path / "train.parquet"
    Dataset.from_list(rows).to_parquet(str(path))
    dataset = load_math_dataset(str(path), "verl")
    assert len(dataset) == 2  # verl data is taken as is: no de-duplication
    assert dataset[0]["prompt"] == prompt and dataset[0]["solution"] == "2" and dataset[0]["data_source"] == "gsm8k"


def test_prompt_solution_casts_gold_to_string(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps({"prompt": "1+1?", "solution": 2}) + "\n")
    dataset = load_math_dataset(str(path), "prompt_solution")
    assert dataset[0]["solution"] == "2" and dataset[0]["data_source"] == str(path)


@pytest.mark.parametrize(
    ("rows", "dataset_format", "missing"),
    [
        ([{"question": "1+1?", "solution": "2"}], "prompt_solution", "'prompt'"),
        ([{"prompt": "1+1?", "answer": "2"}], "prompt_solution", "'solution'"),
        ([{"prompt": "1+1?", "answer": "2"}], "auto", "'solution'"),
        ([{"prompt": "1+1?", "data_source": "x"}], "verl", "'reward_model'"),
        ([{"prompt": "1+1?", "reward_model": {"style": "rule"}}], "verl", "reward_model.ground_truth"),
        ([{"problem": "1+1?", "reward_model": {"ground_truth": "2"}}], "dapo", "'prompt'"),
    ],
)
def test_missing_column_is_named(tmp_path, rows, dataset_format, missing):
    path = tmp_path / "bad.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    with pytest.raises(MissingColumnError, match=missing):
        load_math_dataset(str(path), dataset_format)


def test_dapo_problem_extraction():
    assert dapo_problem(f"{DAPO_INSTRUCTION}\n\nP\n\nQ\n\n{DAPO_REMINDER}") == "P\n\nQ"
    assert dapo_problem("  A plain problem.  ") == "A plain problem."


def test_load_raw_dataset_sources(tmp_path):
    saved = tmp_path / "saved"
    Dataset.from_dict({"prompt": ["a"], "solution": ["1"]}).save_to_disk(str(saved))
    assert len(load_raw_dataset(str(saved))) == 1
    (tmp_path / "data.txt").write_text("x")
    with pytest.raises(ValueError, match="unknown file type"):
        load_raw_dataset(str(tmp_path / "data.txt"))
    with pytest.raises(ValueError, match="dataset_format"):
        load_math_dataset(str(saved), "gsm8k")


def test_filter_long_prompts(tiny_tokenizer):
    dataset = Dataset.from_list(
        [
            {"prompt": [{"role": "user", "content": "What is 1 + 1?"}], "solution": "2"},
            {"prompt": [{"role": "user", "content": "What is 1 + 1? " * 50}], "solution": "2"},
        ]
    )
    short = len(
        tiny_tokenizer.apply_chat_template(dataset[0]["prompt"], add_generation_prompt=True, tokenize=True)[
            "input_ids"
        ]
    )
    kept = filter_long_prompts(dataset, tiny_tokenizer, max_prompt_length=short)
    assert len(kept) == 1 and kept[0]["prompt"][0]["content"] == "What is 1 + 1?"
