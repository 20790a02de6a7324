"""`tools/train_tiny_model.py` resume checks and `tools/probe_shape_combos.py` (training itself: tests/train)."""

from __future__ import annotations

import importlib.util
import json
from dataclasses import asdict, replace
from pathlib import Path

import pytest

TOOL = Path(__file__).resolve().parents[2] / "tools" / "train_tiny_model.py"


@pytest.fixture(scope="module")
def tool():
    spec = importlib.util.spec_from_file_location("train_tiny_model", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_resume_accepts_a_phase_trained_with_the_same_settings(tool, tmp_path: Path) -> None:
    phase = tool.PHASES[0]
    (tmp_path / tool.PHASE_SETTINGS).write_text(json.dumps(asdict(phase)))
    tool.check_phase_settings(phase, tmp_path)
    tool.check_phase_settings(phase, tmp_path / "older-folder-without-settings")  # accepted with a warning


def test_resume_treats_fields_added_later_as_defaults(tool, tmp_path: Path) -> None:
    """A phase.json written before a TrainPhase field existed still matches a phase that keeps its default."""
    phase = replace(tool.PHASES[0], answer_prior=())
    saved = asdict(phase)
    del saved["answer_prior"]
    (tmp_path / tool.PHASE_SETTINGS).write_text(json.dumps(saved))
    tool.check_phase_settings(phase, tmp_path)
    with pytest.raises(SystemExit, match=r"differing: \['answer_prior'\]"):
        tool.check_phase_settings(replace(phase, answer_prior=("image_shape",)), tmp_path)


def test_resume_refuses_a_phase_trained_with_other_settings(tool, tmp_path: Path) -> None:
    phase = tool.PHASES[0]
    (tmp_path / tool.PHASE_SETTINGS).write_text(json.dumps(asdict(replace(phase, steps=phase.steps + 1))))
    with pytest.raises(SystemExit, match=r"other settings for phase 'align' \(differing: \['steps'\]\)"):
        tool.check_phase_settings(phase, tmp_path)


def test_phase_mixtures_name_only_known_datasets(tool) -> None:
    """Every mixture entry is a DATASETS entry or one of the subsets the tool derives from them."""
    derived = {
        f"{name}_{suffix}" for name in ("long60", "long300", "long1200") for suffix in ("needle", "subtitle")
    }
    known = set(tool.DATASETS) | derived | {"long60_n8"}
    for phase in tool.PHASES:
        assert set(phase.mixture) <= known, phase.name
        assert set(phase.batch_sizes) <= set(phase.mixture), phase.name


@pytest.mark.skipif(
    not (TOOL.parents[1] / "src" / "llamavid" / "assets" / "tiny-llamavid" / "config.json").is_file(),
    reason="tiny model asset not built",
)
def test_shape_combination_probe_on_the_committed_tower() -> None:
    """tools/probe_shape_combos.py: seen pairs are read well; held-out pairs are reported separately."""
    import torch

    from llamavid import LlamaVidForConditionalGeneration, LlamaVidProcessor
    from llamavid.serve.defaults import EMBEDDED_MODEL_DIR

    spec = importlib.util.spec_from_file_location("probe_shape_combos", TOOL.parent / "probe_shape_combos.py")
    probe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(probe)
    model = LlamaVidForConditionalGeneration.from_pretrained(
        str(EMBEDDED_MODEL_DIR), dtype=torch.float32
    ).eval()
    processor = LlamaVidProcessor.from_pretrained(EMBEDDED_MODEL_DIR)
    results = probe.probe_combos(model, processor, train_frames=500, heldout_frames=500, steps=200)
    assert results["counts"]["heldout_pair_cells"] > 0
    assert results["colour"]["seen_pairs"] > 0.9
    assert results["shape"]["seen_pairs"] > 0.8
    assert 0.0 <= results["shape_without_colour"]["heldout_pairs"] <= 1.0
