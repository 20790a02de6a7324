"""The tiny-model curriculum as YAML (train/configs/tiny/) and the losses a phase selects (train/losses.py)."""

import json
from dataclasses import asdict, replace
from pathlib import Path

import pytest

from llamavid.errors import InvalidInputError
from llamavid.train.curriculum import SEALED_TEST_SEEDS, Curriculum, Phase, load_curriculum
from llamavid.train.losses import LossSettings
from llamavid.train.stage0_vision import Stage0Settings

REPO = Path(__file__).resolve().parents[2]
V4 = REPO / "src" / "llamavid" / "train" / "configs" / "tiny" / "v4.yaml"
# Recorded from tools/train_tiny_model.py (the Python loop that trained the committed v4) before it was removed.
V4_RECORD = json.loads((Path(__file__).parent / "data" / "tiny_v4_curriculum.json").read_text())


def test_v4_yaml_states_exactly_the_curriculum_that_trained_v4():
    recipe = load_curriculum(V4)
    assert {name: list(row) for name, row in recipe.datasets.items()} == V4_RECORD["datasets"]
    assert list(recipe.evals) == V4_RECORD["evals"]
    stage0 = asdict(Stage0Settings(**recipe.stage0))
    assert stage0.pop("grey_share") == 0.0  # a setting added after v4 (v5.5 experiments), off
    for later in ("colour_channels", "adversary", "grey_pairs"):  # added for v5.6, off in v4
        assert stage0.pop(later) == 0
    assert stage0.pop("occupancy_weight") == 1.0  # added after v5.7, 1 in v4
    assert stage0.pop("shapes_present_weight") == 1.0  # added after v5.7, 1 in v4
    assert json.loads(json.dumps(stage0)) == V4_RECORD["stage0"]
    # Field by field, as the old loop recorded them.
    for phase, old in zip(recipe.phases, V4_RECORD["phases"], strict=True):
        losses = asdict(phase.losses)
        assert losses.pop("count") == 0.0  # a loss added after v4 (v5.2), off in v4's phases
        assert losses.pop("attend") == 0.0  # added after v5.5 (measured, off everywhere)
        assert losses.pop("shape_adversary") == 0.0  # added for v5.16, off before it
        assert {
            "name": phase.name,
            "steps": phase.steps,
            "mixture": phase.mixture,
            "batch_size": phase.batch_size,
            "batch_sizes": phase.batch_sizes,
            "lr": phase.lr,
            "visual_lr": phase.lr * phase.visual_lr_scale,
            "warmup": phase.warmup,
            "eval_every": phase.eval_every,
            "seed": phase.seed,
            "losses": json.loads(json.dumps(losses)),
        } == old


def test_a_phase_reads_its_losses_back():
    phase = next(p for p in load_curriculum(V4).phases if p.name == "needle1")
    assert phase.losses == LossSettings(
        answer_head=0.5,
        grounding=2.0,
        scene=1.0,
        answer_prior=("image_shape", "image_colour"),
        answer_prior_on_heads=True,
    )
    assert phase.losses.uses_heads and phase.visual_lr_scale == 1.0
    assert Phase("x", 1, {"a": 1.0}).losses == LossSettings()
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
        "subsets:\n  s: {from: a, subset: colour}\n": r"subsets.s.subset='colour': expected one of",
        "subsets:\n  s: {from: a, subset: question_type, question_type: image_shape, answers: []}\n": (
            r"subsets.s.answers=\[\]: expected a non-empty list"
        ),
        "subsets:\n  s: {from: a, subset: question_type, question_type: image_shape, answers: red}\n": (
            r"subsets.s.answers='red'"
        ),
        "subsets:\n  s: {from: a, subset: question_type, question_type: []}\n": (
            r"subsets.s.question_type=\[\]: expected a question type or a non-empty list"
        ),
        "subsets:\n  s: {from: a, subset: question_type}\n": r"subsets.s.question_type=None",
        "subsets:\n  s: {from: a, subset: question_type, question_type: [image_shape, image_color]}\n": (
            r"subsets.s.question_type: unknown question type\(s\) \['image_color'\]"
        ),
        "subsets:\n  s: {from: a, subset: visual_needle, answers: [red]}\n": (
            r"subsets.s: unknown key\(s\) \['answers'\] for a visual_needle subset"
        ),
        "tokenizers: {llm: sentencepiece}\n": r"tokenizers.llm='sentencepiece': expected llm in",
        "tokenizers: {vision: bert}\n": r"tokenizers.vision='bert'",
        "stage0: {grey_share: 2}\n": r"stage0: stage0 grey_share must be within 0..1, found 2",
    }
    for index, (text, message) in enumerate(cases.items()):
        path = tmp_path / f"r{index}.yaml"
        path.write_text(base + text)
        with pytest.raises(InvalidInputError, match=message) as error:
            load_curriculum(path)
        assert str(path) in str(error.value)
    path = tmp_path / "top.yaml"
    path.write_text(base + "steps: 3\n")
    with pytest.raises(InvalidInputError, match=r"unknown top-level key\(s\) \['steps'\]"):
        load_curriculum(path)


