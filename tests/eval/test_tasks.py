"""Every task on a tiny set in its published format, scored from hand-written predictions (exact numbers)."""

from __future__ import annotations

import base64
import csv
import io
import json

import pytest
from PIL import Image

from llamavid.eval import IncompleteRunError, RunSettings, get_task, run_task
from llamavid.eval.records import JsonlStore

from .builders import write_frame_folder, write_image, write_json, write_jsonl
from .judge_server import judge_server


def score(task_name, data, predictions, tmp_path, **kwargs):
    """Write hand-made predictions for every item, then score through the real runner (no model)."""
    store = JsonlStore(tmp_path / "out" / "predictions.jsonl")
    for item_id, text in predictions.items():
        store.append({"id": item_id, "prediction": text})
    return run_task(get_task(task_name), data, tmp_path / "out", RunSettings(**kwargs))


def test_mvbench(tmp_path):
    data = tmp_path / "mvbench"
    write_frame_folder(data / "video" / "action_sequence" / "a.mp4")
    rows = [
        {"video": "a.mp4", "question": f"Q{i}?", "candidates": ["sit", "stand", "run"], "answer": "stand"}
        for i in range(3)
    ]
    write_json(data / "json" / "action_sequence.json", rows)
    write_json(
        data / "json" / "object_shuffle.json",
        [{"video": "a.mp4", "question": "Where?", "candidates": ["x", "y"], "answer": "x"}],
    )
    items = get_task("mvbench").load(data)
    assert (
        items[0].prompt
        == "Q0?\n(A) sit\n(B) stand\n(C) run\nAnswer with the option's letter from the given choices directly."
    )
    assert items[0].media.endswith("video/action_sequence/a.mp4")
    report = score(
        "mvbench",
        data,
        {
            "action_sequence/0": "(B)",
            "action_sequence/1": "Answer: a",
            "action_sequence/2": "The answer is B) stand",
            "object_shuffle/0": "x",
        },
        tmp_path,
    )
    assert report["metrics"]["accuracy"] == 75.0
    assert report["per_category"]["action_sequence"]["accuracy"] == pytest.approx(200 / 3)
    assert report["counts"]["unparsed"] == 0


def test_egoschema_scores_subset_and_writes_submission(tmp_path):
    data = tmp_path / "ego"
    rows = [
        {"q_uid": f"u{i}", "question": "What did c do?", **{f"option {k}": f"opt{k}" for k in range(5)}}
        for i in range(3)
    ]
    write_json(data / "questions.json", rows)
    write_json(data / "subset_answers.json", {"u0": 2, "u1": 4})
    for i in range(3):
        write_frame_folder(data / "videos" / f"u{i}.mp4", seed=i)
    report = score("egoschema", data, {"u0": "C", "u1": "(A)", "u2": "E."}, tmp_path)
    assert report["metrics"]["accuracy"] == 50.0 and report["counts"]["scored"] == 2
    assert "private answers" in report["notes"][0]
    with open(tmp_path / "out" / "egoschema_submission.csv") as handle:
        assert list(csv.reader(handle)) == [["q_uid", "answer"], ["u0", "2"], ["u1", "0"], ["u2", "4"]]


def test_videomme(tmp_path):
    data = tmp_path / "vmme"
    rows = [
        {
            "video_id": "001",
            "duration": d,
            "domain": "x",
            "sub_category": "y",
            "videoID": "vid",
            "question_id": f"001-{i}",
            "task_type": t,
            "question": "How many?",
            "options": ["A. one", "B. two", "C. three", "D. four"],
            "answer": "C",
        }
        for i, (d, t) in enumerate([("short", "Counting"), ("short", "OCR"), ("long", "Counting")])
    ]
    write_json(data / "videomme.json", rows)
    write_frame_folder(data / "data" / "vid.mp4")
    report = score("videomme", data, {"001-0": "C", "001-1": "three", "001-2": "B"}, tmp_path)
    assert report["metrics"]["accuracy"] == pytest.approx(200 / 3)
    assert report["per_category"]["short"]["accuracy"] == 100.0
    assert report["per_category"]["task: Counting"]["accuracy"] == 50.0


