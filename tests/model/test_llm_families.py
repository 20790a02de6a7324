"""Any causal LM as the language model (docs/llms.md): tiny random Llama, Qwen2, Qwen3, Mistral and Phi-3.

Each family runs a forward pass with a video, a training step, a save/load round trip and an answer through
`Engine` (the one generate path). Families other than Llama/Vicuna render prompts with the LLM tokenizer's own
chat template; the packaged demo tokenizer stands in for their tokenizers, given each family's template style.
"""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaTokenizer

from llamavid.assets import DEMO_TOKENIZER_DIR
from llamavid.errors import InvalidInputError
from llamavid.inference.engine import Engine
from llamavid.model import LlamaVidConfig, LlamaVidForConditionalGeneration, LlamaVidProcessor
from llamavid.model.configuration_llamavid import IMAGE_TOKEN_INDEX
from llamavid.testing import moving_square_video, tiny_config_kwargs

CHATML = (
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
INST = (
    "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}"
    "{{ '[INST] ' + message['content'] + ' [/INST]' }}{% else %}{{ ' ' + message['content'] + eos_token }}"
    "{% endif %}{% endfor %}"
)
PHI3 = (
    "{% for message in messages %}{{ '<|' + message['role'] + '|>\\n' + message['content'] + '<|end|>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)

# family -> (text_config changes, the tokenizer's chat template: None = Vicuna, the released LLM)
FAMILIES = {
    "llama": ({}, None),
    "qwen2": ({"num_key_value_heads": 2, "tie_word_embeddings": True}, CHATML),
    "qwen3": ({"num_key_value_heads": 2, "head_dim": 16}, CHATML),
    "mistral": ({"num_key_value_heads": 2, "sliding_window": 64}, INST),
    "phi3": ({"num_key_value_heads": 2, "pad_token_id": 0}, PHI3),
}
QUESTION = "Where does the square go?"


def family_model(family: str, seed: int = 0) -> tuple[LlamaVidForConditionalGeneration, LlamaVidProcessor]:
    changes, chat_template = FAMILIES[family]
    kwargs = tiny_config_kwargs()
    kwargs["text_config"] = {**kwargs["text_config"], "model_type": family, **changes}
    config = LlamaVidConfig(**kwargs)
    torch.manual_seed(seed)
    model = LlamaVidForConditionalGeneration(config).eval()
    tokenizer = LlamaTokenizer.from_pretrained(str(DEMO_TOKENIZER_DIR))
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    return model, LlamaVidProcessor.from_config(config, tokenizer)


def video_batch(processor: LlamaVidProcessor, answer: str | None = None):
    video = moving_square_video(frames=3, size=56)
    messages = [
        {"role": "user", "content": [{"type": "video", "video": video}, {"type": "text", "text": QUESTION}]}
    ]
    if answer is not None:
        messages.append({"role": "assistant", "content": answer})
    return processor.apply_chat_template(
        messages, add_generation_prompt=answer is None, tokenize=True, return_dict=True
    )


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_family_forward_train_step(family):
    model, processor = family_model(family)
    assert type(model.model.language_model).__name__.lower().startswith(family)
    batch = video_batch(processor, answer="right")
    placeholders = int((batch["input_ids"] == IMAGE_TOKEN_INDEX).sum())
    assert placeholders == processor.num_visual_tokens(3)  # 3 frames x (1 context + 1 content)
    labels = batch["input_ids"].masked_fill(batch["input_ids"] < 0, -100)
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(4):
        loss = model(**batch, labels=labels).loss
        losses.append(float(loss.detach()))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0], losses
    # Visual tokens reach the LLM: gradients flow back into the projectors.
    loss = model(**batch, labels=labels).loss
    loss.backward()
    assert model.model.mm_projector[0].weight.grad.abs().sum() > 0
    assert model.model.vlm_att_val_projector.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_family_save_load_and_engine_answer(family, tmp_path):
    model, processor = family_model(family, seed=1)
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    loaded = LlamaVidForConditionalGeneration.from_pretrained(tmp_path).eval()
    reloaded_processor = LlamaVidProcessor.from_pretrained(tmp_path)
    assert loaded.config.text_config.model_type == family
    assert reloaded_processor.template == processor.template
    assert reloaded_processor.chat_template == processor.chat_template
    if model.config.tie_word_embeddings:
        assert loaded.lm_head.weight.data_ptr() == loaded.get_input_embeddings().weight.data_ptr()
    batch = video_batch(processor)
    with torch.no_grad():
        expected = model(**batch).logits
        found = loaded(**video_batch(reloaded_processor)).logits
    torch.testing.assert_close(found, expected)

    # The one generate path: Engine renders the prompt, computes the visual tokens and generates.
    engine = Engine(loaded, reloaded_processor)
    answer = engine.ask(moving_square_video(frames=3, size=56), QUESTION, temperature=0, max_new_tokens=5)
    assert answer.completion_tokens >= 1
    # The same greedy tokens as the model's own generate on the processor's batch.
    direct = loaded.generate(**batch, max_new_tokens=5, do_sample=False, pad_token_id=processor.pad_token_id)
    new_tokens = direct[0, batch["input_ids"].shape[1] :].tolist()
    assert answer.text == processor.decode(new_tokens)


@pytest.mark.parametrize("family", ["qwen2", "mistral", "phi3"])
def test_family_prompt_uses_the_tokenizer_chat_template(family):
    _, processor = family_model(family)
    assert processor.template == "tokenizer"
    messages = [{"role": "user", "content": "<image>\n" + QUESTION}]
    prompt = processor.apply_chat_template(messages)
    assert prompt == processor.tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True
    )
    # Content parts render as "<image>\n" + question, as with Vicuna.
    parts = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": QUESTION}]}]
    assert processor.apply_chat_template(parts) == prompt
    assert processor.default_question(prompt) == QUESTION
    ids = processor.prompt_ids(messages, num_frames=4)
    assert ids.count(IMAGE_TOKEN_INDEX) == processor.num_visual_tokens(4)
    # BOS comes from the template only (transformers' apply_chat_template does not add another).
    bos = processor.tokenizer.bos_token_id
    assert ids[:2].count(bos) == (1 if "bos_token" in processor.chat_template else 0)
    history = [
        {"role": "user", "content": "<image>\nWhat colour is it?"},
        {"role": "assistant", "content": "red"},
        {"role": "user", "content": QUESTION},
    ]
    assert processor.default_question(processor.apply_chat_template(history)) == QUESTION


