"""Run by `torchrun --nproc_per_node 2` from test_distributed.py: a few sharded steps, then report evidence.

Writes ``result_rank{r}.json`` with the losses, local vs full parameter/optimizer-state sizes (the proof that
something is sharded) and whether weights loaded before sharding came through intact.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/ for tiny_helpers
sys.path.insert(0, str(Path(__file__).resolve().parent))

from train_helpers import tiny_run_config  # noqa: E402

from llamavid.train.recipe import TrainingRecipe  # noqa: E402


def _full(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor


def _local(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor


def main() -> None:
    strategy, out, data, weights = sys.argv[1], Path(sys.argv[2]), sys.argv[3], sys.argv[4]
    distributed = {"strategy": strategy}
    if strategy.startswith("deepspeed"):
        strategy, _, stage = strategy.partition(":")
        distributed = {"strategy": strategy, "deepspeed_config": stage or "zero2"}
        if not torch.cuda.is_available():
            import deepspeed.ops

            # DeepSpeed JIT-compiles a shared-memory CPU all-reduce (about a minute on a fresh 2-core machine);
            # plain gloo collectives are enough for a 2-step test.
            deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    cfg = tiny_run_config(out, [data], distributed=distributed, model={"load_weights": [weights]})
    cfg.train.max_steps, cfg.train.per_device_batch_size = 2, 1
    recipe = TrainingRecipe(cfg)
    recipe.setup()
    rank = recipe.rank
    from safetensors.torch import load_file

    expected = load_file(weights)
    module = recipe.engine.module if recipe.engine is not None else recipe.model
    params = dict(module.named_parameters())
    if recipe.engine is not None and recipe.engine.zero_optimization_stage() == 3:
        import deepspeed

        with deepspeed.zero.GatheredParameters([params[name] for name in expected]):
            loaded_ok = all(
                torch.equal(params[name].detach().cpu(), tensor) for name, tensor in expected.items()
            )
    else:
        loaded_ok = all(
            torch.equal(_full(params[name]).detach().cpu(), tensor) for name, tensor in expected.items()
        )
    trainable = [p for p in module.parameters() if p.requires_grad]
    result = {
        "rank": rank,
        "world": dist.get_world_size(),
        "loaded_before_sharding_ok": loaded_ok,
        "param_local": sum(_local(p).numel() for p in trainable),
        "param_full": sum(p.numel() for p in trainable),
    }
    losses = recipe.train()
    result["losses"] = losses
    if strategy == "deepspeed":
        optimizer = recipe.engine.optimizer
        result["zero_stage"] = recipe.engine.zero_optimization_stage()
        if result["zero_stage"] == 3:
            result["param_local"] = sum(p.ds_tensor.numel() for p in trainable)
            result["param_full"] = sum(p.ds_numel for p in trainable)
            result["optim_local"] = sum(p.numel() for p in optimizer.fp32_partitioned_groups_flat)
        else:
            result["optim_local"] = sum(p.numel() for p in optimizer.single_partition_of_fp32_groups)
    else:
        state = recipe.optimizer.state
        result["optim_local"] = sum(_local(s["exp_avg"]).numel() for s in state.values())
    result["optim_full"] = result["param_full"]
    recipe.save_checkpoint()
    recipe.cleanup()
    (out / f"result_rank{rank}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main()