def test_mlvu(tmp_path):
    data = tmp_path / "mlvu"
    write_frame_folder(data / "video" / "1_plotQA" / "m.mp4")
    write_json(
        data / "json" / "1_plotQA.json",
        [
            {
                "video": "m.mp4",
                "duration": 400,
                "question": "Why?",
                "candidates": ["a", "b", "c", "d"],
                "answer": "d",
                "question_type": "plotQA",
            }
        ],
    )
    assert score("mlvu", data, {"1_plotQA/0": "(D) d"}, tmp_path)["metrics"]["accuracy"] == 100.0


def test_gqa(tmp_path):
    data = tmp_path / "gqa"
    write_image(data / "images" / "n1.jpg")
    write_jsonl(
        data / "llava_gqa_testdev_balanced.jsonl",
        [
            {
                "question_id": "1",
                "image": "n1.jpg",
                "text": "What color? Answer the question using a single word or phrase.",
            },
            {"question_id": "2", "image": "n1.jpg", "text": "Which side?"},
        ],
    )
    write_json(
        data / "testdev_balanced_questions.json",
        {
            "1": {"answer": "red", "types": {"structural": "query"}},
            "2": {"answer": "left", "types": {"structural": "choose"}},
        },
    )
    report = score("gqa", data, {"1": "Red.", "2": "right"}, tmp_path)
    assert report["metrics"]["accuracy"] == 50.0 and report["per_category"]["query"]["accuracy"] == 100.0


def test_pope(tmp_path):
    data = tmp_path / "pope"
    write_image(data / "val2014" / "c.jpg")
    questions, labels = [], {"random": [], "adversarial": []}
    for qid, (category, label) in enumerate(
        [("random", "yes"), ("random", "no"), ("random", "yes"), ("adversarial", "no")]
    ):
        questions.append(
            {"question_id": qid, "image": "c.jpg", "text": "Is there a dog?", "category": category}
        )
        labels[category].append(
            {"question_id": qid, "image": "c.jpg", "text": "Is there a dog?", "label": label}
        )
    write_jsonl(data / "llava_pope_test.jsonl", questions)
    for category, rows in labels.items():
        write_jsonl(data / "coco" / f"coco_pope_{category}.json", rows)
    report = score(
        "pope",
        data,
        {
            "random/0": "Yes.",
            "random/1": "Yes, there is.",
            "random/2": "No, not really.",
            "adversarial/3": "No.",
        },
        tmp_path,
    )
    rnd = report["per_category"]["random"]
    assert rnd["precision"] == 50.0 and rnd["recall"] == 50.0 and rnd["f1"] == 50.0
    assert rnd["yes_ratio"] == pytest.approx(200 / 3)
    assert report["per_category"]["adversarial"]["f1"] == 0.0  # no positives at all
    assert report["metrics"]["f1"] == 25.0


def test_mme_perception_is_acc_plus_acc_plus(tmp_path):
    data = tmp_path / "mme" / "MME_Benchmark_release_version"
    for category in ("existence", "count"):
        for image in ("1", "2"):
            write_image(data / category / f"{image}.png")
            (data / category / f"{image}.txt").write_text(
                "Is there a cat? Please answer yes or no.\tYes\nIs there a dog? Please answer yes or no.\tNo\n"
            )
    predictions = {
        "existence/1/0": "Yes",
        "existence/1/1": "No",
        "existence/2/0": "Yes",
        "existence/2/1": "Yes",
        "count/1/0": "No",
        "count/1/1": "Yes",
        "count/2/0": "yes, it is",
        "count/2/1": "No",
    }
    report = score("mme", tmp_path / "mme", predictions, tmp_path)
    assert (
        report["per_category"]["existence"]["acc"] == 75.0
        and report["per_category"]["existence"]["acc_plus"] == 50.0
    )
    assert report["per_category"]["count"]["score"] == 50.0 + 50.0
    assert report["metrics"]["perception"] == 125.0 + 100.0
    assert report["metrics"]["cognition"] == 0.0 and "missing" in report["notes"][0]


