"""LLaMA-VID on vLLM: an out-of-tree model plugin (docs/vllm.md).

vLLM calls `register` in every process it starts (entry-point group ``vllm.general_plugins``), so
``vllm serve <llamavid folder>`` and ``vllm.LLM(<llamavid folder>)`` find the model without any flag. The plugin
reuses llamavid's pieces rather than copying them: `LlamaVidProcessor` lays out the prompt, `llamavid.data`
decodes the media at 1 fps, `llamavid.data.FeatureCache` keeps the EVA features of every video across requests,
and `LlamaVidModel.get_visual_tokens` computes each request's context tokens from them; only the LLM is vLLM's
own Llama.

Nothing here is imported by the rest of llamavid, and this module itself imports neither vLLM nor torch, so the
package works without vLLM installed.
"""

from __future__ import annotations

ARCHITECTURE = "LlamaVidForConditionalGeneration"
# Name of the vLLM video-loader backend that hands the encoded bytes to our processor undecoded
# (``--media-io-kwargs '{"video": {"video_backend": "llamavid"}}'`` or ``VLLM_VIDEO_LOADER_BACKEND=llamavid``).
VIDEO_LOADER_BACKEND = "llamavid"

__all__ = ["ARCHITECTURE", "VIDEO_LOADER_BACKEND", "register"]


def register() -> None:
    """Register LLaMA-VID with vLLM (the ``vllm.general_plugins`` entry point).

    The model class is registered by module path, so vLLM imports it only when a llamavid folder is loaded.
    The configuration class is registered with transformers here because vLLM reads ``config.json`` through
    ``AutoConfig`` before it imports any model. The ``llamavid`` video loader and the renderer that passes the
    prompt text to our processor are registered too (`llamavid.vllm.media`, `llamavid.vllm.renderer`).
    """
    from vllm import ModelRegistry
    from vllm.renderers.registry import RENDERER_REGISTRY

    import llamavid.model  # noqa: F401  (registers model_type "llama_vid" with transformers' Auto classes)
    from llamavid.vllm.media import register_video_loader

    if ARCHITECTURE not in ModelRegistry.get_supported_archs():
        ModelRegistry.register_model(ARCHITECTURE, "llamavid.vllm.model:LlamaVidForConditionalGeneration")
    register_video_loader()
    # vLLM's HF renderer plus one step for llamavid folders only (see llamavid.vllm.renderer); set directly, as
    # `register` would log an "overwritten" warning for every model.
    RENDERER_REGISTRY.renderers["hf"] = ("llamavid.vllm.renderer", "LlamaVidHfRenderer")
