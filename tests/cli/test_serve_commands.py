"""``llamavid ask|chat|attention`` (and the argument checks of ``serve``/``web``) as real subprocesses."""

import json
import os
import pty
import select
import subprocess
import sys
import time

import numpy as np
import pytest

from llamavid.cli.main import main
from llamavid.inference.loading import default_model_path

ANSWER_KEYS = {
    "model", "random_weights", "device", "dtype", "media", "answer", "question", "finish_reason", "frames",
    "visual_tokens", "prompt_tokens", "completion_tokens", "seconds", "frames_capped", "feature_cache",
}  # fmt: skip


def run_cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "llamavid.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=120,
        input=stdin,
    )


def test_ask_json_schema(serving_model_dir, demo_video_path):
    result = run_cli(
        "ask", str(demo_video_path), "Which way?", "--model", str(serving_model_dir),
        "--temperature", "0", "--max-new-tokens", "6", "--json",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    assert set(payload) == ANSWER_KEYS
    assert payload["frames"] == 4 and payload["visual_tokens"] == 8
    assert payload["finish_reason"] in ("stop", "length") and payload["completion_tokens"] <= 6


def test_chat_reads_stdin_with_commands(serving_model_dir, demo_video_path, tmp_path):
    script = f"What moves?\n/attention {tmp_path / 'a.png'}\nAnd then?\n/save {tmp_path / 'c.json'}\n/nope\n/quit\n"
    result = run_cli(
        "chat", str(demo_video_path), "--model", str(serving_model_dir), "--temperature", "0",
        "--max-new-tokens", "4", "--json", stdin=script,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line.get("turn", line.get("event")) for line in lines] == [1, "attention", 2, "save"]
    assert "unknown command" in result.stderr  # a typo does not end the chat
    saved = json.loads((tmp_path / "c.json").read_text())
    assert [turn["user"] for turn in saved["turns"]] == ["What moves?", "And then?"]
    assert (tmp_path / "a.png").stat().st_size > 0


def test_attention_writes_strip(serving_model_dir, demo_video_path, tmp_path, capsys):
    out = tmp_path / "strip.png"
    args = [
        "attention",
        str(demo_video_path),
        "Where is it?",
        "--out",
        str(out),
        "--model",
        str(serving_model_dir),
    ]
    assert main([*args, "--json"]) == 0  # in-process: the subprocess path is covered by ask and chat
    payload = json.loads(capsys.readouterr().out)
    assert len(payload["relevance"]) == 4 and abs(sum(payload["relevance"]) - 1) < 1e-4
    assert out.stat().st_size > 0


@pytest.mark.parametrize(
    "args",
    [
        ("ask", "/no/such/video.mp4", "q"),
        ("serve", "--max-batch-size", "0"),
    ],
)
def test_bad_input_is_one_line_exit_2(args):
    result = run_cli(*args)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert result.stderr.startswith(f"llamavid {args[0]}: error:")


@pytest.mark.parametrize(
    "args",
    [
        ("chat", "/no/such/video.mp4"),
        ("attention", "/no/such/video.mp4", "q", "--out", "x.png"),
        ("attention", "{video}", "q", "--out", "x.txt"),
        ("web", "--model", "/no/such/model"),
        ("web", "--max-upload-mb", "0"),
    ],
)
def test_bad_input_in_process(args, demo_video_path, capsys):
    assert main([arg.format(video=demo_video_path) for arg in args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"llamavid {args[0]}: error:") and len(err.splitlines()) == 1


def test_ask_streams_text_and_greedy_is_deterministic(serving_model_dir, demo_video_path, capsys):
    args = ["ask", str(demo_video_path), "What?", "--model", str(serving_model_dir), "--temperature", "0",
            "--max-new-tokens", "6"]  # fmt: skip
    assert main(args) == 0
    first = capsys.readouterr().out
    assert main(args) == 0
    assert capsys.readouterr().out == first and first.endswith("\n")


def test_bad_media_file_is_a_one_line_error(serving_model_dir, tmp_path, capsys):
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video at all" * 10)
    assert main(["ask", str(broken), "q", "--model", str(serving_model_dir)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("llamavid ask: error:") and "broken.mp4" in err


@pytest.mark.skipif(default_model_path() is None, reason="the trained tiny model is not embedded yet")
def test_ask_and_chat_answer_correctly_about_a_generated_video(tmp_path):
    """Real media path with the shipped tiny model: a lossless MKV on disk, decoded at 1 fps, default --model."""
    from llamavid.synth.clips import make_clip_question
    from llamavid.synth.dataset import write_video

    rng = np.random.default_rng(0)
    right = 0
    for index in range(6):
        item = make_clip_question(rng, "heldout", "video_colour_change", f"cli{index}")
        video = write_video(item.media.render(), tmp_path / f"clip{index}", video_format="mkv")
        result = run_cli("ask", str(video), item.question, "--temperature", "0", "--json")
        assert result.returncode == 0, result.stderr
        payload = json.loads(result.stdout)
        right += item.answer in payload["answer"].lower().split()
    assert right >= 4  # chance is 1/8 per question

    chat = subprocess.run(
        [sys.executable, "-m", "llamavid.cli.main", "chat", str(video), "--temperature", "0"],
        input=f"{item.question}\n/quit\n", capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert chat.returncode == 0, chat.stderr
    assert item.answer in chat.stdout.lower()


def test_chat_help_lists_the_commands_and_keeps_chatting(serving_model_dir, demo_video_path):
    result = run_cli(
        "chat", str(demo_video_path), "--model", str(serving_model_dir), "--temperature", "0",
        "--max-new-tokens", "2", stdin="/help\nWhat moves?\n/quit\n",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "unknown command" not in result.stderr
    for command in ("/help", "/reset", "/save FILE", "/attention FILE", "/quit"):
        assert command in result.stdout, command
    assert result.stdout.rstrip().splitlines()[-1].strip()  # the question after /help was answered


class Terminal:
    """The console script on a pseudo-terminal (stdin, stdout and stderr are one TTY), read with a deadline."""

    def __init__(self, args: list[str], env: dict[str, str], deadline_s: float = 90) -> None:
        self.deadline = time.monotonic() + deadline_s
        self.master, slave = pty.openpty()
        self.process = subprocess.Popen(
            args, stdin=slave, stdout=slave, stderr=slave, env=env, start_new_session=True
        )
        os.close(slave)
        self.output = b""

    def text(self) -> str:
        return self.output.decode(errors="replace")

    def read_until(self, text: str, count: int = 1) -> None:
        """Read until ``text`` has appeared ``count`` times in all output so far."""
        while self.text().count(text) < count:
            left = self.deadline - time.monotonic()
            assert left > 0, f"waited for {text!r} x{count}; the terminal shows:\n{self.text()}"
            if select.select([self.master], [], [], min(left, 1.0))[0]:
                try:
                    self.output += os.read(self.master, 4096)
                except OSError:  # the child has closed the terminal
                    raise AssertionError(
                        f"exited before {text!r} x{count}; the terminal shows:\n{self.text()}"
                    ) from None

    def type(self, keys: str) -> None:
        os.write(self.master, keys.encode())

    def close(self) -> int | None:
        try:
            return self.process.wait(timeout=max(1.0, self.deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            return None
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()
            os.close(self.master)


def test_chat_in_a_terminal_edits_lines_and_recalls_history(serving_model_dir, demo_video_path, tmp_path):
    env = {**os.environ, "HOME": str(tmp_path), "TERM": "xterm"}
    terminal = Terminal(
        [sys.executable, "-m", "llamavid.cli.main", "chat", str(demo_video_path), "--model", str(serving_model_dir),
         "--temperature", "0", "--max-new-tokens", "2", "--quiet"],
        env,
    )  # fmt: skip
    try:
        terminal.read_until("USER: ")
        shown = terminal.text().count("/attention FILE")  # the banner may name the commands too
        terminal.type("/hlp\x1b[D\x1b[De\r")  # two Left arrows, then insert: "/help"
        terminal.read_until("/attention FILE", count=shown + 1)
        terminal.read_until("USER: ", count=2)
        terminal.type("\x1b[A\r")  # Up recalls "/help"
        terminal.read_until("/attention FILE", count=shown + 2)
        terminal.read_until("USER: ", count=3)
        terminal.type("/quit\r")
    finally:
        status = terminal.close()
    assert status == 0, terminal.text()
    assert "unknown command" not in terminal.text()
    history = (tmp_path / ".cache" / "llamavid" / "chat_history").read_text()
    assert "/help" in history.splitlines()