def test_datasets_take_generate_items_options_but_never_the_sealed_seed_or_held_out_templates(tmp_path):
    path = tmp_path / "v5.yaml"
    path.write_text(
        "datasets:\n"
        "  images: {split: train, kind: image_qa, n: 8, phrasing: varied, turns: [1, 3]}\n"
        "  clips: {split: train, kind: video_qa, n: 8, clip_frames: [5, 60]}\n"
        "  needles: {split: train, kind: long_qa, n: 12, episode_frames: 60, balanced_needles: true}\n"
        "  eval_heldout: {split: heldout, kind: image_qa, n: 8, seed: 2, phrasing: heldout_templates}\n"
    )
    recipe = load_curriculum(path)
    assert recipe.dataset_options == {
        "images": {"phrasing": "varied", "turns": (1, 3)},
        "clips": {"clip_frames": (5, 60)},
        "needles": {"balanced_needles": True},
        "eval_heldout": {"phrasing": "heldout_templates"},
    }
    assert load_curriculum(V4).dataset_options == {}
    plan = (REPO / "docs" / "tiny-model.md").read_text()
    for seed in SEALED_TEST_SEEDS.values():  # the code guards every seed a plan sealed
        assert f"sealed test seed: `{seed}`" in plan
    refused = {
        "a: {split: train, kind: image_qa, n: 8, phrasing: heldout_templates}": "may not use the held-out templates",
        f"a: {{split: heldout, kind: image_qa, n: 8, seed: {SEALED_TEST_SEEDS['v5']}}}": "sealed v5 test seed",
        f"a: {{split: train, kind: image_qa, n: 8, seed: {SEALED_TEST_SEEDS['v5.1']}}}": "sealed v5.1 test seed",
        f"a: {{split: train, kind: video_qa, n: 8, seed: {SEALED_TEST_SEEDS['v5.2']}}}": "sealed v5.2 test seed",
        f"a: {{split: train, kind: text_copy, n: 8, seed: {SEALED_TEST_SEEDS['v5.3']}}}": "sealed v5.3 test seed",
        f"a: {{split: train, kind: video_qa, n: 8, seed: {SEALED_TEST_SEEDS['v5.4']}}}": "sealed v5.4 test seed",
        f"a: {{split: train, kind: image_qa, n: 8, seed: {SEALED_TEST_SEEDS['v5.5']}}}": "sealed v5.5 test seed",
        f"a: {{split: train, kind: video_qa, n: 8, seed: {SEALED_TEST_SEEDS['v5.6']}}}": "sealed v5.6 test seed",
        f"a: {{split: train, kind: long_qa, n: 8, seed: {SEALED_TEST_SEEDS['v5.7']}}}": "sealed v5.7 test seed",
        f"a: {{split: train, kind: image_qa, n: 8, seed: {SEALED_TEST_SEEDS['v5.8']}}}": "sealed v5.8 test seed",
        f"a: {{split: train, kind: image_crowded, n: 8, seed: {SEALED_TEST_SEEDS['v5.9']}}}": "sealed v5.9 test seed",
        f"a: {{split: train, kind: image_qa, n: 8, seed: {SEALED_TEST_SEEDS['v5.10']}}}": "sealed v5.10 test seed",
        f"a: {{split: train, kind: video_qa, n: 8, seed: {SEALED_TEST_SEEDS['v5.11']}}}": "sealed v5.11 test seed",
        f"a: {{split: train, kind: image_qa, n: 8, seed: {SEALED_TEST_SEEDS['v5.12']}}}": "sealed v5.12 test seed",
        f"a: {{split: train, kind: long_qa, n: 8, seed: {SEALED_TEST_SEEDS['v5.13']}}}": "sealed v5.13 test seed",
        f"a: {{split: train, kind: long_qa, n: 8, seed: {SEALED_TEST_SEEDS['v5.14']}}}": "sealed v5.14 test seed",
        f"a: {{split: train, kind: long_qa, n: 8, seed: {SEALED_TEST_SEEDS['v5.15']}}}": "sealed v5.15 test seed",
        f"a: {{split: train, kind: long_qa, n: 8, seed: {SEALED_TEST_SEEDS['v5.16']}}}": "sealed v5.16 test seed",
        f"a: {{split: train, kind: long_qa, n: 8, seed: {SEALED_TEST_SEEDS['v5.17']}}}": "sealed v5.17 test seed",
        f"a: {{split: train, kind: long_qa, n: 8, seed: {SEALED_TEST_SEEDS['v5.18']}}}": "sealed v5.18 test seed",
        "a: {split: train, kind: video_qa, n: 8, varied_needles: true}": "varied_needles: expected true or false on",
        "a: {split: train, kind: long_qa, n: 8, varied_needles: 1}": "varied_needles: expected true or false on",
        "a: {split: train, kind: image_qa, n: 8, phrasing: posh}": "phrasing='posh' is unknown",
        "a: {split: train, kind: image_qa, n: 8, colour_spelling: us}": r"found \['colour_spelling'",
    }
    for line, message in refused.items():
        path.write_text("datasets:\n  " + line + "\n")
        with pytest.raises(InvalidInputError, match=message):
            load_curriculum(path)