def test_scienceqa_img_only_image_questions(tmp_path):
    data = tmp_path / "sqa"
    write_image(data / "images" / "test" / "5" / "image.png")
    write_json(
        data / "llava_test_CQM-A.json",
        [
            {
                "id": "5",
                "image": "5/image.png",
                "conversations": [
                    {
                        "from": "human",
                        "value": "<image>\nContext: N/A\nQuestion: Which?\nOptions: (A) x (B) y",
                    }
                ],
            },
            {"id": "6", "conversations": [{"from": "human", "value": "Text only?"}]},
        ],
    )
    write_json(
        data / "problems.json",
        {
            "5": {"choices": ["x", "y"], "answer": 1, "subject": "natural science"},
            "6": {"choices": ["x", "y"], "answer": 0},
        },
    )
    items = get_task("scienceqa_img").load(data)
    assert [i.id for i in items] == ["5"] and items[0].prompt.endswith("given choices directly.")
    assert score("scienceqa_img", data, {"5": "B"}, tmp_path)["metrics"]["accuracy"] == 100.0


def test_vqav2_val_scored_and_testdev_submission(tmp_path):
    val = tmp_path / "val"
    write_image(val / "val2014" / "COCO_val2014_000000000042.jpg")
    write_json(
        val / "v2_OpenEnded_mscoco_val2014_questions.json",
        {"questions": [{"question_id": 7, "image_id": 42, "question": "How many?"}]},
    )
    write_json(
        val / "v2_mscoco_val2014_annotations.json",
        {
            "annotations": [
                {
                    "question_id": 7,
                    "answer_type": "number",
                    "answers": [{"answer": "2"}] * 2 + [{"answer": "3"}] * 8,
                }
            ]
        },
    )
    report = score("vqav2", val, {"7": "Two."}, tmp_path / "a")
    assert report["metrics"]["accuracy"] == pytest.approx(60.0)
    test = tmp_path / "test"
    write_image(test / "test2015" / "t.jpg")
    write_jsonl(
        test / "llava_vqav2_mscoco_test-dev2015.jsonl",
        [{"question_id": 9, "image": "t.jpg", "text": "What?"}],
    )
    report = score("vqav2", test, {"9": "The Dog."}, tmp_path / "b")
    assert report["metrics"] == {} and "private" in report["notes"][0]
    assert json.loads((tmp_path / "b" / "out" / "vqav2_submission.json").read_text()) == [
        {"question_id": 9, "answer": "dog"}
    ]
    assert "No local score" in (tmp_path / "b" / "out" / "report.md").read_text()


def test_vizwiz_val(tmp_path):
    data = tmp_path / "vizwiz"
    write_image(data / "val" / "VizWiz_val_1.jpg")
    write_json(
        data / "val.json",
        [
            {
                "image": "VizWiz_val_1.jpg",
                "question": "What is this?",
                "answer_type": "other",
                "answers": [{"answer": "unanswerable"}] * 10,
            }
        ],
    )
    items = get_task("vizwiz").load(data)
    assert "respond with 'Unanswerable'" in items[0].prompt
    assert (
        score("vizwiz", data, {"VizWiz_val_1.jpg": "Unanswerable"}, tmp_path)["metrics"]["accuracy"] == 100.0
    )