def test_llama_keeps_vicuna_template():
    _, processor = family_model("llama")
    assert processor.template == "vicuna_v1"
    assert processor.apply_chat_template([{"role": "user", "content": "hi"}]).endswith("USER: hi ASSISTANT:")


@pytest.mark.parametrize(
    ("text_config", "named"),
    [
        ({"model_type": "t5"}, "encoder-decoder family 't5'"),
        ({"model_type": "bert"}, "encoder family 'bert'"),
        ({"model_type": "gemma3"}, "multimodal family 'gemma3'"),
    ],
)
def test_family_that_cannot_work_is_named(text_config, named):
    with pytest.raises(InvalidInputError, match=named):
        LlamaVidConfig(**tiny_config_kwargs(text_config=text_config))


def test_tokenizer_template_needs_a_chat_template():
    kwargs = tiny_config_kwargs()
    tokenizer = LlamaTokenizer.from_pretrained(str(DEMO_TOKENIZER_DIR))
    with pytest.raises(InvalidInputError, match="has none"):
        LlamaVidProcessor.from_config(LlamaVidConfig(**kwargs), tokenizer, template="tokenizer")


@pytest.mark.parametrize(
    ("family", "window"),
    [
        ("mistral", {"sliding_window": 8}),
        ("qwen2", {"use_sliding_window": True, "sliding_window": 8}),
        ("phi3", {}),
    ],
)
def test_cached_generation_equals_recomputation(family, window):
    """Greedy `generate` (visual tokens at prefill, then the family's KV cache, sliding windows included) gives
    the tokens a full recomputation without cache gives; also without an attention mask, where transformers
    would otherwise infer one that hides the visual positions."""
    changes, _ = FAMILIES[family]
    kwargs = tiny_config_kwargs()
    kwargs["text_config"] = {**kwargs["text_config"], "model_type": family, **changes, **window}
    torch.manual_seed(0)
    model = LlamaVidForConditionalGeneration(LlamaVidConfig(**kwargs)).eval()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # input-sensitive weights: the default init answers every prompt alike
        for parameter in model.parameters():
            if parameter.ndim >= 2:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
    ids = torch.randint(3, 400, (1, 24), generator=generator)
    ids[0, 4:8] = IMAGE_TOKEN_INDEX  # a prompt longer than the window, visual tokens early
    visual = torch.randn(4, 32, generator=generator)
    generated = model.generate(input_ids=ids, visual_tokens=visual, max_new_tokens=5, do_sample=False)
    sequence = ids
    with torch.no_grad():
        for _ in range(5):
            logits = model(input_ids=sequence, visual_tokens=visual, use_cache=False).logits[0, -1]
            sequence = torch.cat([sequence, logits.argmax().view(1, 1)], dim=1)
    assert generated[0, 24:].tolist() == sequence[0, 24:].tolist()