def test_v5_changes_only_the_data_and_tokenizers_of_v4_and_adds_a_last_clip_phase():
    """tiny/v5 keeps v4's phases and stage 0 and appends one clip-heavy phase; its training sets ask in varied
    phrasings, its evals use the dev seed."""
    v4, v5 = load_curriculum(V4), load_curriculum(V4.with_name("v5.yaml"))
    assert v5.phases[:-1] == v4.phases and v5.stage0 == v4.stage0 and v5.subsets == v4.subsets
    assert (
        v5.phases[-1].name == "clips"
        and max(v5.phases[-1].mixture, key=v5.phases[-1].mixture.get) == "video_qa"
    )
    assert v5.tokenizers == {"llm": "subword", "qformer": "bert"}
    train = {name: row for name, row in v5.datasets.items() if row[0] == "train"}
    assert {name: row[:4] for name, row in train.items()} == {name: v4.datasets[name][:4] for name in train}
    assert all(v5.dataset_options[name]["phrasing"] == "varied" for name in train)
    assert v5.dataset_options["video_qa"]["clip_frames"] == (5, 60)
    assert all(v5.dataset_options[name]["balanced_needles"] for name in train if name.startswith("long"))
    assert {v5.datasets[name][3] for name in v5.evals} == {2}  # the dev seed, never the sealed one
    assert {v5.dataset_options.get(name, {}).get("phrasing", "canonical") for name in v5.evals} == {
        "canonical",
        "varied",
        "heldout_templates",
    }


def test_v5_1_keeps_v5_through_polish_then_trains_clips_and_ends_on_1200_frame_episodes():
    """tiny/v5.1 (the committed model) is v5 with its last phases moved: the same data, stage 0, tokenizers, evals
    and first ten phases; `polish2` gone; `clips` (no 1,200-frame episodes) before `long1200b`, which is last."""
    v5, v51 = load_curriculum(V4.with_name("v5.yaml")), load_curriculum(V4.with_name("v5.1.yaml"))
    assert v51.phases[:10] == v5.phases[:10] and v5.phases[9].name == "polish"
    assert (v51.datasets, v51.subsets, v51.stage0, v51.tokenizers, v51.evals) == (
        v5.datasets,
        v5.subsets,
        v5.stage0,
        v5.tokenizers,
        v5.evals,
    )
    clips, last = v51.phases[10:]
    assert (clips.name, last.name) == ("clips", "long1200b")
    assert not any(name.startswith("long1200") for name in clips.mixture)
    assert max(clips.mixture, key=clips.mixture.get) == "video_qa"
    long1200_share = sum(w for name, w in last.mixture.items() if name.startswith("long1200"))
    assert long1200_share == pytest.approx(0.4) and last.mixture["video_qa"] >= 0.3


def test_v5_2_is_v5_1_then_a_digit_copy_phase():
    """tiny/v5.2 (the committed model) extends v5.1: the same data and twelve phases, then `digits`: 200 steps at
    a low learning rate, mostly 60-frame subtitle needles, clips and images kept in the mixture."""
    v51, v52 = load_curriculum(V4.with_name("v5.1.yaml")), load_curriculum(V4.with_name("v5.2.yaml"))
    assert v52.phases[:-1] == v51.phases
    assert (v52.datasets, v52.subsets, v52.stage0, v52.tokenizers, v52.evals, v52.dataset_options) == (
        v51.datasets,
        v51.subsets,
        v51.stage0,
        v51.tokenizers,
        v51.evals,
        v51.dataset_options,
    )
    last = v52.phases[-1]
    assert (last.name, last.steps, last.lr) == ("digits", 200, 1e-4)
    assert max(last.mixture, key=last.mixture.get) == "long60_subtitle" and last.mixture["video_qa"] >= 0.25
    assert last.losses == v51.phases[-1].losses


def test_v5_3_is_v5_1_without_the_successor_stand_in():
    """tiny/v5.3 extends v5.1 (v5.2 without its late `digits` phase): the same data, twelve phases, steps, learning
    rates and losses; every text share is taken from the `text_bigger` and `text_recall` question types of
    `text_qa` (half each), so `text_next` ("What number comes after 6?", the successor answers that hid the
    subtitle digits 6 and 7) is never trained."""
    v51, v53 = load_curriculum(V4.with_name("v5.1.yaml")), load_curriculum(V4.with_name("v5.3.yaml"))
    assert [p.name for p in v53.phases] == [p.name for p in v51.phases]
    assert (v53.datasets, v53.stage0, v53.tokenizers, v53.evals) == (
        v51.datasets,
        v51.stage0,
        v51.tokenizers,
        v51.evals,
    )
    text_types = {"text_bigger", "text_recall"}
    assert v53.subsets == {
        **v51.subsets,
        **{
            name: {"from": "text_qa", "subset": "question_type", "question_type": name} for name in text_types
        },
    }
    for old, new in zip(v51.phases, v53.phases, strict=True):
        assert asdict(new) | {"mixture": None} == asdict(old) | {"mixture": None}, new.name
        text = old.mixture.get("text_qa", 0.0)
        assert new.name in {"align", "long1200b"} or text, new.name
        expected = {name: w for name, w in old.mixture.items() if name != "text_qa"}
        expected |= {name: text / 2 for name in text_types if text}
        assert new.mixture == pytest.approx(expected), new.name
        assert "text_qa" not in new.mixture, new.name
        assert sum(new.mixture.values()) == pytest.approx(1.0), new.name


