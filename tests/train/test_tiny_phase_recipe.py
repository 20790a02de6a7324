"""Tiny-model phases through the generic recipe (``llamavid train tiny/phase.yaml data.tiny...``; issue #20)."""

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


V4_RECORD = json.loads((Path(__file__).parent / "data" / "tiny_v4_curriculum.json").read_text())


def test_every_v4_phase_resolves_to_the_settings_that_trained_v4():
    """Same phases, losses and hyper-parameters as the loop that trained the committed v4 (recorded in
    tests/train/data before it was removed: AdamW betas (0.9, 0.98), no weight decay, clip 1.0, cosine to 5 %),
    and transformers' schedule agrees with that loop's hand-written one after the warmup."""
    from dataclasses import asdict

    from llamavid.train.stage0_vision import Stage0Settings

    optimizer_record = V4_RECORD["optimizer"]
    for old in V4_RECORD["phases"]:
        recipe = TrainingRecipe(
            load_config(PHASE_YAML, ["data.tiny.curriculum=tiny/v4", f"data.tiny.phase={old['name']}"])
        )
        stage0 = json.loads(json.dumps(asdict(Stage0Settings(**recipe.tiny_curriculum.stage0))))
        assert stage0.pop("grey_share") == 0.0  # added after v4, off
        for later in ("colour_channels", "adversary", "grey_pairs"):  # added for v5.6, off in v4
            assert stage0.pop(later) == 0
        assert stage0.pop("occupancy_weight") == 1.0  # added after v5.7, 1 in v4
        assert stage0.pop("shapes_present_weight") == 1.0  # added after v5.7, 1 in v4
        assert stage0 == V4_RECORD["stage0"]
        assert recipe.tiny_settings() == {
            **{key: old[key] for key in ("name", "steps", "mixture", "batch_size", "batch_sizes", "lr")},
            "visual_lr": old["visual_lr"],
            "warmup": old["warmup"],
            "min_lr_rate": optimizer_record["min_lr_rate"],
            "betas": optimizer_record["betas"],
            "weight_decay": optimizer_record["weight_decay"],
            "max_grad_norm": optimizer_record["max_grad_norm"],
            "grad_accum_steps": 1,
            # `count` came after v4 (v5.2) and `attend` after v5.5, both off in its phases
            "losses": {**old["losses"], "count": 0.0, "attend": 0.0, "shape_adversary": 0.0},
            "tokenizers": {"llm": "word", "qformer": "synth"},
        }
        assert recipe.tiny_phase.seed == old["seed"] and recipe.tiny_phase.eval_every == old["eval_every"]
        # The schedule: transformers' warmup + cosine with a floor, against the old hand-written lambda.
        steps, warmup = old["steps"], old["warmup"]
        recipe.total_steps = steps
        optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        scheduler = recipe._tiny_scheduler(optimizer)
        for step in range(steps):
            factor = scheduler.lr_lambdas[0](step)
            if step >= warmup:
                progress = (step - warmup) / max(1, steps - warmup)
                assert factor == pytest.approx(MIN_LR_RATE + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))
            else:  # one step later than the old ramp ((step + 1) / warmup): transformers starts at 0
                assert factor == pytest.approx(step / warmup)


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


def _train(tmp_path: Path, phase: str, *extra: str, check: bool = True) -> subprocess.CompletedProcess:
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
    assert done.returncode == 0 or not check, done.stderr[-3000:]
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
    # Only one feature entry per set and tower (image_qa, video_qa, the eval set, text_qa, text_copy): the second
    # phase reused the first's caches.
    assert len(list((tmp_path / "work" / "features").iterdir())) == 5

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

    # A phase finished before a loss was added (no `count` in its settings) still counts as finished; a phase
    # finished with other settings is refused, naming what differs.
    saved = run / "final" / "tiny_phase.json"
    settings = json.loads(saved.read_text())
    assert settings["losses"].pop("count") == 0.0
    saved.write_text(json.dumps(settings))
    assert "trained 0 steps (to step 6/6)" in _train(tmp_path, "images", init).stdout
    settings["losses"]["scene"] = 9.0
    saved.write_text(json.dumps(settings))
    refused = _train(tmp_path, "images", init, check=False)
    assert refused.returncode != 0 and "trained with other settings" in refused.stderr
    assert "differing: ['losses']" in refused.stderr and "Traceback" not in refused.stderr

    # Auxiliary heads saved by another version (another number of answer rows) are refused by name, not loaded.
    from safetensors.torch import save_file

    other = tmp_path / "other-version"
    shutil.copytree(tmp_path / "align" / "final", other)
    heads = load_file(other / "auxiliary_heads.safetensors")
    heads["answer.weight"] = torch.cat([heads["answer.weight"], heads["answer.weight"][:10]])
    save_file(heads, str(other / "auxiliary_heads.safetensors"))
    refused = _train(
        tmp_path, "images", f"model.init={other}", f"train.output_dir={tmp_path / 'i2'}", check=False
    )
    assert refused.returncode != 0 and "Traceback" not in refused.stderr
    assert "auxiliary heads of other sizes" in refused.stderr and "'answer.weight'" in refused.stderr


@pytest.mark.timeout(600)
def test_a_curriculum_chooses_the_subword_llm_tokenizer_and_the_bert_vocab(tmp_path):
    """tokenizers: {llm: subword, qformer: bert} (v5): no unknown token for any question, BERT-uncased questions."""
    curriculum = tmp_path / "v5_smoke.yaml"
    curriculum.write_text(
        "tokenizers: {llm: subword, qformer: bert}\n"
        "stage0: {patch_targets: true, steps: 4, batch_size: 8, eval_frames: 16, hidden_size: 32, num_layers: 1,\n"
        "         intermediate_size: 64}\n"
        "datasets:\n"
        "  images: {split: train, kind: image_qa, n: 32, seed: 0, phrasing: varied}\n"
        "phases:\n"
        "  - {name: images, steps: 3, batch_size: 8, warmup: 0, lr: 3.0e-3, mixture: {images: 1.0}}\n"
    )
    _train(tmp_path, "images", f"data.tiny.curriculum={curriculum}", SMALL_LLM, "data.tiny.eval=false")
    from llamavid.model import LlamaVidProcessor

    processor = LlamaVidProcessor.from_pretrained(tmp_path / "images" / "final")
    assert processor.tokenizer.unk_token_id is None  # byte-level: every string has an encoding
    question = "What color is the gray 🙂 objcet? 这是什么"
    ids = processor.tokenizer(question, add_special_tokens=False)["input_ids"]
    assert processor.tokenizer.decode(ids) == question
    assert len(processor.qformer_tokenizer) == 30523  # the released BERT-uncased vocab + [DEC]
    settings = json.loads((tmp_path / "images" / "final" / "tiny_phase.json").read_text())
    assert settings["tokenizers"] == {"llm": "subword", "qformer": "bert"}
    assert all(row["loss"] > 0 for row in _metrics(tmp_path / "images"))
