"""Tiny-model phases through the generic recipe (``llamavid train tiny/phase.yaml data.tiny...``; issue #20)."""

import importlib.util
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from llamavid.train.recipe import TrainingRecipe
from llamavid.train.schema import ConfigError, load_config
from llamavid.train.tiny_phase import MIN_LR_RATE

REPO = Path(__file__).resolve().parents[2]
PHASE_YAML = REPO / "src" / "llamavid" / "train" / "configs" / "tiny" / "phase.yaml"
SMALL_LLM = "model.random_init={llm_hidden: 64, llm_layers: 2, llm_heads: 2, llm_intermediate: 128}"


def _tool():
    spec = importlib.util.spec_from_file_location("train_tiny_model", REPO / "tools" / "train_tiny_model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_v4_phase_resolves_to_the_old_tools_settings():
    """Same phases, losses and hyper-parameters as tools/train_tiny_model.py's TrainPhase loop (AdamW betas
    (0.9, 0.98), no weight decay, clip 1.0, cosine to 5 %), and the schedule agrees after the warmup."""
    from dataclasses import asdict

    from llamavid.train.stage0_vision import Stage0Settings

    tool = _tool()
    for old in tool.PHASES:
        recipe = TrainingRecipe(load_config(PHASE_YAML, [f"data.tiny.phase={old.name}"]))
        assert Stage0Settings(**recipe.tiny_curriculum.stage0) == tool.STAGE0
        assert recipe.tiny_settings() == {
            "name": old.name,
            "steps": old.steps,
            "mixture": old.mixture,
            "batch_size": old.batch_size,
            "batch_sizes": old.batch_sizes,
            "lr": old.lr,
            "visual_lr": old.lr * old.visual_lr_scale,
            "warmup": old.warmup,
            "min_lr_rate": 0.05,
            "betas": [0.9, 0.98],
            "weight_decay": 0.0,
            "max_grad_norm": 1.0,
            "grad_accum_steps": 1,
            "losses": json.loads(json.dumps(asdict(old.losses))),
        }
        assert recipe.tiny_phase.seed == old.seed and recipe.tiny_phase.eval_every == old.eval_every
        # The schedule: transformers' warmup + cosine with a floor, against the old hand-written lambda.
        recipe.total_steps = old.steps
        optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        scheduler = recipe._tiny_scheduler(optimizer)
        for step in range(old.steps):
            factor = scheduler.lr_lambdas[0](step)
            if step >= old.warmup:
                progress = (step - old.warmup) / max(1, old.steps - old.warmup)
                assert factor == pytest.approx(MIN_LR_RATE + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))
            else:  # one step later than the old ramp ((step + 1) / warmup): transformers starts at 0
                assert factor == pytest.approx(step / old.warmup)


def test_bad_tiny_sections_are_refused():
    with pytest.raises(ConfigError, match=r"has no phase 'nope'"):
        TrainingRecipe(load_config(PHASE_YAML, ["data.tiny.phase=nope"]))
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['phases'\]"):
        TrainingRecipe(load_config(PHASE_YAML, ["data.tiny.phases=align"]))
    with pytest.raises(ConfigError, match=r"leave train.max_steps null"):
        TrainingRecipe(load_config(PHASE_YAML, ["train.max_steps=3"]))