def test_v5_4_is_v5_3_then_a_phase_on_new_short_clips():
    """tiny/v5.4 extends v5.3: its twelve phases unchanged, then `fresh`: 300 steps at a low learning rate whose
    clip share is half new 5-16-frame clips (`video_qa_short`, a seed no other training set uses), so the last
    phase shows clips the curriculum has not read ten times over."""
    v53, v54 = load_curriculum(V4.with_name("v5.3.yaml")), load_curriculum(V4.with_name("v5.4.yaml"))
    assert v54.phases[:-1] == v53.phases
    assert (v54.subsets, v54.stage0, v54.tokenizers, v54.evals) == (
        v53.subsets,
        v53.stage0,
        v53.tokenizers,
        v53.evals,
    )
    new_sets = {name: spec for name, spec in v54.datasets.items() if name not in v53.datasets}
    assert set(new_sets) == {"video_qa_short"} and {k: v54.datasets[k] for k in v53.datasets} == v53.datasets
    split, kind, _, seed, _ = new_sets["video_qa_short"]  # (split, kind, items, seed, long-video frames)
    assert (split, kind, v54.dataset_options["video_qa_short"]["clip_frames"]) == (
        "train",
        "video_qa",
        (5, 16),
    )
    assert seed not in {spec[3] for spec in v53.datasets.values() if spec[0] == "train"}
    last = v54.phases[-1]
    assert (last.name, last.steps, last.lr) == ("fresh", 300, 1e-4)
    assert last.mixture["video_qa_short"] == last.mixture["video_qa"] == 0.3
    assert sum(last.mixture.values()) == pytest.approx(1.0)
    assert last.losses == v53.phases[-1].losses


@pytest.mark.parametrize(
    ("name", "tower"),
    [
        ("v5.5", {"grey_share": 0.5}),  # half of every stage-0 batch in grey (no colour targets)
        ("v5.6", {"colour_channels": 32, "adversary": 1.0, "grey_pairs": 1.0}),  # split form and colour
    ],
)
def test_v5_5_and_v5_6_are_v5_4_on_another_stage0_tower(name: str, tower: dict) -> None:
    """tiny/v5.5 and tiny/v5.6 change only their stage-0 tower; phases, data, tokenizers and evals are v5.4's."""
    v54, other = load_curriculum(V4.with_name("v5.4.yaml")), load_curriculum(V4.with_name(f"{name}.yaml"))
    assert (other.phases, other.datasets, other.subsets, other.tokenizers, other.evals) == (
        v54.phases,
        v54.datasets,
        v54.subsets,
        v54.tokenizers,
        v54.evals,
    )
    assert other.stage0 == {**v54.stage0, **tower} and not set(tower) & set(v54.stage0)


def test_v5_7_is_v5_6_on_a_weaker_adversary_with_a_longer_needle8_that_reads_subtitle_needles() -> None:
    """tiny/v5.7 = v5.6 with adversary 0.3 and a 500-step `needle8` whose `long60` share is the subtitle-needle
    subset; every other phase, set, tokenizer and eval is v5.6's (so v5.4's)."""
    v56, v57 = load_curriculum(V4.with_name("v5.6.yaml")), load_curriculum(V4.with_name("v5.7.yaml"))
    assert (v57.datasets, v57.subsets, v57.tokenizers, v57.evals) == (
        v56.datasets,
        v56.subsets,
        v56.tokenizers,
        v56.evals,
    )
    assert v57.stage0 == {**v56.stage0, "adversary": 0.3}
    assert [p.name for p in v57.phases] == [p.name for p in v56.phases]
    changed = [(old, new) for old, new in zip(v56.phases, v57.phases, strict=True) if old != new]
    assert [new.name for _, new in changed] == ["needle8"]
    ((old, new),) = changed
    assert new.steps == 500 and old.steps == 300
    assert new.mixture == {k if k != "long60" else "long60_subtitle": v for k, v in old.mixture.items()}
    assert (new.lr, new.losses) == (old.lr, old.losses)


