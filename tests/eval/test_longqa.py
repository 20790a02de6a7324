"""`llamavid data longqa` against the local deterministic OpenAI-compatible server."""

from __future__ import annotations

import json

from llamavid.cli.main import main

from .judge_server import judge_server


def pairs(prefix: str, n: int) -> str:
    return json.dumps(
        [{"question": f"{prefix} question {i}?", "answer": f"{prefix} answer {i}."} for i in range(n)]
    )


def test_longqa_generates_validates_dedups_and_resumes(tmp_path, capsys):
    synopsis = tmp_path / "movie1.txt"
    synopsis.write_text("A detective hunts a thief across Paris.")
    script = tmp_path / "script.txt"
    script.write_text("INT. MUSEUM - NIGHT\nThe thief steals a painting.")
    calls: dict[str, int] = {}
    state = {"detail_ok": False}

    def responder(messages, body):
        text = messages[-1]["content"]
        kind = next(
            k for k in ("summary", "plot", "characters", "reasoning", "specific details") if k in text
        )
        calls[kind] = calls.get(kind, 0) + 1
        if kind == "summary":
            return "```json\n" + pairs("summary", 2) + "\n```"
        if kind == "plot":
            return pairs("plot", 5)
        if kind == "characters":  # one exact duplicate of a plot question (case/punctuation differ)
            return json.dumps(
                [{"question": "PLOT question 0", "answer": "dup."}] + json.loads(pairs("char", 4))
            )
        if kind == "reasoning":
            return "I cannot do that." if calls[kind] == 1 else pairs("why", 5)
        return pairs("detail", 5) if state["detail_ok"] else '[{"question": "", "answer": ""}]'

    out = tmp_path / "long_videoqa.json"
    args = ["data", "longqa", "--synopsis", str(synopsis), "--script", str(script), "--out", str(out)]
    with judge_server(responder) as (url, server):
        assert main([*args, "--endpoint", url, "--model", "gen-test"]) == 1  # detail failed
        assert "detail: FAILED" in capsys.readouterr().err
        items = json.loads(out.read_text())
        assert len(items) == 2 + 5 + 4 + 5
        assert items[0]["conversations"][0] == {"from": "human", "value": "<image>\nsummary question 0?"}
        assert items[0]["video"] == "movie1.npz" and items[0]["id"] == "movie1_summary_0"
        assert calls["reasoning"] == 2 and calls["specific details"] == 3
        first_requests = len(server.requests)

        state["detail_ok"] = True
        assert main([*args, "--endpoint", url, "--model", "gen-test"]) == 0
        assert len(server.requests) == first_requests + 1  # only the failed kind is asked again
    items = json.loads(out.read_text())
    assert len(items) == 21 and len({item["id"] for item in items}) == 21
    assert sum(item["qa_kind"] == "detail" for item in items) == 5
