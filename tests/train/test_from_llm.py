"""A new LLaMA-VID around a pretrained LLM folder (``model.llm``, configs/tiny_from_llm.yaml; docs/llms.md)."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaTokenizer, Qwen2Config, Qwen2ForCausalLM

from llamavid.assets import DEMO_TOKENIZER_DIR
from llamavid.inference.engine import Engine
from llamavid.model import LlamaVidProcessor
from llamavid.testing import moving_square_video
from llamavid.train.recipe import run
from llamavid.train.schema import ConfigError, load_config

CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
    "'<|im_end|>\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


@pytest.fixture
def qwen2_folder(tmp_path):
    """A tiny random Qwen2 LLM saved as a transformers folder, with a tokenizer carrying a chat template."""
    tokenizer = LlamaTokenizer.from_pretrained(str(DEMO_TOKENIZER_DIR))
    tokenizer.chat_template = CHATML
    tokenizer.pad_token = tokenizer.unk_token  # else the qwen2 tokenizer class adds its own pad token on load
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=0,
    )
    torch.manual_seed(3)
    folder = tmp_path / "qwen2-tiny"
    Qwen2ForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_stage1_from_llm_folder_keeps_the_llm_and_answers(qwen2_folder, tmp_path):
    out = tmp_path / "run"
    cfg = load_config("tiny_from_llm", [f"model.llm={qwen2_folder}", f"train.output_dir={out}"])
    recipe, losses = run(cfg)
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))
    model = recipe.model
    source = Qwen2ForCausalLM.from_pretrained(qwen2_folder)
    # The LLM is the pretrained one, untouched by stage 1; the attention modules and projectors trained.
    for name, weight in source.model.state_dict().items():
        assert torch.equal(model.model.language_model.state_dict()[name], weight), name
    assert not any(p.requires_grad for p in model.model.language_model.parameters())
    trained = {name.split(".")[1] for name, p in model.named_parameters() if p.requires_grad}
    assert {"mm_projector", "vlm_att_encoder", "vlm_att_query", "vlm_att_val_projector"} <= trained

    final = out / "final"
    processor = LlamaVidProcessor.from_pretrained(final)
    assert processor.template == "tokenizer" and processor.chat_template == CHATML
    engine = Engine.from_pretrained(final, feature_cache=False)
    assert type(engine.model.model.language_model).__name__ == "Qwen2Model"
    answer = engine.ask(
        moving_square_video(frames=3, size=56), "What moves?", temperature=0, max_new_tokens=4
    )
    assert answer.completion_tokens >= 1

    # Stage 2 on the result, conversations in the LLM's own chat template (data.template: tokenizer).
    stage2 = load_config(
        {
            "model": {"init": str(final)},
            "data": {"synth": {"kind": "stage2", "n": 4, "seed": 0, "image_size": 56, "clip_frames": [5, 6]},
                     "max_frames": 6, "model_max_length": 512, "template": "tokenizer"},
            "optim": {"lr": 1e-3, "warmup_ratio": 0.0},
            "train": {"stage": 2, "max_steps": 2, "per_device_batch_size": 2, "precision": "fp32",
                      "gradient_checkpointing": False, "output_dir": str(tmp_path / "run2"), "save_steps": 0},
        }
    )  # fmt: skip
    _, losses = run(stage2)
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))


def test_training_text_in_the_llm_chat_template():
    from llamavid.testing import tiny_config
    from llamavid.train.datasets import render_conversation, tokenize_with_labels

    tokenizer = LlamaTokenizer.from_pretrained(str(DEMO_TOKENIZER_DIR))
    tokenizer.chat_template = CHATML
    processor = LlamaVidProcessor.from_config(tiny_config(), tokenizer)
    turns = [
        {"from": "human", "value": "<image>\nWhat colour is it?"},
        {"from": "gpt", "value": "red"},
        {"from": "human", "value": "And the shape?"},
        {"from": "gpt", "value": "a square"},
    ]
    rendered = render_conversation(
        turns, "tokenizer", has_media=True, chat_render=processor.render_with_tokenizer_template
    )
    # Every turn carries the media (the imgsp_v1 rule); the text is the tokenizer's own rendering.
    assert rendered.prompt.count("<image>") == 2 and len(rendered.questions) == 2
    assert rendered.prompt.startswith("<|im_start|>user\n<image>\nWhat colour is it?<|im_end|>")
    supervised = [rendered.prompt[start:end] for start, end in rendered.answer_spans]
    assert supervised == ["red<|im_end|>", "a square<|im_end|>"]
    ids, labels = tokenize_with_labels(tokenizer, rendered.prompt, rendered.answer_spans, add_bos=False)
    kept = tokenizer.decode([token for token in labels if token >= 0])
    assert "red" in kept and "square" in kept and "colour" not in kept


def test_llm_config_mistakes_are_named(qwen2_folder):
    with pytest.raises(ConfigError, match="leave model.init at 'random'"):
        load_config("tiny_from_llm", [f"model.llm={qwen2_folder}", "model.init=some/folder"])
    with pytest.raises(ConfigError, match="no text_config: set model.llm"):
        load_config("tiny_from_llm", ["model.llm=null"])
    with pytest.raises(ConfigError, match="conflicts with model.llm"):
        cfg = load_config(
            "tiny_from_llm",
            [f"model.llm={qwen2_folder}", "model.random_init.text_config={model_type: llama}"],
        )
        run(cfg)


def test_vision_tower_from_a_llamavid_folder(qwen2_folder, tmp_path):
    from llamavid.testing import build_tiny_model, tiny_config_kwargs
    from llamavid.train.from_llm import build_from_llm, load_llm

    donor = build_tiny_model(
        seed=5, vision_config={**tiny_config_kwargs()["vision_config"], "hidden_size": 48}
    )
    donor.save_pretrained(tmp_path / "donor")
    llm, _ = load_llm(qwen2_folder)
    kwargs = {k: v for k, v in tiny_config_kwargs().items() if k not in ("text_config", "vision_config")}
    model = build_from_llm(kwargs, llm, vision=tmp_path / "donor")
    assert model.config.vision_config.hidden_size == 48  # the folder's tower, not random_init's
    built = model.model.vision_tower.state_dict()
    for name, weight in donor.model.vision_tower.state_dict().items():
        assert torch.equal(built[name], weight), name
    with pytest.raises(FileNotFoundError, match="not a llamavid model folder"):
        build_from_llm(kwargs, llm, vision=qwen2_folder)
