"""vLLM's HF renderer, passing a LLaMA-VID prompt's text on to the multimodal processor.

vLLM hands a multimodal processor the prompt as token ids of the whole rendered string. LLaMA-VID needs the text
itself: its prompt is tokenised chunk by chunk between ``<image>`` markers (docs/architecture.md, section 3) and
the question in it is re-tokenised for the Q-Former, which token ids of another tokenizer cannot give back (the
embedded tiny model's word-level vocabulary maps unknown words to ``<unk>``). This renderer adds the text to the
request's ``mm_processor_kwargs`` under `PROMPT_KEY`; the processor takes it out again before anything is hashed.
For every other model it is vLLM's renderer unchanged.
"""

from __future__ import annotations

from typing import Any

from vllm.renderers.hf import HfRenderer

__all__ = ["PROMPT_KEY", "LlamaVidHfRenderer"]

PROMPT_KEY = "llamavid_prompt"


class LlamaVidHfRenderer(HfRenderer):
    def _with_prompt_text(self, prompt: Any) -> Any:
        hf_config = getattr(self.model_config, "hf_config", None)
        if (
            getattr(hf_config, "model_type", None) != "llama_vid"
            or not prompt.get("multi_modal_data")
            or not isinstance(prompt.get("prompt"), str)
        ):
            return prompt
        prompt = dict(prompt)
        prompt["mm_processor_kwargs"] = {
            **(prompt.get("mm_processor_kwargs") or {}),
            PROMPT_KEY: prompt["prompt"],
        }
        return prompt

    def _process_tokens(self, prompt: Any, *, skip_mm_cache: bool = False) -> Any:
        return super()._process_tokens(self._with_prompt_text(prompt), skip_mm_cache=skip_mm_cache)

    async def _process_tokens_async(self, prompt: Any, *, skip_mm_cache: bool = False) -> Any:
        return await super()._process_tokens_async(
            self._with_prompt_text(prompt), skip_mm_cache=skip_mm_cache
        )
