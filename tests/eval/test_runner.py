"""End-to-end runs: tiny random model -> predictions.jsonl -> local judge -> score; resume; refusal."""

from __future__ import annotations

import json

import pytest

from llamavid.eval import IncompleteRunError, RunSettings, get_task, run_task
from llamavid.eval.judge import JudgeClient
from llamavid.eval.predictor import ModelPredictor
from llamavid.eval.runner import EvalRun

from .builders import msvd_dataset
from .judge_server import field, judge_server


def verdict_by_answer(messages, body):
    """yes/5 when the reference answer is "dog", no/1 otherwise: exact scores whatever the model says."""
    return (
        "{'pred': 'yes', 'score': 5}"
        if field(messages, "Correct Answer") == "dog"
        else "{'pred': 'no', 'score': 1}"
    )


@pytest.fixture
def predictor(tiny_model, tiny_processor):
    return ModelPredictor(tiny_model, tiny_processor, name="tiny-random")


def fast_judge(url: str) -> JudgeClient:
    return JudgeClient(url, "judge-test", backoff_s=0.01, max_retries=2, timeout_s=10)


SETTINGS = RunSettings(batch_size=2, max_new_tokens=3, judge_workers=2)


def test_msvd_end_to_end_with_tiny_model_and_local_judge(tmp_path, predictor):
    data = msvd_dataset(tmp_path / "msvd", ["dog", "cat", "dog"])
    with judge_server(verdict_by_answer) as (url, state):
        report = run_task(get_task("msvd_qa"), data, tmp_path / "out", SETTINGS, predictor, fast_judge(url))
    assert report["metrics"]["accuracy"] == pytest.approx(200 / 3)
    assert report["metrics"]["score"] == pytest.approx(11 / 3)
    assert len(state.requests) == 3 and all(r["temperature"] == 0.0 for r in state.requests)
    assert state.requests[0]["messages"][0]["content"].startswith("You are an intelligent chatbot")
    judge = report["judge"][0]
    assert judge["model"] == "judge-test" and judge["endpoint"].endswith("/v1/chat/completions")
    assert len(judge["prompt_sha256"]) == 64 and judge["first_date"]
    assert report["decoding"] == [
        {"preset": "video_qa", "seed": 0, "do_sample": True, "temperature": 0.2, "max_new_tokens": 3}
    ]
    markdown = (tmp_path / "out" / "report.md").read_text()
    assert "69.70" in markdown and "this run" in markdown  # paper comparison row
    records = [json.loads(line) for line in (tmp_path / "out" / "predictions.jsonl").read_text().splitlines()]
    assert [r["id"] for r in records] == ["q0_0", "q1_0", "q2_0"]


class CrashingPredictor:
    """Wraps a predictor and raises after ``crash_after`` answered batches (a killed run)."""

    def __init__(self, inner, crash_after: int | None) -> None:
        self.inner, self.crash_after, self.name, self.seen = inner, crash_after, inner.name, []

    def predict(self, requests, settings, seed):
        if self.crash_after is not None and len(self.seen) >= self.crash_after:
            raise KeyboardInterrupt("killed")
        self.seen.append(len(requests))
        return self.inner.predict(requests, settings, seed)


def test_resume_after_kill_only_predicts_the_rest(tmp_path, predictor):
    data = msvd_dataset(tmp_path / "msvd", ["dog", "cat", "dog", "cat", "dog"])
    task, out = get_task("msvd_qa"), tmp_path / "out"
    crashing = CrashingPredictor(predictor, crash_after=1)
    with pytest.raises(KeyboardInterrupt):
        run_task(task, data, out, SETTINGS, crashing)
    assert len((out / "predictions.jsonl").read_text().splitlines()) == 2  # the first batch survived the kill
    with pytest.raises(IncompleteRunError) as missing:
        EvalRun(task, data, out, SETTINGS).score()
    assert sorted(missing.value.missing) == ["q0_0/qa", "q1_0/qa", "q2_0", "q3_0", "q4_0"]

    resumed = CrashingPredictor(predictor, crash_after=None)
    with judge_server(verdict_by_answer) as (url, state):
        report = run_task(task, data, out, SETTINGS, resumed, fast_judge(url))
        assert resumed.seen == [2, 1] and len(state.requests) == 5
        # Everything cached: a second run neither generates nor judges again.
        again = CrashingPredictor(predictor, crash_after=0)
        run_task(task, data, out, SETTINGS, again, fast_judge(url))
        assert again.seen == [] and len(state.requests) == 5
    assert report["metrics"]["accuracy"] == pytest.approx(60.0)


