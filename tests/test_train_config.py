"""A run's settings are declared once: every flag, its check and its help come from the
declaration, the recipes merge in one place, and checkpoints of the earlier form still
compare equal to the run that wrote them."""

from __future__ import annotations

import dataclasses

import pytest

from tinyvit.hybrid import HybridConfig
from tinyvit.settings import declared
from tinyvit.train import RECIPES, RunError, TrainConfig, build_parser, recipe
from tinyvit.train.config import MODEL_SETTINGS
from tinyvit.vit import ViTConfig


def flags(parser):
    return {option for action in parser._actions for option in action.option_strings}


def test_every_setting_has_its_flag():
    given = flags(build_parser())
    for field in declared(TrainConfig):
        if field.name != "model_overrides":
            assert f"--{field.name.replace('_', '-')}" in given, field.name
    for name in MODEL_SETTINGS:
        assert f"--{name.replace('_', '-')}" in given, name
        # a ViT's setting, or a hybrid's stem's (HybridConfig has both)
        assert name in {f.name for f in dataclasses.fields(HybridConfig)}
        vit_fields = {f.name for f in dataclasses.fields(ViTConfig)}
        assert name in vit_fields or name.startswith("stem_")


def test_a_flag_is_checked_by_its_declaration(capsys):
    kinds = {f.name: f.metadata["kind"] for f in declared(TrainConfig)}
    assert kinds["lr"].describe() == "a number > 0"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--lr", "0"])
    assert "--lr: must be a number > 0, got '0'" in capsys.readouterr().err


@pytest.mark.parametrize("name", list(RECIPES))
def test_each_recipe_is_a_valid_run(name):
    config = recipe(name)
    if config.device == "cuda":
        config = recipe(name, device="cpu")
    assert config.check() is config


def test_the_defaults_are_the_cpu_recipe_and_lengths_replace_each_other():
    assert recipe("cpu") == TrainConfig()
    assert TrainConfig().budget == 1800.0 and TrainConfig(epochs=3).budget is None
    gpu = recipe("gpu", time_budget=600.0)  # a budget replaces the recipe's 200 epochs
    assert gpu.epochs is None and gpu.budget == 600.0
    short = recipe("cpu", epochs=2, model_overrides={"dim": 48})  # overrides add up
    assert short.model_overrides == {"pool": "mean", "patch_dropout": 0.5, "dim": 48}
    with pytest.raises(RunError, match="steps and epochs exclude each other"):
        TrainConfig(steps=10, epochs=2).check()
    with pytest.raises(RunError, match="unknown recipe 'fast'"):
        recipe("fast")


def test_model_overrides_are_checked_by_the_vit_declaration():
    with pytest.raises(RunError, match="ViT: dropout must be a number in \\[0, 1\\), got 2"):
        TrainConfig(model_overrides={"dropout": 2}).check()
    with pytest.raises(RunError, match="'num_classes' cannot be changed by a run"):
        TrainConfig(model_overrides={"num_classes": 3}).check()


def test_a_checkpoint_of_the_earlier_form_is_the_same_run():
    """Before ``epochs`` could be unset, a budgeted run kept ``epochs=16`` beside its budget."""
    earlier = {**dataclasses.asdict(TrainConfig()), "epochs": 16, "time_budget": 1800.0}
    assert TrainConfig.from_saved(earlier).resolved() == TrainConfig().resolved()
    stepped = {**earlier, "time_budget": None, "steps": 500}
    assert TrainConfig.from_saved(stepped) == TrainConfig(steps=500)
    plain = {**earlier, "time_budget": None}  # a fixed number of epochs stays as it was
    assert TrainConfig.from_saved(plain).epochs == 16
