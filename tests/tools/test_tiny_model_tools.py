"""`tools/tiny_ablation.py` (the token ablation through the one recipe), `tools/probe_shape_combos.py`,
`tools/attention_on_named_object.py` and `tools/tiny_phase_speed.py`."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

TOOLS = Path(__file__).resolve().parents[2] / "tools"
TOOL = TOOLS / "tiny_ablation.py"


def _load(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_ablation_takes_the_curriculums_short_video_phases_scaled(tmp_path: Path) -> None:
    from llamavid.train.curriculum import load_curriculum
    from llamavid.train.schema import packaged_config_dir

    tool = _load(TOOL)
    v4 = load_curriculum(packaged_config_dir() / "tiny" / "v4.yaml")
    phases = tool.ablation_phases(v4, 0.4)
    assert [p.name for p in phases] == ["align", "images", "videos", "mix"]
    assert [p.steps for p in phases] == [600, 240, 240, 600]
    assert all(p.eval_every == 0 for p in phases)
    # The written curriculum reads back to the same phases (losses included) and declares the held-out sets.
    written = load_curriculum(tool.write_curriculum(v4, phases, tmp_path / "c.yaml", eval_items=40))
    assert written.phases == phases
    assert written.stage0 == v4.stage0
    assert written.datasets["ablation_eval_video_qa"] == ("heldout", "video_qa", 40, 0, 0)
    shared = [name for name in tool.SHORT_VIDEO_SETS if name in v4.datasets]  # v4 has no text_copy
    assert shared and "text_copy" not in written.datasets
    assert {name: written.datasets[name] for name in shared} == {name: v4.datasets[name] for name in shared}


@pytest.mark.timeout(900)
def test_ablation_trains_and_compares_variants_through_the_recipe(tmp_path: Path, capsys) -> None:
    """`make tiny-ablation` end to end on the shortened curriculum: two variants, scored, compared, resumable."""
    import torch

    tool = _load(TOOL)
    threads = torch.get_num_threads()  # the tiny phases set one thread (phase.yaml): restored for later tests
    argv = [
        "--curriculum=tiny/smoke",
        f"--work-dir={tmp_path / 'work'}",
        f"--out={tmp_path / 'out'}",
        "--steps-scale=1",
        "--min-steps=1",
        "--eval-items=14",
        "--variants=both,context_only",
    ]
    try:
        tool.main(argv)
    finally:
        torch.set_num_threads(threads)
    results = json.loads((tmp_path / "out" / "ablation.json").read_text())
    assert results["phases"] == ["align", "images", "videos", "mix"] and results["steps"] == [4, 6, 2, 2]
    both, context = results["variants"]["both"], results["variants"]["context_only"]
    assert (both["tokens_per_image"], both["tokens_per_frame"]) == (17, 2)
    assert (context["tokens_per_image"], context["tokens_per_frame"]) == (1, 1)
    assert 0.0 <= both["image_qa"]["mean"] <= 1.0 and set(both["video_qa"]["per_type"])
    compared = {(row["a"], row["b"], row["set"]) for row in results["comparisons"]}
    assert compared == {("both", "context_only", "image_qa"), ("both", "context_only", "video_qa")}
    for variant in (
        "both",
        "context_only",
    ):  # each phase went through the recipe, from the previous one's final
        for phase in results["phases"]:
            assert (tmp_path / "out" / variant / phase / "final" / "tiny_phase.json").is_file()
    assert "| both vs context_only | image_qa |" in capsys.readouterr().out
    # Rerun: the variants are read back, nothing retrains.
    stamp = (tmp_path / "out" / "both.json").stat().st_mtime_ns
    tool.main(argv)
    torch.set_num_threads(threads)
    assert (tmp_path / "out" / "both.json").stat().st_mtime_ns == stamp


@pytest.mark.skipif(
    not (TOOLS.parent / "src" / "llamavid" / "assets" / "tiny-llamavid" / "config.json").is_file(),
    reason="tiny model asset not built",
)
def test_shape_combination_probe_on_the_committed_tower() -> None:
    """tools/probe_shape_combos.py: seen pairs are read well; held-out pairs are reported separately."""
    import torch

    from llamavid import LlamaVidForConditionalGeneration, LlamaVidProcessor
    from llamavid.serve.defaults import EMBEDDED_MODEL_DIR

    spec = importlib.util.spec_from_file_location("probe_shape_combos", TOOLS / "probe_shape_combos.py")
    probe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(probe)
    model = LlamaVidForConditionalGeneration.from_pretrained(
        str(EMBEDDED_MODEL_DIR), dtype=torch.float32
    ).eval()
    processor = LlamaVidProcessor.from_pretrained(EMBEDDED_MODEL_DIR)
    results = probe.probe_combos(
        probe.model_patches(model, processor), 64, train_frames=500, heldout_frames=500, steps=200
    )
    assert results["counts"]["heldout_pair_cells"] > 0
    assert results["colour"]["seen_pairs"] > 0.9
    assert results["shape"]["seen_pairs"] > 0.8
    assert 0.0 <= results["shape_without_colour"]["heldout_pairs"] <= 1.0
    # The committed tower's mean token (a video frame's content token) keeps the layout (0.96 with 3,000 / 2,000
    # frames and 600 steps).
    mean_token = probe.mean_token_probes(
        probe.model_patches(model, processor), 64, train_frames=500, heldout_frames=500, steps=200
    )
    assert mean_token["occupancy_exact"] > 0.5
    assert 0.0 <= mean_token["shapes_present_exact"] <= 1.0


def test_phase_speed_tool_shortens_every_phase_and_nothing_else(tmp_path: Path) -> None:
    import yaml

    from llamavid.train.curriculum import curriculum_mapping, load_curriculum
    from llamavid.train.schema import packaged_config_dir

    source = packaged_config_dir() / "tiny" / "v5.2.yaml"  # extends v5.1.yaml: the copy must stand alone
    raw = curriculum_mapping(source)
    assert "extends" not in raw and len(raw["phases"]) == 13
    short_path = tmp_path / "short.yaml"
    short_path.write_text(yaml.safe_dump(_load(TOOLS / "tiny_phase_speed.py").shortened(raw, 30)))
    full, short = load_curriculum(source), load_curriculum(short_path)
    assert [p.steps for p in short.phases] == [30] * len(full.phases)
    assert all(p.eval_every == 0 for p in short.phases)
    for before, after in zip(full.phases, short.phases, strict=True):
        assert (after.name, after.mixture, after.lr, after.losses) == (
            before.name,
            before.mixture,
            before.lr,
            before.losses,
        )
    assert short.datasets == full.datasets and short.stage0 == full.stage0
    assert [p["steps"] for p in raw["phases"]][0] == full.phases[0].steps  # the source dict is left as it was


def test_needle_answers_lists_every_needle_question_and_counts_the_misses() -> None:
    from llamavid.errors import InvalidInputError
    from llamavid.serve.defaults import EMBEDDED_MODEL_DIR
    from llamavid.train.curriculum import SEALED_TEST_SEED

    tool = _load(TOOLS / "needle_answers.py")
    rows = tool.needle_answers(Path(EMBEDDED_MODEL_DIR), episodes=2, frames=60, seed=2, phrasing="varied")
    assert sorted(row["type"] for row in rows) == sorted(tool.NEEDLES * 2)
    assert all(row["gold"] and isinstance(row["correct"], bool) for row in rows)
    table = tool.confusions(rows)
    assert sum(sum(counts.values()) for counts in table.values()) == sum(not row["correct"] for row in rows)
    summary = tool.needle_answers(
        Path(EMBEDDED_MODEL_DIR), episodes=2, frames=60, seed=2, phrasing="varied", types=("long_summary",)
    )
    assert [row["type"] for row in summary] == ["long_summary"] * 2 and set(tool.confusions(summary)) <= {
        "long_summary"
    }
    with pytest.raises(InvalidInputError, match="--types: expected some of"):
        tool.needle_answers(Path(EMBEDDED_MODEL_DIR), 1, 60, 2, "varied", types=("image_shape",))
    fake = [{"type": "long_subtitle_needle", "gold": "7", "answer": "8", "correct": False}] * 2
    assert tool.confusions(fake)["long_subtitle_needle"] == {"7 -> 8": 2}
    with pytest.raises(InvalidInputError, match="sealed"):
        tool.needle_answers(
            Path(EMBEDDED_MODEL_DIR), episodes=1, frames=60, seed=SEALED_TEST_SEED, phrasing="varied"
        )


def test_attention_on_named_object_reads_the_committed_model_and_a_run_with_its_probe(tmp_path: Path) -> None:
    """tools/attention_on_named_object.py: the committed model's attention rests mostly on the object a question
    names (seen pairs); with a run's answer probe present, the probe and oracle columns are filled too."""
    import shutil

    from safetensors.torch import save_file

    from llamavid.serve.defaults import EMBEDDED_MODEL_DIR
    from llamavid.train.losses import AuxiliaryHeads

    tool = _load(TOOLS / "attention_on_named_object.py")
    table = tool.measure(Path(EMBEDDED_MODEL_DIR), items_per_set=84, seed=2)
    assert set(table) == {"image_colour", "image_shape", "image_size", "image_position"}
    for splits in table.values():
        assert splits["seen"]["mass"] > 0.5 and "probe" not in splits["seen"]
    run = tmp_path / "run"
    shutil.copytree(EMBEDDED_MODEL_DIR, run)
    width = json.loads((run / "config.json").read_text())["text_config"]["hidden_size"]
    save_file(AuxiliaryHeads(width).state_dict(), str(run / "auxiliary_heads.safetensors"))
    with_probe = tool.measure(run, items_per_set=14, seed=2)
    row = with_probe["image_shape"]["seen"]
    assert {"count", "mass", "probe", "oracle"} <= set(row) and 0.0 <= row["oracle"] <= 1.0