def _b64_png() -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (255, 0, 0)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def test_mmbench_circular(tmp_path):
    data = tmp_path / "mmb"
    data.mkdir()
    fields = ["index", "question", "hint", "A", "B", "C", "D", "answer", "category", "l2-category", "image"]
    rows = [  # question 0 with one rotation (1000000), question 1 alone
        {
            "index": 0,
            "question": "Color?",
            "hint": "nan",
            "A": "red",
            "B": "blue",
            "C": "",
            "D": "",
            "answer": "A",
            "category": "color",
        },
        {
            "index": 1000000,
            "question": "Color?",
            "hint": "nan",
            "A": "blue",
            "B": "red",
            "C": "",
            "D": "",
            "answer": "B",
            "category": "color",
        },
        {
            "index": 1,
            "question": "Shape?",
            "hint": "Look.",
            "A": "square",
            "B": "circle",
            "C": "",
            "D": "",
            "answer": "B",
            "category": "shape",
        },
    ]
    with open(data / "mmbench_dev_20230712.tsv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fields, delimiter="\t")
        writer.writeheader()
        for row in rows:
            writer.writerow({**row, "l2-category": "x", "image": _b64_png()})
    items = get_task("mmbench").load(data)
    assert items[2].prompt.startswith("Look.\nShape?\nA. square\nB. circle\n")
    report = score("mmbench", data, {"0": "A", "1000000": "A", "1": "B"}, tmp_path)
    assert report["metrics"]["circular_accuracy"] == 50.0
    assert report["metrics"]["vanilla_accuracy"] == pytest.approx(200 / 3)
    assert (tmp_path / "out" / "mmbench_submission.tsv").read_text().count("\n") == 4


def test_seed_image_only(tmp_path):
    data = tmp_path / "seed"
    write_image(data / "SEED-Bench-image" / "1.jpg")
    question = {
        "question": "What?",
        "choice_a": "a",
        "choice_b": "b",
        "choice_c": "c",
        "choice_d": "d",
        "answer": "C",
        "data_id": "1.jpg",
        "data_type": "image",
        "question_type_id": 1,
    }
    write_json(
        data / "SEED-Bench.json",
        {
            "question_type": {"Scene Understanding": 1},
            "questions": [
                {**question, "question_id": "q1"},
                {**question, "question_id": "v1", "data_type": "video"},
            ],
        },
    )
    report = score("seed_img", data, {"q1": "C"}, tmp_path)
    assert (
        report["metrics"]["accuracy"] == 100.0 and report["per_category"]["Scene Understanding"]["count"] == 1
    )


def test_video_chatgpt_five_dimensions(tmp_path):
    data = tmp_path / "vcgpt"
    write_frame_folder(data / "Test_Videos" / "v_a.mp4")
    write_json(data / "generic_qa.json", [{"Q": "What happens?", "A": "A man cooks.", "video_name": "v_a"}])
    write_json(data / "temporal_qa.json", [{"Q": "What first?", "A": "He cuts.", "video_name": "v_a"}])
    write_json(
        data / "consistency_qa.json",
        [{"Q1": "Who cooks?", "Q2": "Which person cooks?", "A": "A man.", "video_name": "v_a"}],
    )
    predictions = {
        "generic/v_a_0": "cooking",
        "temporal/v_a_0": "cutting",
        "consistency/v_a_0/q1": "a man",
        "consistency/v_a_0/q2": "a man",
    }
    scores = {
        "factual accuracy": 3,
        "detail orientation": 2,
        "contextual understanding": 4,
        "temporal accuracy": 1,
        "consistency": 5,
    }

    def responder(messages, body):
        text = messages[-1]["content"]
        if "Question 2: Which person cooks?" in text:
            return "{'score': 5}"
        quality = next(q for q in scores if f"as a {q} score" in text)
        return f"{{'score': {scores[quality]}}}"

    store = JsonlStore(tmp_path / "out" / "predictions.jsonl")
    for item_id, text in predictions.items():
        store.append({"id": item_id, "prediction": text})
    from llamavid.eval.judge import JudgeClient

    with judge_server(responder) as (url, state):
        report = run_task(
            get_task("video_chatgpt"),
            data,
            tmp_path / "out",
            RunSettings(),
            judge=JudgeClient(url, "m", backoff_s=0.01),
        )
    assert report["metrics"] == {
        "correctness": 3.0,
        "detail": 2.0,
        "context": 4.0,
        "temporal": 1.0,
        "consistency": 5.0,
        "mean": 3.0,
    }
    assert len(state.requests) == 5


def test_corrupt_annotation_is_a_clear_error(tmp_path):
    data = tmp_path / "msvd"
    data.mkdir()
    (data / "test_qa.json").write_text("[{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        get_task("msvd_qa").load(data)


def test_corrupt_prediction_cache_line_is_reported(tmp_path):
    data = tmp_path / "gqa"
    write_image(data / "images" / "n1.jpg")
    write_jsonl(
        data / "llava_gqa_testdev_balanced.jsonl", [{"question_id": "1", "image": "n1.jpg", "text": "Q?"}]
    )
    write_json(data / "testdev_balanced_questions.json", {"1": {"answer": "red"}})
    out = tmp_path / "out"
    out.mkdir()
    (out / "predictions.jsonl").write_text('{"id": "1", "predic\n{"id": "1", "prediction": "red"}\n')
    with pytest.raises(ValueError, match="predictions.jsonl:1"):
        run_task(get_task("gqa"), data, out, RunSettings())
    (out / "predictions.jsonl").write_text(
        '{"id": "0", "prediction": "x"}\n{"id": "1", "predic'
    )  # torn last line
    with pytest.raises(IncompleteRunError):
        run_task(get_task("gqa"), data, out, RunSettings())
