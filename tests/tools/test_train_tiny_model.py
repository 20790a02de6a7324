"""`tools/train_tiny_model.py` resume checks (the training itself is exercised in tests/train/test_tiny_model.py)."""

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
