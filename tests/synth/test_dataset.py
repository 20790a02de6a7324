import json
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from llamavid.synth import dataset
from llamavid.synth.dataset import (
    KINDS,
    QUESTION_TYPES,
    answer_statistics,
    generate_items,
    item_to_record,
    pretraining_batch,
    regenerate_episode,
    write_dataset,
    write_video,
)
from llamavid.synth.render import render_frame
from llamavid.synth.world import HELDOUT_PAIRS

SMALL = {"n": 14, "episode_frames": 80, "clip_frames": (5, 8)}


def _check_schema(records: list[dict], root: Path) -> None:
    ids = [r["id"] for r in records]
    assert len(set(ids)) == len(ids)
    for record in records:
        turns = record["conversations"]
        assert [t["from"] for t in turns] == ["human", "gpt"] * (len(turns) // 2) and turns
        assert all(isinstance(t["value"], str) and t["value"] for t in turns)
        has_media = "image" in record or "video" in record
        assert ("<image>" in turns[0]["value"]) == has_media
        assert sum("<image>" in t["value"] for t in turns) == int(has_media)
        for key in ("image", "video", "subtitles"):
            if key in record:
                assert (root / record[key]).is_file()
        options = record["answer_options"]
        assert record["answer"] == turns[-1]["value"]
        if options is not None:
            assert record["answer"] in options and len(options) >= 4
            assert QUESTION_TYPES[record["question_type"]] == options


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_writes_valid_llava_records(kind, tmp_path):
    path = write_dataset(tmp_path, "heldout", seed=3, kind=kind, **SMALL)
    records = json.loads(path.read_text())
    assert len(records) == SMALL["n"]
    _check_schema(records, tmp_path)


def test_media_round_trip_exactly(tmp_path):
    items = generate_items("train", 2, 0, "stage1", clip_frames=6)
    records = json.loads(write_dataset(tmp_path, "train", 2, 0, "stage1", clip_frames=6).read_text())
    image = np.asarray(Image.open(tmp_path / records[0]["image"]))
    assert (image == render_frame(items[0].media)).all()
    video = np.load(tmp_path / records[1]["video"])
    assert (video["frames"] == items[1].media.render()).all()
    assert video["timestamps"].tolist() == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]


def test_mkv_is_lossless_and_mp4_decodes(tmp_path):
    av = pytest.importorskip("av")
    frames = generate_items("train", 1, 0, "video_qa", clip_frames=5)[0].media.render()
    for video_format in ("mkv", "mp4"):
        path = write_video(frames, tmp_path / "clip", video_format)
        with av.open(str(path)) as container:
            decoded = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
        assert decoded.shape == frames.shape
        if video_format == "mkv":
            assert (decoded == frames).all()
        else:
            assert np.abs(decoded.astype(int) - frames).mean() < 8


def test_long_records_share_one_video_with_srt_and_regenerate(tmp_path):
    records = json.loads(write_dataset(tmp_path, "train", 7, 0, "stage3", episode_frames=90).read_text())
    assert len({r["video"] for r in records}) == 1
    srt = (tmp_path / records[0]["subtitles"]).read_text()
    assert srt.startswith("1\n00:00:00,000 --> ") and "secret number" in srt
    episode = regenerate_episode(records[0]["synth"])
    stored = np.load(tmp_path / records[0]["video"])["frames"]
    assert (stored == episode.render()).all()
    assert records[-1]["question_type"] == "long_summary_caption" and records[-1]["answer_options"] is None


def test_same_seed_same_bytes_distinct_seed_differs(tmp_path):
    first = write_dataset(tmp_path / "a", "train", seed=1, kind="stage2", **SMALL)
    second = write_dataset(tmp_path / "b", "train", seed=1, kind="stage2", **SMALL)
    third = write_dataset(tmp_path / "c", "train", seed=2, kind="stage2", **SMALL)
    assert first.read_bytes() == second.read_bytes()
    media = sorted(
        p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.*") if p.suffix != ".json"
    )
    assert media and all(
        (tmp_path / "a" / m).read_bytes() == (tmp_path / "b" / m).read_bytes() for m in media
    )
    records_a, records_c = json.loads(first.read_text()), json.loads(third.read_text())
    assert [r["conversations"] for r in records_a] != [r["conversations"] for r in records_c]