def test_v5_8_is_v5_7_on_a_layout_keeping_full_adversary_with_a_tail_on_new_clips() -> None:
    """tiny/v5.8 = v5.7 with adversary 1.0 and the occupancy loss x4, and `clips`, `long1200b` and `fresh` reading
    the new clips `video_qa_s4` where v5.7's read `video_qa`; every other phase, set and setting is v5.7's."""
    v57, v58 = load_curriculum(V4.with_name("v5.7.yaml")), load_curriculum(V4.with_name("v5.8.yaml"))
    assert v58.stage0 == {**v57.stage0, "adversary": 1.0, "occupancy_weight": 4.0}
    assert (v58.subsets, v58.tokenizers, v58.evals) == (v57.subsets, v57.tokenizers, v57.evals)
    (new_set,) = set(v58.datasets) - set(v57.datasets)
    assert {k: v for k, v in v58.datasets.items() if k != new_set} == v57.datasets
    assert v58.datasets[new_set] == ("train", "video_qa", 4000, 4, 0)
    assert v57.datasets["video_qa"] == ("train", "video_qa", 5000, 0, 0)
    assert v58.dataset_options[new_set] == {**v57.dataset_options["video_qa"], "clip_frames": (5, 32)}
    assert [p.name for p in v58.phases] == [p.name for p in v57.phases]
    changed = [(old, new) for old, new in zip(v57.phases, v58.phases, strict=True) if old != new]
    assert [new.name for _, new in changed] == ["clips", "long1200b", "fresh"]
    for old, new in changed:
        assert new.mixture == {k if k != "video_qa" else new_set: v for k, v in old.mixture.items()}
        assert replace(new, mixture=old.mixture) == old


def test_v5_9_is_v5_4_with_crowded_shape_and_size_questions_in_images() -> None:
    """tiny/v5.9 = v5.4 with one new set, `image_crowded`, taking a fifth of `images`' batches from the two image
    sets; every other phase, set, setting and the stage-0 tower are v5.4's."""
    v54, v59 = load_curriculum(V4.with_name("v5.4.yaml")), load_curriculum(V4.with_name("v5.9.yaml"))
    assert (v59.stage0, v59.subsets, v59.tokenizers, v59.evals) == (
        v54.stage0,
        v54.subsets,
        v54.tokenizers,
        v54.evals,
    )
    (new_set,) = set(v59.datasets) - set(v54.datasets)
    assert {k: v for k, v in v59.datasets.items() if k != new_set} == v54.datasets
    assert v59.datasets[new_set] == ("train", "image_crowded", 8000, 0, 0)
    changed = [(old, new) for old, new in zip(v54.phases, v59.phases, strict=True) if old != new]
    assert [new.name for _, new in changed] == ["images"]
    ((old, new),) = changed
    assert old.mixture == {"image_qa": 0.45, "image_qa_s1": 0.4, "text_bigger": 0.075, "text_recall": 0.075}
    assert new.mixture == {
        "image_qa": 0.35,
        "image_qa_s1": 0.3,
        new_set: 0.2,
        "text_bigger": 0.075,
        "text_recall": 0.075,
    }
    assert replace(new, mixture=old.mixture) == old


def test_v5_10_is_v5_4_with_crowded_shape_and_size_questions_in_place_of_few_object_ones_and_text():
    """tiny/v5.10 = v5.4 with `image_crowded` in `images`, `videos` and `mix`; its share comes from the few-object
    shape and size questions (`image_qa` gives way to its five other types) and from text, so every other image
    type keeps its v5.4 share; `needle8` is v5.7's; every other phase, set, setting and the stage-0 tower are
    v5.4's."""
    v54, v510 = load_curriculum(V4.with_name("v5.4.yaml")), load_curriculum(V4.with_name("v5.10.yaml"))
    assert (v510.stage0, v510.tokenizers, v510.evals) == (v54.stage0, v54.tokenizers, v54.evals)
    assert {k: v for k, v in v510.datasets.items() if k != "image_crowded"} == v54.datasets
    assert v510.datasets["image_crowded"] == ("train", "image_crowded", 8000, 0, 0)
    (rest,) = set(v510.subsets) - set(v54.subsets)
    assert v510.subsets[rest]["from"] == "image_qa"
    assert set(v510.subsets[rest]["question_type"]) == {
        f"image_{name}" for name in ("colour", "count", "position", "text", "background")
    }
    changed = {new.name: (old, new) for old, new in zip(v54.phases, v510.phases, strict=True) if old != new}
    assert list(changed) == ["images", "videos", "mix", "needle8"]
    # the plan's amendment: v5.7's `needle8`, which reads the subtitle-needle questions directly
    assert changed.pop("needle8")[1] == next(
        p for p in load_curriculum(V4.with_name("v5.7.yaml")).phases if p.name == "needle8"
    )
    for old, new in changed.values():
        assert replace(new, mixture=old.mixture) == old
        # image_qa's five other types keep their share (to rounding); shape and size give theirs to crowded scenes
        assert new.mixture[rest] == pytest.approx(old.mixture["image_qa"] * 5 / 7, abs=2e-3)
        assert new.mixture["image_qa_s1"] == old.mixture["image_qa_s1"]
        assert new.mixture.get("video_qa") == old.mixture.get("video_qa")
        assert sum(new.mixture.values()) == pytest.approx(1.0)
    assert [new.mixture["image_crowded"] for _, new in changed.values()] == [0.2, 0.1, 0.1]