def test_cached_features_are_keyed_by_the_towers_weights(tmp_path):
    from llamavid.data.feature_cache import FeatureCache, module_sha256
    from llamavid.model.modeling_llamavid import LlamaVidVisionTower
    from llamavid.synth import generate_items
    from llamavid.train.stage0_vision import Stage0Settings, tiny_vision_config
    from llamavid.train.tiny_phase import cached_features

    settings = Stage0Settings(hidden_size=32, num_layers=1, intermediate_size=64)
    torch.manual_seed(0)
    tower = LlamaVidVisionTower(tiny_vision_config(settings)).eval()
    items = generate_items("train", 6, seed=0, kind="video_qa", clip_frames=(5, 6))
    cache = FeatureCache(tmp_path)
    first = cached_features(cache, items, tower, 64, module_sha256(tower))
    assert len(list(tmp_path.iterdir())) == 1
    assert int(first["counts"].sum()) == len(first["features"])  # no two clips share a medium here
    again = cached_features(cache, items, tower, 64, module_sha256(tower))  # read back, not re-encoded
    assert torch.equal(again["features"], first["features"])
    with torch.no_grad():
        next(tower.parameters()).add_(0.5)  # "retrained": a new entry, never the old features
    changed = cached_features(cache, items, tower, 64, module_sha256(tower))
    assert len(list(tmp_path.iterdir())) == 2
    assert not torch.equal(changed["features"], first["features"])


def _train(tmp_path: Path, phase: str, *extra: str) -> subprocess.CompletedProcess:
    command = [
        str(Path(sys.executable).with_name("llamavid")),
        "train",
        str(PHASE_YAML),
        "data.tiny.curriculum=tiny/smoke",
        f"data.tiny.phase={phase}",
        f"data.tiny.work_dir={tmp_path / 'work'}",
        f"train.output_dir={tmp_path / phase}",
        "train.save_steps=3",
        "train.log_steps=1",
        *extra,
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def _metrics(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.timeout(900)
def test_two_smoke_phases_through_the_console_script_fall_use_the_aux_terms_and_resume(tmp_path):
    _train(tmp_path, "align", SMALL_LLM)
    align = _metrics(tmp_path / "align")
    assert len(align) == 4
    # Alignment: the LLM is not run, only the probes on the context tokens learn.
    assert all(set(row["loss_terms"]) == {"aux_context"} for row in align)
    assert (tmp_path / "align" / "final" / "auxiliary_heads.safetensors").is_file()

    init = f"model.init={tmp_path / 'align' / 'final'}"
    export = f"data.tiny.export={tmp_path / 'export'}"
    _train(tmp_path, "images", init, export)
    images = _metrics(tmp_path / "images")
    lm = [row["loss_terms"]["lm"] for row in images]
    assert len(lm) == 6 and sum(lm[-2:]) / 2 < lm[0]  # the answer loss falls
    assert any("aux_context" in row["loss_terms"] for row in images)
    assert all("aux_scene" in row["loss_terms"] for row in images)  # scene probes selected by the phase
    settings = json.loads((tmp_path / "images" / "final" / "tiny_phase.json").read_text())
    assert settings["losses"]["answer_prior"] == ["image_shape", "image_colour"]
    assert (tmp_path / "images" / "scores.jsonl").is_file()
    # Only one feature entry per set and tower: the second phase reused the first's caches.
    assert len(list((tmp_path / "work" / "features").iterdir())) == 4

    from safetensors.torch import load_file

    exported = load_file(tmp_path / "export" / "model.safetensors")
    assert {t.dtype for t in exported.values()} == {torch.float16}  # shipped in fp16, as save_tiny_model
    assert not (tmp_path / "export" / "auxiliary_heads.safetensors").exists()  # training-only

    # A run killed after its step-3 checkpoint: the same command continues with exactly the uninterrupted
    # losses (data.tiny.resume), and once finished the command is a no-op (make tiny-model reruns).
    run = tmp_path / "images"
    shutil.rmtree(run / "checkpoints" / "step_0000006")
    shutil.rmtree(run / "final")
    (run / "latest").write_text("step_0000003\n")
    assert "trained 3 steps (to step 6/6)" in _train(tmp_path, "images", init).stdout
    resumed = _metrics(run)
    assert [r["loss"] for r in resumed] == [r["loss"] for r in images]
    assert [r["loss_terms"] for r in resumed] == [r["loss_terms"] for r in images]
    assert "trained 0 steps (to step 6/6)" in _train(tmp_path, "images", init).stdout
    assert _metrics(run) == resumed
