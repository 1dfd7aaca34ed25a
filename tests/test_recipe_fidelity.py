"""Every `config_paper` recipe trains as the NFT authors did: each value checked against `authors_settings.SETTINGS`."""

import dataclasses

import pytest
import yaml
from authors_settings import PAPER_RECIPES, SETTINGS, derived
from trl import GRPOConfig

from nft_trl import NFTConfig
from nft_trl.cli.preflight import RECIPES_DIR, shipped_recipes
from nft_trl.rewards.verifier import extract_dapo_strict_box


def load(recipe: str) -> dict:
    return yaml.safe_load((RECIPES_DIR / f"{recipe}.yaml").read_text())


def applicable(recipe: str):
    model, method = PAPER_RECIPES[recipe]
    return [s for s in SETTINGS if method in s.methods and model in s.models]


def test_every_paper_recipe_is_in_the_table():
    assert sorted(r for r in shipped_recipes() if r.endswith("/config_paper")) == sorted(PAPER_RECIPES)


@pytest.mark.parametrize("recipe", sorted(PAPER_RECIPES))
def test_recipe_matches_the_authors_settings(recipe):
    values = load(recipe)
    values_and_derived = {**values, **derived(values)}
    mismatches = []
    for setting in applicable(recipe):
        if setting.key not in values_and_derived:
            mismatches.append(f"{setting.key}: not written out in the recipe (the authors: {setting.value!r})")
        elif values_and_derived[setting.key] != setting.value:
            mismatches.append(
                f"{setting.key}: recipe {values_and_derived[setting.key]!r}, authors {setting.value!r} "
                f"({setting.source})"
            )
    assert not mismatches, f"{recipe} drifted from the authors' settings:\n" + "\n".join(mismatches)


@pytest.mark.parametrize("recipe", sorted(PAPER_RECIPES))
def test_recipe_values_survive_the_config_class(recipe):
    """The values reach the trainer: the config class the recipe runs with keeps every table value it holds."""
    values = load(recipe)
    config_class = GRPOConfig if values.get("method") == "grpo" else NFTConfig
    fields = {f.name for f in dataclasses.fields(config_class) if f.init}
    kwargs = {k: v for k, v in values.items() if k in fields}
    kwargs.update(use_cpu=True, bf16=False, use_vllm=False, output_dir="unused")  # buildable on a CPU-only machine
    config = config_class(**kwargs)
    for setting in applicable(recipe):
        if setting.key in fields and setting.key not in ("use_vllm", "bf16"):
            assert getattr(config, setting.key) == setting.value, setting.key


def test_the_verdict_is_the_authors_rule():
    """The recipes' `dapo_strict_box` reward reads the answer the authors' rule reads (see test_math_verifier)."""
    from nft_trl.cli.train import resolve_reward_funcs

    (verdict,) = resolve_reward_funcs(["dapo_strict_box"])
    assert verdict.__name__ == "dapo_strict_box" and verdict.mode == "dapo_strict_box"
    assert extract_dapo_strict_box(r"\boxed{12}") == "12"
    assert verdict([r"\boxed{12}", r"\boxed{12.0}"], solution=["12", "12"]) == [1.0, 0.0]
