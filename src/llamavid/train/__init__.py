"""Training: one recipe (`recipe.TrainingRecipe`), typed run configs (`schema`), data (`datasets`, `collate`).

Stages are configs, not copies of the loop (STYLE Part 2): ``configs/stage1_align.yaml``,
``stage2_instruct.yaml``, ``stage3_long_video.yaml`` and ``tiny_debug.yaml`` all run the same recipe.
"""

from llamavid.train.schema import ConfigError, RunConfig, load_config

__all__ = ["ConfigError", "RunConfig", "load_config"]