def test_missing_video_is_reported_per_item_and_blocks_the_score(tmp_path, predictor):
    data = msvd_dataset(tmp_path / "msvd", ["dog", "cat", "dog"], missing_video=1)
    with judge_server(verdict_by_answer) as (url, _), pytest.raises(IncompleteRunError) as error:
        run_task(get_task("msvd_qa"), data, tmp_path / "out", SETTINGS, predictor, fast_judge(url))
    assert list(error.value.missing) == ["q1_0"]
    assert "media error" in error.value.missing["q1_0"] and "vid1" in error.value.missing["q1_0"]
    assert "refusing to report a score" in str(error.value)
    assert not (tmp_path / "out" / "results.json").exists()
    errors = [json.loads(line) for line in (tmp_path / "out" / "errors.jsonl").read_text().splitlines()]
    assert errors[0]["key"] == "q1_0" and errors[0]["stage"] == "media"


def test_malformed_judge_replies_are_retried_then_reported(tmp_path, predictor):
    data = msvd_dataset(tmp_path / "msvd", ["dog", "cat", "bird"])
    calls: dict[str, int] = {}

    def flaky(messages, body):
        answer = field(messages, "Correct Answer")
        calls[answer] = calls.get(answer, 0) + 1
        if answer == "cat" and calls[answer] == 1:
            return "Sure! Here is my evaluation: maybe"  # malformed once, then fine
        if answer == "bird":
            return "{'pred': 'perhaps', 'score': 3}"  # always malformed
        if answer == "dog" and calls[answer] == 1:
            return (503, "overloaded")  # transport-level retry
        return "```python\n{'pred': 'yes', 'score': 4}\n```"

    with judge_server(flaky) as (url, _), pytest.raises(IncompleteRunError) as error:
        run_task(get_task("msvd_qa"), data, tmp_path / "out", SETTINGS, predictor, fast_judge(url))
    assert list(error.value.missing) == ["q2_0/qa"]
    assert "'pred' must be 'yes' or 'no'" in error.value.missing["q2_0/qa"]
    assert calls == {"dog": 2, "cat": 2, "bird": 3}


def test_cli_scores_cached_predictions_and_exits_3_when_missing(tmp_path, capsys):
    from llamavid.cli.main import main
    from llamavid.eval.records import JsonlStore

    data = msvd_dataset(tmp_path / "msvd", ["dog", "cat"])
    out = tmp_path / "out"
    JsonlStore(out / "predictions.jsonl").append({"id": "q0_0", "prediction": "a dog"})
    assert main(["eval", "msvd_qa", "--data", str(data), "--out", str(out)]) == 3
    err = capsys.readouterr().err
    assert "q1_0: no prediction yet" in err and "q0_0/qa: not judged yet" in err
    JsonlStore(out / "predictions.jsonl").append({"id": "q1_0", "prediction": "a cat"})
    with judge_server(verdict_by_answer) as (url, _):
        code = main(
            [
                "eval",
                "msvd_qa",
                "--data",
                str(data),
                "--out",
                str(out),
                "--judge-url",
                url,
                "--judge-model",
                "m",
            ]
        )
    assert code == 0
    assert "accuracy=50.00, score=3.00" in capsys.readouterr().out


def test_cli_image_task_with_saved_tiny_model(tmp_path, tiny_model, tiny_processor, capsys):
    """`llamavid eval pope --model DIR`: from_pretrained, greedy preset, batch 2, real POPE scoring."""
    from llamavid.cli.main import main

    from .builders import write_image, write_jsonl

    model_dir = tmp_path / "model"
    tiny_model.save_pretrained(model_dir)
    tiny_processor.save_pretrained(model_dir)
    data = tmp_path / "pope"
    write_image(data / "val2014" / "c.jpg", size=40)
    rows = [
        {"question_id": i, "image": "c.jpg", "text": "Is there a dog?", "category": "random"}
        for i in range(3)
    ]
    write_jsonl(data / "llava_pope_test.jsonl", rows)
    write_jsonl(
        data / "coco" / "coco_pope_random.json",
        [{**r, "label": "yes" if r["question_id"] else "no"} for r in rows],
    )
    out = tmp_path / "out"
    code = main(
        [
            "eval",
            "pope",
            "--model",
            str(model_dir),
            "--data",
            str(data),
            "--out",
            str(out),
            "--batch-size",
            "2",
            "--max-new-tokens",
            "2",
        ]
    )
    assert code == 0, capsys.readouterr().err
    report = json.loads((out / "results.json").read_text())
    assert report["decoding"] == [
        {"preset": "image_eval", "seed": 0, "do_sample": False, "max_new_tokens": 2}
    ]
    assert report["models"] == [str(model_dir)] and report["counts"]["items"] == 3
    assert set(report["per_category"]["random"]) >= {"f1", "precision", "recall", "yes_ratio", "accuracy"}