def test_v5_11_is_v5_10_with_wider_question_wordings_and_a_last_short_clip_phase():
    """tiny/v5.11 = v5.10 with its image and clip question sets worded under `varied_wide` (the same items and
    media; only position and order questions can read differently) and a fourteenth phase, `fresh2`, of new short
    clips; every other set, phase, the stage-0 tower, tokenizers and dev evals are v5.10's."""
    v510, v511 = load_curriculum(V4.with_name("v5.10.yaml")), load_curriculum(V4.with_name("v5.11.yaml"))
    assert (v511.datasets, v511.subsets, v511.stage0, v511.tokenizers, v511.evals) == (
        v510.datasets,
        v510.subsets,
        v510.stage0,
        v510.tokenizers,
        v510.evals,
    )
    wide = {
        name for name, options in v511.dataset_options.items() if options.get("phrasing") == "varied_wide"
    }
    assert wide == {"image_qa", "image_qa_s1", "video_qa", "video_qa_short"}
    for name, options in v511.dataset_options.items():
        assert options == {
            **v510.dataset_options[name],
            **({"phrasing": "varied_wide"} if name in wide else {}),
        }
    assert v511.phases[:-1] == v510.phases
    last = v511.phases[-1]
    assert (last.name, last.steps, last.lr) == ("fresh2", 300, 1e-4)
    assert last.mixture == {
        "video_qa_short": 0.6,
        "image_qa": 0.25,
        "text_bigger": 0.075,
        "text_recall": 0.075,
    }
    assert last.losses == v510.phases[-1].losses


def _everything_but_phases(curriculum: Curriculum) -> tuple:
    """A curriculum's sets (with their options), subsets, stage-0 tower, tokenizers and dev evals."""
    c = curriculum
    return (c.datasets, c.dataset_options, c.subsets, c.stage0, c.tokenizers, c.evals)


def _changed_phases(base: Curriculum, child: Curriculum) -> list[tuple[Phase, Phase]]:
    """``(base phase, child phase)`` for each phase the child changes (both list the same phases in order)."""
    return [(old, new) for old, new in zip(base.phases, child.phases, strict=True) if old != new]


def test_v5_12_is_v5_11_with_its_first_three_question_phases_under_batch_seed_1():
    """tiny/v5.12 = v5.11 with `images`, `videos` and `mix` drawing their batches under seed 1; every set, wording,
    step count, learning rate, loss, the alignment, the tail, the stage-0 tower and the dev evals are v5.11's."""
    v511, v512 = load_curriculum(V4.with_name("v5.11.yaml")), load_curriculum(V4.with_name("v5.12.yaml"))
    assert _everything_but_phases(v512) == _everything_but_phases(v511)
    assert [p.name for p in v512.phases] == [p.name for p in v511.phases]
    reseeded = {"images", "videos", "mix"}
    for old, new in zip(v511.phases, v512.phases, strict=True):
        assert new.seed == (1 if new.name in reseeded else 0)
        assert replace(new, seed=old.seed) == old


def test_v5_13_is_v5_12_with_twice_the_visual_needles_in_long1200b():
    """tiny/v5.13 = v5.12 with `long1200b`'s 1,200-frame visual needles at 0.2 of its batches (from 0.1), taken from
    its short clips (0.3 -> 0.2); every other phase, set, wording and setting is v5.12's."""
    v512, v513 = load_curriculum(V4.with_name("v5.12.yaml")), load_curriculum(V4.with_name("v5.13.yaml"))
    assert _everything_but_phases(v513) == _everything_but_phases(v512)
    changed = _changed_phases(v512, v513)
    assert [new.name for _, new in changed] == ["long1200b"]
    old, new = changed[0]
    assert new.mixture == {**old.mixture, "long1200_needle": 0.2, "video_qa": 0.2}
    assert replace(new, mixture=old.mixture) == old


def test_v5_14_is_v5_13_with_a_needle_shape_prior_wherever_visual_needles_are_trained():
    """tiny/v5.14 = v5.13 with `long_visual_needle` added to the answer prior's types in exactly the phases whose
    sets hold visual needles; every other setting of those phases, and every other phase, is v5.13's."""
    v513, v514 = load_curriculum(V4.with_name("v5.13.yaml")), load_curriculum(V4.with_name("v5.14.yaml"))
    assert _everything_but_phases(v514) == _everything_but_phases(v513)
    with_needles = {
        "long60",
        "long60_n8",
        "long60_needle",
        "long300",
        "long300_needle",
        "long1200",
        "long1200_needle",
    }
    for old, new in _changed_phases(v513, v514):
        assert new.losses.answer_prior == (*old.losses.answer_prior, "long_visual_needle")
        assert replace(new, losses=old.losses) == old
    changed = [new.name for _, new in _changed_phases(v513, v514)]
    assert changed == ["needle8", "needle1", "long300", "long1200", "polish", "clips", "long1200b"]
    trains_needles = [p.name for p in v514.phases if set(p.mixture) & with_needles]
    assert trains_needles == ["long60", *changed]  # `long60`, before the needle phases, is kept as v5.13's


