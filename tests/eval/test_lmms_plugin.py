"""The lmms-eval plugin against a STAND-IN ``lmms_eval`` (our venv cannot hold lmms-eval 0.7.3: it pins av<16).

The stand-in reproduces only what the plugin touches (``lmms_eval.api.model.lmms`` with ``task_dict`` and
``cache_hook``, ``lmms_eval.models.registry_v2.ModelManifest``), read from lmms-eval 0.7.3's source. The real
package is exercised by ``tools/lmms_eval_venv.sh`` + ``tools/lmms_eval_smoke.py`` in ``.venv-lmms``.
"""

from __future__ import annotations

import importlib
import sys
import types
from dataclasses import dataclass

import pytest
from PIL import Image

from .builders import write_frame_folder


@pytest.fixture
def fake_lmms_eval(monkeypatch):
    """Install a minimal STAND-IN for lmms_eval (clearly not the real package) into sys.modules."""
    if importlib.util.find_spec("lmms_eval") is not None:
        pytest.skip("the real lmms_eval is installed; tools/lmms_eval_smoke.py covers it")

    class CacheHook:
        def __init__(self):
            self.partials = []

        def add_partial(self, attr, req, res):
            self.partials.append((attr, req, res))

    class Lmms:  # STAND-IN for lmms_eval.api.model.lmms
        def __init__(self):
            self._rank, self._world_size, self.cache_hook, self.task_dict = 0, 1, CacheHook(), {}

    @dataclass(frozen=True)
    class ModelManifest:  # STAND-IN for lmms_eval.models.registry_v2.ModelManifest
        model_id: str
        simple_class_path: str | None = None
        chat_class_path: str | None = None
        aliases: tuple = ()

    modules = {
        name: types.ModuleType(name)
        for name in (
            "lmms_eval",
            "lmms_eval.api",
            "lmms_eval.api.model",
            "lmms_eval.models",
            "lmms_eval.models.registry_v2",
        )
    }
    modules["lmms_eval.api.model"].lmms = Lmms
    modules["lmms_eval.models.registry_v2"].ModelManifest = ModelManifest
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.delitem(sys.modules, "llamavid.eval.lmms_plugin", raising=False)
    return importlib.import_module("llamavid.eval.lmms_plugin")


@dataclass
class Instance:  # the only Instance attribute the plugin reads
    args: tuple


@pytest.fixture
def saved_model(tmp_path, tiny_model, tiny_processor):
    tiny_model.save_pretrained(tmp_path / "model")
    tiny_processor.save_pretrained(tmp_path / "model")
    return tmp_path / "model"


def test_manifest_points_at_the_chat_class(fake_lmms_eval):
    manifest = fake_lmms_eval.manifest()
    assert manifest.model_id == "llamavid"
    assert manifest.chat_class_path == "llamavid.eval.lmms_plugin.LlamaVidLmms"


def test_chat_batch_and_multi_turn(fake_lmms_eval, saved_model, tmp_path):
    model = fake_lmms_eval.LlamaVidLmms(pretrained=str(saved_model), batch_size="2", max_new_tokens="2")
    video = write_frame_folder(tmp_path / "clip", frames=2)
    docs = [
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "image", "url": Image.new("RGB", (30, 30), "red")},
                        {"type": "text", "text": "What color?"},
                    ],
                }
            ]
        },
        {
            "messages": [
                {"role": "system", "content": [{"type": "text", "text": "ignored"}]},
                {
                    "role": "user",
                    "content": [
                        {"type": "video", "url": str(video)},
                        {"type": "text", "text": "What happens?"},
                    ],
                },
                {"role": "assistant", "content": [{"type": "text", "text": "A clip."}]},
                {"role": "user", "content": [{"type": "text", "text": "And then?"}]},
            ]
        },
        {"messages": [{"role": "user", "content": [{"type": "text", "text": "Text only."}]}]},
    ]
    model.task_dict = {"t": {"test": docs}}
    gen = {"max_new_tokens": 2, "temperature": 0, "until": ["</s>"]}
    requests = [
        Instance((f"ctx{i}", lambda doc: doc["messages"], dict(gen), i, "t", "test")) for i in range(3)
    ]
    converted = model.request_from_messages(docs[1]["messages"])
    assert [t["role"] for t in converted.messages] == ["user", "assistant", "user"]
    assert converted.messages[0]["content"] == "<image>\nWhat happens?" and converted.question == "And then?"
    answers = model.generate_until(requests)
    assert len(answers) == 3 and all(isinstance(a, str) for a in answers)
    assert len(model.cache_hook.partials) == 3


def test_multi_round_driven_by_doc_to_text(fake_lmms_eval, saved_model):
    model = fake_lmms_eval.LlamaVidLmms(pretrained=str(saved_model), max_new_tokens=2)
    model.task_dict = {"t": {"test": [{"image": Image.new("RGB", (30, 30), "blue")}]}}
    seen = []

    def doc_to_text(doc, previous_output, round_idx, previous_round_info):
        seen.append((round_idx, list(previous_output)))
        return None, "Next?", round_idx >= 2, list(previous_output), {"round": round_idx}

    request = Instance(
        ("First?", {"max_new_tokens": 2}, lambda doc: [doc["image"]], doc_to_text, 0, "t", "test")
    )
    (result,) = model.generate_until_multi_round([request])
    assert [r for r, _ in seen] == [1, 2] and len(result) == 2