def test_heldout_split_is_disjoint_and_has_novel_combinations():
    train = generate_items("train", 300, 0, "image_qa")
    heldout = generate_items("heldout", 300, 0, "image_qa")
    for item in train:
        assert not any((o.shape, o.colour) in HELDOUT_PAIRS for o in item.media.objects)
        assert not item.meta["heldout_combo"]
    novel = [i for i in heldout if i.meta["heldout_combo"]]
    assert 0.2 <= len(novel) / len(heldout) <= 0.8
    assert all(any((o.shape, o.colour) in HELDOUT_PAIRS for o in i.media.objects) for i in novel)
    train_images = {render_frame(i.media).tobytes() for i in train}
    assert not train_images & {render_frame(i.media).tobytes() for i in heldout}
    for kind in ("video_qa", "long_qa"):
        items = generate_items("train", 70, 0, kind, clip_frames=(5, 8), episode_frames=80)
        assert not any(i.meta["heldout_combo"] for i in items)


def test_default_heldout_size_is_one_thousand(tmp_path):
    records = json.loads(write_dataset(tmp_path, "heldout", kind="image_qa", write_media=False).read_text())
    assert len(records) == 1000 and dataset.DEFAULT_ITEMS["heldout"] >= 1000
    assert not (tmp_path / "media").exists()


@pytest.mark.parametrize(
    ("kind", "n_train", "n_eval"),
    [
        ("image_qa", 1400, 700),
        ("video_qa", 1400, 700),
        ("text_qa", 600, 300),
        ("text_copy", 600, 300),
        ("long_qa", 600, 300),
    ],
)
def test_blind_baselines_stay_near_chance(kind, n_train, n_eval):
    train = [
        item_to_record(i, "m")
        for i in generate_items("train", n_train, 0, kind, clip_frames=5, episode_frames=60)
    ]
    held = [
        item_to_record(i, "m")
        for i in generate_items("heldout", n_eval, 0, kind, clip_frames=5, episode_frames=60)
    ]
    statistics = answer_statistics(train, held)
    for question_type, row in statistics.items():
        assert row["majority"] <= 0.5, question_type
        if not kind.startswith("text_"):  # text-only questions are answerable from the text by design
            assert row["question_majority"] <= 0.5, question_type
        assert row["majority"] <= 2.5 * row["chance"], question_type


def test_text_copy_asks_for_a_digit_said_in_a_dialogue():
    """`text_copy` (opt-in; `text_qa` is unchanged): the asked speaker says the answer once, other speakers may
    say other digits, and every digit is asked about equally often."""
    items = generate_items("train", 400, seed=0, kind="text_copy")
    assert Counter(item.answer for item in items).keys() == set("0123456789")
    assert {item.question_type for item in items} == {"text_secret"}
    decoys = 0
    for item in items:
        name = re.fullmatch(r".* What is (\w+)'s secret number\?", item.question).group(1)
        said = re.findall(r"(\w+): My secret number is (\d)\.", item.question)
        assert [digit for speaker, digit in said if speaker == name] == [item.answer]
        others = [digit for speaker, digit in said if speaker != name]
        assert item.answer not in others and len(set(others)) == len(others)
        decoys += bool(others)
        assert item.media is None and item.answer_options == list("0123456789")
    assert 0.3 < decoys / len(items) < 0.9  # some dialogues have decoys, some do not
    assert {i.question_type for i in generate_items("train", 30, seed=0, kind="text_qa")} == {
        "text_next",
        "text_bigger",
        "text_recall",
    }


def test_pretraining_batch_is_reproducible_and_labelled():
    images, labels = pretraining_batch("train", 0, 10, 8, size=56)
    again, _ = pretraining_batch("train", 0, 14, 4, size=56)
    assert images.shape == (8, 56, 56, 3) and labels["shape"].shape == (8, 4, 4)
    assert (images[4:] == again).all()
    assert set(labels) == {"shape", "colour", "size", "background", "word"}


def test_validation_errors():
    with pytest.raises(ValueError, match="kind"):
        generate_items("train", 1, 0, "stage4")
    with pytest.raises(ValueError, match="split"):
        generate_items("validation", 1, 0, "image_qa")
    with pytest.raises(ValueError, match="video_format"):
        write_video(np.zeros((1, 8, 8, 3), np.uint8), Path("x"), "gif")


def test_package_does_not_import_torch():
    code = "import sys, llamavid.synth; assert 'torch' not in sys.modules and 'llamavid.model' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