def test_v5_15_is_v5_14_with_varied_needles_after_needle8():
    """tiny/v5.15 = v5.14 plus the 60-frame set `long60v` (needles at varied cells and sizes) whose needle questions
    join `needle1` (from `long60_needle`) and `long300`, `long1200`, `long1200b` (from `image_qa`)."""
    v514, v515 = load_curriculum(V4.with_name("v5.14.yaml")), load_curriculum(V4.with_name("v5.15.yaml"))
    assert v515.datasets == {**v514.datasets, "long60v": ("train", "long_qa", 6000, 4, 60)}
    assert v515.dataset_options["long60v"] == {
        "phrasing": "varied",
        "balanced_needles": True,
        "varied_needles": True,
    }
    assert v515.subsets == {**v514.subsets, "long60v_needle": {"from": "long60v", "subset": "visual_needle"}}
    assert (v515.stage0, v515.tokenizers, v515.evals) == (v514.stage0, v514.tokenizers, v514.evals)
    moved = {
        "needle1": "long60_needle",
        "long300": "image_qa",
        "long1200": "image_qa",
        "long1200b": "image_qa",
    }
    share = {"needle1": 0.2, "long300": 0.05, "long1200": 0.05, "long1200b": 0.05}
    for old, new in zip(v514.phases, v515.phases, strict=True):
        if new.name not in moved:
            assert new == old
            continue
        taken = moved[new.name]
        expected = {**old.mixture, taken: round(old.mixture[taken] - share[new.name], 3)}
        assert {k: v for k, v in new.mixture.items() if k != "long60v_needle"} == expected
        assert new.mixture["long60v_needle"] == share[new.name]
        assert new.batch_sizes == {**old.batch_sizes, "long60v_needle": 8}
        assert replace(new, mixture=old.mixture, batch_sizes=old.batch_sizes) == old


def test_v5_16_is_v5_15_with_the_needle_shape_adversary_from_needle1_to_long1200b():
    """tiny/v5.16 = v5.15 with `shape_adversary: 1.0` in the phases after `needle8` that train visual needles;
    every other setting of every phase is v5.15's."""
    v515, v516 = load_curriculum(V4.with_name("v5.15.yaml")), load_curriculum(V4.with_name("v5.16.yaml"))
    assert _everything_but_phases(v516) == _everything_but_phases(v515)
    for old, new in _changed_phases(v515, v516):
        assert new.losses == replace(old.losses, shape_adversary=1.0)
        assert replace(new, losses=old.losses) == old
    assert [new.name for _, new in _changed_phases(v515, v516)] == [
        "needle1",
        "long300",
        "long1200",
        "polish",
        "clips",
        "long1200b",
    ]


def test_v5_17_restates_v5_16():
    """tiny/v5.17 is v5.16's settings (its change is the loss behind `shape_adversary`, in train/losses.py)."""
    assert load_curriculum(V4.with_name("v5.17.yaml")) == load_curriculum(V4.with_name("v5.16.yaml"))


def test_v5_18_is_v5_17_with_the_colour_change_prior_after_long1200():
    """tiny/v5.18 = v5.17 with `video_colour_change` in the answer prior of the five phases after `long1200`."""
    v517, v518 = load_curriculum(V4.with_name("v5.17.yaml")), load_curriculum(V4.with_name("v5.18.yaml"))
    assert _everything_but_phases(v518) == _everything_but_phases(v517)
    for old, new in _changed_phases(v517, v518):
        assert "video_colour_change" in new.losses.answer_prior
        assert set(new.losses.answer_prior) - set(old.losses.answer_prior) <= {
            "video_colour_change",
            "long_visual_needle",
        }
        assert replace(new.losses, answer_prior=old.losses.answer_prior) == old.losses
        assert replace(new, losses=old.losses) == old
    assert [new.name for _, new in _changed_phases(v517, v518)] == [
        "polish",
        "clips",
        "long1200b",
        "fresh",
        "fresh2",
    ]


def test_the_makefile_lists_one_train_call_per_phase_of_v5_18_and_smoke():
    """`make tiny-model` is the list of `llamavid train` calls: one per phase, in order, each from the previous
    phase's final/ folder, the last one exporting the model; the smoke curriculum has the same phase names."""
    import re

    makefile = (REPO / "Makefile").read_text()
    recipe = makefile.split("\ntiny-model:", 1)[1].split("\n\n", 1)[0]
    calls = re.findall(r"data\.tiny\.phase=(\w+)(?: model\.init=\$\(TINY_WORK\)/runs/(\w+)/final)?", recipe)
    names = [name for name, _ in calls]
    assert names == [p.name for p in load_curriculum(V4.with_name("v5.18.yaml")).phases]
    assert names == [p.name for p in load_curriculum(V4.with_name("smoke.yaml")).phases]
    assert [init for _, init in calls] == ["", *names[:-1]]
    assert recipe.strip().splitlines()[-1].endswith("data.tiny.export=$(TINY_OUT)")
    assert "TINY_CURRICULUM ?= tiny/v5.18\n" in makefile


