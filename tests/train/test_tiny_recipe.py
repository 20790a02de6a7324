"""The tiny-model curriculum as YAML (train/configs/tiny/) and the losses a phase selects (train/losses.py)."""

import importlib.util
from dataclasses import asdict
from pathlib import Path

import pytest

from llamavid.errors import InvalidInputError
from llamavid.train.losses import LossSettings
from llamavid.train.tiny import SEALED_TEST_SEED, TrainPhase, load_tiny_recipe

REPO = Path(__file__).resolve().parents[2]
V4 = REPO / "src" / "llamavid" / "train" / "configs" / "tiny" / "v4.yaml"


def _tool():
    spec = importlib.util.spec_from_file_location("train_tiny_model", REPO / "tools" / "train_tiny_model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_v4_yaml_states_exactly_the_tools_curriculum():
    tool, recipe = _tool(), load_tiny_recipe(V4)
    assert recipe.datasets == tool.DATASETS
    assert recipe.evals == tool.EVALS
    assert [p.name for p in recipe.phases] == [p.name for p in tool.PHASES]
    # Field by field, as phase.json records them (what a resumed run compares).
    assert [asdict(p) for p in recipe.phases] == [asdict(p) for p in tool.PHASES]
    # Every subset the tool derives in code is declared.
    derived = {name for phase in tool.PHASES for name in phase.mixture} - set(tool.DATASETS)
    assert derived <= set(recipe.subsets)


def test_a_phase_reads_its_losses_back():
    phase = next(p for p in load_tiny_recipe(V4).phases if p.name == "needle1")
    assert phase.losses == LossSettings(
        answer_head=0.5,
        grounding=2.0,
        scene=1.0,
        answer_prior=("image_shape", "image_colour"),
        answer_prior_on_heads=True,
    )
    assert phase.losses.uses_heads and phase.visual_lr_scale == 1.0
    assert TrainPhase("x", 1, {"a": 1.0}).losses == LossSettings()
    assert not LossSettings().uses_heads


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"answer": 1.0}, r"unknown key\(s\) \['answer'\]"),
        ({"scene": -1}, r"losses.scene: expected a weight >= 0"),
        ({"grounding": True}, r"losses.grounding: expected a weight"),
        ({"lm": "yes"}, r"losses.lm: expected true or false"),
        ({"answer_prior": ["image_hue"]}, r"unknown question type\(s\) \['image_hue'\]"),
        ({"answer_prior": {"types": [], "strength": 2}}, r"answer_prior: unknown key\(s\) \['strength'\]"),
        ({"answer_prior": "image_shape"}, r"expected a list of question types"),
    ],
)
def test_bad_loss_configs_are_refused(config, message):
    with pytest.raises(InvalidInputError, match=message):
        LossSettings.from_config(config)


def test_bad_recipes_name_the_file_and_phase(tmp_path):
    base = "datasets:\n  a: {split: train, kind: image_qa, n: 4}\n"
    cases = {
        "phases:\n  - {name: p, steps: 1, mixture: {b: 1.0}}\n": r"phase 'p' mixes undefined set\(s\) \['b'\]",
        "phases:\n  - {name: p, steps: 1, mixture: {a: 1.0}, learning_rate: 1}\n": r"phases\[0\]: unknown key",
        "phases:\n  - {name: p, mixture: {a: 1.0}}\n": r"phases\[0\]: missing 'steps'",
        "phases:\n  - {name: p, steps: 1, mixture: {a: 1.0}, losses: {lm: 2}}\n": r"phases\[0\].losses.lm",
        "evals: [z]\n": r"evals \['z'\] are not datasets",
        "subsets:\n  s: {from: nowhere, subset: visual_needle}\n": r"subsets.s.from='nowhere'",
    }
    for index, (text, message) in enumerate(cases.items()):
        path = tmp_path / f"r{index}.yaml"
        path.write_text(base + text)
        with pytest.raises(InvalidInputError, match=message) as error:
            load_tiny_recipe(path)
        assert str(path) in str(error.value)
    path = tmp_path / "top.yaml"
    path.write_text(base + "steps: 3\n")
    with pytest.raises(InvalidInputError, match=r"unknown top-level key\(s\) \['steps'\]"):
        load_tiny_recipe(path)


def test_datasets_take_generate_items_options_but_never_the_sealed_seed_or_held_out_templates(tmp_path):
    path = tmp_path / "v5.yaml"
    path.write_text(
        "datasets:\n"
        "  images: {split: train, kind: image_qa, n: 8, phrasing: varied, turns: [1, 3]}\n"
        "  clips: {split: train, kind: video_qa, n: 8, clip_frames: [5, 60]}\n"
        "  needles: {split: train, kind: long_qa, n: 12, episode_frames: 60, balanced_needles: true}\n"
        "  eval_heldout: {split: heldout, kind: image_qa, n: 8, seed: 2, phrasing: heldout_templates}\n"
    )
    recipe = load_tiny_recipe(path)
    assert recipe.dataset_options == {
        "images": {"phrasing": "varied", "turns": (1, 3)},
        "clips": {"clip_frames": (5, 60)},
        "needles": {"balanced_needles": True},
        "eval_heldout": {"phrasing": "heldout_templates"},
    }
    assert load_tiny_recipe(V4).dataset_options == {}
    plan = (REPO / "docs" / "tiny-model.md").read_text()
    assert f"sealed test seed: `{SEALED_TEST_SEED}`" in plan  # the code guards the seed the plan sealed
    refused = {
        "a: {split: train, kind: image_qa, n: 8, phrasing: heldout_templates}": "may not use the held-out templates",
        f"a: {{split: heldout, kind: image_qa, n: 8, seed: {SEALED_TEST_SEED}}}": "sealed v5 test seed",
        "a: {split: train, kind: image_qa, n: 8, phrasing: posh}": "phrasing='posh' is unknown",
        "a: {split: train, kind: image_qa, n: 8, colour_spelling: us}": r"found \['colour_spelling'",
    }
    for line, message in refused.items():
        path.write_text("datasets:\n  " + line + "\n")
        with pytest.raises(InvalidInputError, match=message):
            load_tiny_recipe(path)
