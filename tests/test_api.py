"""The Python API (`llamavid.load`) and the runnable example."""

import runpy
import sys
from pathlib import Path

import llamavid
from tiny_helpers import moving_square_video

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "describe_video.py"


def test_load_ask_chat_attention(serving_model_dir, tmp_path):
    model = llamavid.load(serving_model_dir, device="cpu")
    video = moving_square_video(4, 64)
    answer = model.ask(video, "What happens?", temperature=0, max_new_tokens=5)
    assert str(answer) == answer.text and answer.visual_tokens == 8
    chat = model.chat(video, temperature=0, max_new_tokens=4)
    chat.ask("One?")
    chat.ask("Two?")
    assert len(chat.history) == 2
    result = model.attention(video, "Where?", out=tmp_path / "s.png")
    assert (tmp_path / "s.png").is_file() and result.relevance.shape == (4,)
    many = model.ask_many([(video, "a?"), (video, "b?")], temperature=0, max_new_tokens=3)
    assert len(many) == 2


def test_example_runs(serving_model_dir, monkeypatch, capsys):
    monkeypatch.setattr(
        sys, "argv", [str(EXAMPLE), "--model", str(serving_model_dir), "--max-new-tokens", "4"]
    )
    runpy.run_path(str(EXAMPLE), run_name="__main__")
    out = capsys.readouterr().out
    assert "6 frames -> 12 visual tokens" in out and "chat turns: 2" in out
