"""`llamavid eval-synth`: table formatting, its options (phrasing, clip lengths, the sealed-seed guard) and one
small run on the committed model (the accuracy thresholds are checked in tests/train)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from llamavid.cli.eval_synth import PHRASINGS, format_tables, parse_clip_frames, parse_phrasings
from llamavid.cli.main import main
from llamavid.synth import generate_items
from llamavid.synth import phrasing as synth_phrasing
from llamavid.train.curriculum import SEALED_TEST_SEED, SEALED_TEST_SEEDS

ASSET = Path(__file__).resolve().parents[2] / "src" / "llamavid" / "assets" / "tiny-llamavid"


def _row(accuracy: float, count: int, combo: float | None, combo_count: int) -> dict:
    return {
        "accuracy": accuracy,
        "count": count,
        "blind": 0.2,
        "chance": 1 / 6,
        "heldout_combo_accuracy": combo,
        "heldout_combo_count": combo_count,
    }


def test_tables_show_held_out_combination_accuracy_per_type() -> None:
    results = {
        "model": "m",
        "sets": {
            "image_qa": {
                "mean": 0.75,
                "blind_mean": 0.2,
                "chance_mean": 1 / 6,
                "heldout_combo_accuracy": 0.3,
                "per_type": {
                    "image_shape": _row(0.6, 40, 0.3, 20),
                    "image_background": _row(0.9, 40, None, 0),
                },
            }
        },
    }
    lines = format_tables(results).splitlines()
    assert "| image_shape | 40 | 0.600 | 0.200 | 0.167 | 0.300 (20) |" in lines
    assert "| image_background | 40 | 0.900 | 0.200 | 0.167 | - |" in lines
    assert "held-out (shape, colour) combos: 0.300" in lines


def test_phrasing_choices_are_the_synth_world_s() -> None:
    assert PHRASINGS == synth_phrasing.PHRASINGS


def test_clip_frames_parse_as_a_count_or_an_inclusive_range() -> None:
    assert parse_clip_frames("12") == 12
    assert parse_clip_frames("5-60") == (5, 60)
    for bad in ("five", "60-5", "5-"):
        with pytest.raises(argparse.ArgumentTypeError, match="--clip-frames"):
            parse_clip_frames(bad)


@pytest.mark.parametrize("owner", sorted(SEALED_TEST_SEEDS))
def test_every_sealed_seed_is_refused_before_the_model_loads(
    owner: str, capsys: pytest.CaptureFixture[str]
) -> None:
    missing, seed = "/nonexistent/model", str(SEALED_TEST_SEEDS[owner])
    assert main(["eval-synth", missing, "--seed", seed]) == 2
    assert f"sealed {owner} test seed" in capsys.readouterr().err
    assert main(["eval-synth", missing, "--seed", seed, "--sealed"]) == 2  # gets to loading
    assert "sealed" not in capsys.readouterr().err
    assert SEALED_TEST_SEEDS["v5.18"] == SEALED_TEST_SEED


def test_held_out_templates_reword_the_same_items_and_the_report_says_so(
    capsys: pytest.CaptureFixture[str],
) -> None:
    args = ["eval-synth", str(ASSET), "--sets", "image_qa", "-n", "7", "--seed", "2", "--json"]
    assert main([*args, "--phrasing", "heldout_templates"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert (results["seed"], results["phrasing"], results["balanced_needles"]) == (
        2,
        "heldout_templates",
        False,
    )
    reworded = generate_items("heldout", 7, seed=2, kind="image_qa", phrasing="heldout_templates")
    canonical = generate_items("heldout", 7, seed=2, kind="image_qa")
    examples = results["sets"]["image_qa"]["examples"]
    assert [e["question"] for e in examples] == [i.question for i in reworded[: len(examples)]]
    assert [e["answer"] for e in examples] == [i.answer for i in canonical[: len(examples)]]
    assert all(e["question"] != i.question for e, i in zip(examples, canonical, strict=False))
    per_type = results["sets"]["image_qa"]["per_type"]
    for name, row in per_type.items():  # each type split by gold answer: the counts and hits add up
        gold = {i.answer.lower() for i in canonical if i.question_type == name}
        assert set(row["per_answer"]) == gold
        assert sum(a["count"] for a in row["per_answer"].values()) == row["count"]
        hits = sum(a["accuracy"] * a["count"] for a in row["per_answer"].values())
        assert hits == pytest.approx(row["accuracy"] * row["count"])
    header = format_tables(results).splitlines()[1]
    assert header == "seed: 2, phrasing: heldout_templates, clip frames: default, balanced needles: no"


def test_tables_show_clip_length_buckets() -> None:
    results = {
        "model": "m",
        "seed": 2,
        "phrasing": "varied",
        "clip_frames": [5, 60],
        "balanced_needles": False,
        "sets": {
            "video_qa": {
                "mean": 0.5,
                "blind_mean": 0.2,
                "chance_mean": 1 / 6,
                "heldout_combo_accuracy": None,
                "per_type": {"video_count": _row(0.5, 4, None, 0)},
                "per_length": {"5-7": {"accuracy": 0.25, "count": 4}},
            }
        },
    }
    lines = format_tables(results).splitlines()
    assert "seed: 2, phrasing: varied, clip frames: 5-60, balanced needles: no" in lines
    assert "| 5-7 | 4 | 0.250 |" in lines


def test_phrasings_parse_as_a_comma_list() -> None:
    assert parse_phrasings("varied, heldout_templates") == ["varied", "heldout_templates"]
    for bad in ("", "varied,posh", ","):
        with pytest.raises(argparse.ArgumentTypeError, match="--phrasing"):
            parse_phrasings(bad)


def test_several_phrasings_in_one_run_score_as_separate_runs() -> None:
    """Two wordings scored together (each item encoded once, one Q-Former pass for both wordings and for a long
    video's questions) give each wording the answers and tables of a run of its own."""
    from llamavid.cli.eval_synth import evaluate

    options = dict(items_per_set=12, seed=2, episode_frames=60, batch_size=5)
    both = evaluate(ASSET, ["video_qa", "long_qa"], phrasing=("varied", "heldout_templates"), **options)
    assert both["phrasing"] == "varied" and both["sets"] == both["by_phrasing"]["varied"]
    for wording in ("varied", "heldout_templates"):
        alone = evaluate(ASSET, ["video_qa", "long_qa"], phrasing=wording, **options)
        assert "by_phrasing" not in alone
        for set_name in ("video_qa", "long_qa"):
            together, single = both["by_phrasing"][wording][set_name], alone["sets"][set_name]
            assert together["examples"] == single["examples"]
            assert together["per_type"] == single["per_type"]
    lines = format_tables(both).splitlines()
    assert lines[1].startswith("seed: 2, phrasing: varied, heldout_templates, clip frames: default")
    assert lines.index("# phrasing: varied") < lines.index("# phrasing: heldout_templates")
    assert sum(line.startswith("## long_qa") for line in lines) == 2


def test_media_chunks_keep_a_long_videos_questions_together() -> None:
    """A long video's questions form one group and one chunk whatever the batch size (encoded once); other
    items are groups of their own, `batch_size` to a chunk."""
    from llamavid.cli.eval_synth import _media_chunks

    images = generate_items("heldout", 7, seed=2, kind="image_qa")
    assert _media_chunks(images, 3) == [[[0], [1], [2]], [[3], [4], [5]], [[6]]]
    long = generate_items("heldout", 12, seed=2, kind="long_qa", episode_frames=60)
    episodes = [item.meta["media_id"] for item in long]
    expected = [
        [[i for i, key in enumerate(episodes) if key == episode]] for episode in dict.fromkeys(episodes)
    ]
    assert len(expected) == 2 and _media_chunks(long, 5) == expected


@pytest.mark.parametrize("kind", ["image_place", "image_crowded"])
def test_shape_and_size_training_streams_are_eval_sets(kind: str, capsys: pytest.CaptureFixture[str]) -> None:
    """`image_place` asks by quadrant, `image_crowded` on scenes of 4-6 objects; both score shape and size."""
    args = ["eval-synth", str(ASSET), "--sets", kind, "-n", "8", "--seed", "2", "--json"]
    assert main(args) == 0
    table = json.loads(capsys.readouterr().out)["sets"][kind]
    assert set(table["per_type"]) == {"image_shape", "image_size"}
    assert sum(row["count"] for row in table["per_type"].values()) == 8
    questions = [e["question"] for e in table["examples"]]
    assert (
        questions == [i.question for i in generate_items("heldout", 8, seed=2, kind=kind)][: len(questions)]
    )
    if kind == "image_place":
        assert all("object in the" in q for q in questions)
