import numpy as np
import pytest

from llamavid.synth.episodes import LONG_QUESTION_TYPES, episode_questions, make_episode
from llamavid.synth.world import BACKGROUNDS, COLOURS, HELDOUT_PAIRS, SHAPES, item_rng


@pytest.fixture(scope="module")
def episode():
    return make_episode(item_rng("heldout", "episode", 0, 0), "heldout")


def _on_screen(episode, index):
    labels = episode.frame_labels(index)
    rows, cols = np.nonzero(labels.shape)
    return {
        (SHAPES[labels.shape[r, c] - 1], COLOURS[labels.colour[r, c] - 1])
        for r, c in zip(rows, cols, strict=False)
    }


def test_streaming_frames_equal_sequential_render(episode):
    assert episode.num_frames >= 1200
    frames = episode.render()  # the whole video, as a speed sanity check too
    assert frames.shape == (episode.num_frames, 64, 64, 3)
    fresh = make_episode(item_rng("heldout", "episode", 0, 0), "heldout")
    for index in (0, 1, 599, episode.needle_start, episode.num_frames - 1):
        assert fresh.render_frame(index).tobytes() == frames[index].tobytes()
    with pytest.raises(IndexError):
        episode.render_frame(episode.num_frames)


def test_visual_needle_is_one_white_frame_with_the_answer_colour(episode):
    backgrounds = np.array([episode.frame_labels(i).background for i in range(episode.num_frames)])
    assert np.flatnonzero(backgrounds == -1).tolist() == [episode.needle_start]
    ((shape, colour),) = _on_screen(episode, episode.needle_start)
    assert colour == episode.answers["long_visual_needle"] and shape == episode.needle_shape


def test_subtitle_needle_and_reasoning_answer(episode):
    facts = episode.answers
    secret = [cue for cue in episode.subtitles if "secret number" in cue.text]
    assert len(secret) == 1
    cue = secret[0]
    assert cue.text == f"{facts['secret_speaker']}: My secret number is {facts['long_subtitle_needle']}."
    scene = episode.scenes[episode.scene_index(int(cue.start))]
    assert scene.background == facts["long_reasoning"]
    speaker = next(c for c in episode.characters if c.name == facts["secret_speaker"])
    frame = int(cue.start) if int(cue.start) != episode.needle_start else int(cue.start) + 1
    assert (speaker.shape, speaker.colour) in _on_screen(episode, frame)
    assert not any(ch.isdigit() for other in episode.subtitles if other is not cue for ch in other.text)


def test_characters_plot_and_scene_count(episode):
    facts = episode.answers
    assert len(episode.scenes) == int(facts["long_summary"])
    assert all(a.background != b.background for a, b in zip(episode.scenes, episode.scenes[1:], strict=False))
    assert episode.scenes[0].start == 0 and episode.scenes[-1].end == episode.num_frames
    intros = [e.detail["name"] for e in episode.events if e.kind == "intro"]
    assert intros[-1] == facts["long_plot"] and len(set(intros)) == len(episode.characters)
    queried = next(c for c in episode.characters if c.name == facts["character_name"])
    assert queried.colour == facts["long_character"]
    # During an introduction only the introduced character is on screen, while its greeting is shown.
    for scene in episode.scenes:
        if scene.intro >= 0:
            character = episode.characters[scene.intro]
            index = scene.start if scene.start != episode.needle_start else scene.start + 1
            assert _on_screen(episode, index) == {(character.shape, character.colour)}
            assert f"{character.name}: Hello, I am {character.name}." in episode.subtitles_at(index)


def test_questions_cover_every_type_with_valid_answers(episode):
    items = episode_questions(episode, "ep", include_summary=True)
    assert [i.question_type for i in items] == [*LONG_QUESTION_TYPES, "long_summary_caption"]
    for item in items[:-1]:
        assert item.answer in item.answer_options
    assert items[-1].answer_options is None and episode.answers["long_plot"] in items[-1].answer


def test_train_episodes_avoid_heldout_pairs_and_seeds_differ():
    for index in range(20):
        episode = make_episode(item_rng("train", "episode", 0, index), "train", num_frames=120)
        assert not any((c.shape, c.colour) in HELDOUT_PAIRS for c in episode.characters)
        assert (episode.needle_shape, episode.needle_colour) not in HELDOUT_PAIRS
        assert all(0 <= cue.start < cue.end <= episode.num_frames for cue in episode.subtitles)
    first = make_episode(item_rng("train", "episode", 0, 0), "train", num_frames=120)
    second = make_episode(item_rng("train", "episode", 0, 1), "train", num_frames=120)
    assert first.render().tobytes() != second.render().tobytes()


def test_forced_answers_and_validation():
    episode = make_episode(
        np.random.default_rng(0), "train", 60, answers={"long_summary": "9", "long_reasoning": "navy"}
    )
    assert len(episode.scenes) == 9 and episode.answers["long_reasoning"] == "navy"
    assert "navy" in BACKGROUNDS
    with pytest.raises(ValueError, match="too short"):
        make_episode(np.random.default_rng(0), "train", 59)
    with pytest.raises(ValueError, match="cannot force"):
        make_episode(np.random.default_rng(0), "train", answers={"long_summary": "12"})


@pytest.mark.parametrize("num_frames", [60, 150])
def test_short_curriculum_episodes_stay_consistent(num_frames):
    for index in range(60):
        split = ("train", "heldout")[index % 2]
        episode = make_episode(item_rng(split, "episode", 1, index), split, num_frames)
        facts = episode.answers
        (secret,) = [cue for cue in episode.subtitles if "secret number" in cue.text]
        scene = episode.scenes[episode.scene_index(int(secret.start))]
        assert scene.background == facts["long_reasoning"] and len(episode.scenes) == int(
            facts["long_summary"]
        )
        speaker = next(i for i, c in enumerate(episode.characters) if c.name == facts["secret_speaker"])
        assert speaker in [cast[0] for cast in scene.cast]
        cues = sorted(episode.subtitles, key=lambda c: c.start)
        assert all(a.end <= b.start for a, b in zip(cues, cues[1:], strict=False)), "cues must not overlap"
