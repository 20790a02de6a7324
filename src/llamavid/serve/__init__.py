"""Serving: one engine (`llamavid.serve.engine.Engine`) behind thin front-ends.

The CLI (`llamavid.cli`), the Python API (`llamavid.api`), the OpenAI-compatible server (`llamavid.serve.api`)
and the web UI (`llamavid.serve.webui`) all go through the engine, so a generation fix lands everywhere at
once (STYLE §3.7). Nothing is imported here, so ``llamavid --help`` does not load torch.
"""