def test_a_curriculum_extends_another_by_name(tmp_path: Path) -> None:
    """`extends`: the base's settings, this file's sets added, phases replaced in place by name or appended."""
    (tmp_path / "base.yaml").write_text(
        "tokenizers: {llm: subword, qformer: bert}\n"
        "presets: {aux: &aux {answer_head: 0.5}}\n"
        "datasets:\n"
        "  images: {split: train, kind: image_qa, n: 8}\n"
        "  clips: {split: train, kind: video_qa, n: 8}\n"
        "evals: [images]\n"
        "phases:\n"
        "  - {name: a, steps: 3, mixture: {images: 1.0}, losses: *aux}\n"
        "  - {name: b, steps: 4, mixture: {clips: 1.0}}\n"
    )
    child = tmp_path / "child.yaml"
    child.write_text(
        "extends: base.yaml\n"
        "presets: {count: &count {count: 1.0}}\n"
        "datasets:\n"
        "  images: {split: train, kind: image_qa, n: 16}\n"
        "subsets:\n"
        "  counting: {from: clips, subset: question_type, question_type: video_count}\n"
        "phases:\n"
        "  - {name: b, steps: 5, mixture: {clips: 0.5, counting: 0.5}, losses: *count}\n"
        "  - {name: c, steps: 6, mixture: {images: 1.0}}\n"
    )
    base, extended = load_curriculum(tmp_path / "base.yaml"), load_curriculum(child)
    assert [(p.name, p.steps) for p in extended.phases] == [("a", 3), ("b", 5), ("c", 6)]
    assert extended.phases[0] == base.phases[0] and extended.phases[1].losses == LossSettings(count=1.0)
    assert extended.datasets["images"][2] == 16 and extended.datasets["clips"] == base.datasets["clips"]
    assert set(extended.subsets) == {"counting"}
    assert (extended.tokenizers, extended.evals) == (base.tokenizers, base.evals)

    loop = tmp_path / "loop.yaml"
    loop.write_text("extends: loop.yaml\n")
    with pytest.raises(InvalidInputError, match="comes back to a file already read"):
        load_curriculum(loop)
    child.write_text("extends: nowhere.yaml\n")
    with pytest.raises(InvalidInputError, match="nowhere.yaml: no such curriculum file"):
        load_curriculum(child)
    child.write_text(
        "extends: base.yaml\ndatasets:\n  bad: {split: train, kind: image_qa, n: 8, seed: "
        f"{SEALED_TEST_SEEDS['v5.2']}}}\n"
    )
    with pytest.raises(
        InvalidInputError, match="sealed v5.2 test seed"
    ):  # an extension is checked as a whole
        load_curriculum(child)


def test_a_question_type_subset_can_keep_only_some_answers() -> None:
    """`answers` oversamples chosen values of one question type (e.g. the secret digits the model confuses); the
    subset views the set's cached features at the kept items' rows."""
    import torch

    from llamavid.synth import generate_items
    from llamavid.train.tiny_phase import question_type_subset

    items = generate_items("train", 120, seed=0, kind="long_qa", episode_frames=60, balanced_needles=True)
    cache = {
        "features": torch.zeros(1),
        "offsets": torch.arange(len(items)) * 60,
        "counts": torch.full((len(items),), 60),
    }
    kept, view = question_type_subset(items, cache, "long_subtitle_needle", ["6", 7])
    assert kept and {item.answer for item in kept} == {"6", "7"}
    assert all(item.question_type == "long_subtitle_needle" for item in kept)
    rows = [items.index(item) for item in kept]
    assert view["offsets"].tolist() == [row * 60 for row in rows] and view["features"] is cache["features"]
    everything, _ = question_type_subset(items, cache, "long_subtitle_needle")
    assert len(everything) > len(kept)
    with pytest.raises(InvalidInputError, match=r"with an answer in \['purple'\]"):
        question_type_subset(items, cache, "long_subtitle_needle", ["purple"])


def test_a_question_type_subset_can_keep_several_types_in_the_set_order(tmp_path) -> None:
    """A list of types holds the others back (e.g. `images` without colour questions) in one set, so every batch
    drawn from it mixes the kept types; a recipe names the list in YAML."""
    import torch

    from llamavid.synth import generate_items
    from llamavid.train.tiny_phase import question_type_subset

    items = generate_items("train", 70, seed=0, kind="image_qa")
    cache = {
        "features": torch.zeros(1),
        "offsets": torch.arange(len(items)),
        "counts": torch.ones(len(items)),
    }
    kept_types = ["image_shape", "image_size", "image_count"]
    kept, view = question_type_subset(items, cache, kept_types)
    assert {item.question_type for item in kept} == set(kept_types) and len(kept) == 30
    rows = [items.index(item) for item in kept]
    assert rows == sorted(rows) and view["offsets"].tolist() == rows
    with pytest.raises(InvalidInputError, match=r"no item of question type\(s\) \['long_visual_needle'\]"):
        question_type_subset(items, cache, ["long_visual_needle"])
    path = tmp_path / "held_back.yaml"
    path.write_text(
        "datasets:\n  a: {split: train, kind: image_qa, n: 4}\n"
        "subsets:\n  a_no_colour: {from: a, subset: question_type, question_type: [image_shape, image_size]}\n"
        "phases:\n  - {name: p, steps: 1, mixture: {a_no_colour: 1.0}}\n"
    )
    assert load_curriculum(path).subsets["a_no_colour"]["question_type"] == ["image_shape", "image_size"]
