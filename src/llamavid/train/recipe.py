"""The one training loop for every LLaMA-VID stage (torchtune-style recipe class).

``TrainingRecipe(cfg)`` -> ``setup()`` -> ``train()`` -> ``save_checkpoint()`` -> ``cleanup()``. Stages differ only
in their YAML (data, template, max length, trainable modules); see ``configs/``.

Why a plain torch loop and not `accelerate.Accelerator` / the HF Trainer:

* order matters for sharded training: every weight (checkpoint, stage-1 projector file, resume state) is loaded
  into the full model *before* FSDP2 / DeepSpeed shard it. The official code loaded the Q-Former after ZeRO-3 had
  partitioned the parameters and silently trained from random weights; here that ordering is explicit code;
* accelerate's FSDP silently becomes DDP on CPU (no test could then prove sharding), while raw
  ``torch.distributed.fsdp.fully_shard`` runs everywhere;
* exact resume (same next loss as an uninterrupted run) needs control of data order, RNG state and the step
  counter, which is simplest when the loop is ours.

Device and process group come from the torchrun environment (``WORLD_SIZE``/``LOCAL_RANK``; NCCL on CUDA, gloo on
CPU); mixed precision is ``torch.autocast`` (bf16 where supported) with fp32 master weights, or DeepSpeed's own
bf16/fp16 under ``strategy: deepspeed``.

Checkpoints (``output_dir/checkpoints/step_XXXXXXX``) hold the *trainable* parameters (``trainable.safetensors``,
full tensors gathered from shards), the optimizer and scheduler state (``optimizer.pt``/``scheduler.pt``, tensors
and plain containers only: read back with ``torch.load(weights_only=True)``), the loop counters and per-rank RNG
state; frozen weights are rebuilt from ``model.init``. They are written to a temporary folder and renamed, and
``output_dir/latest`` is replaced atomically, so a kill at any moment leaves the previous checkpoint usable.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from llamavid.errors import LlamaVidRuntimeError, MissingFileError
from llamavid.model.configuration_llamavid import IGNORE_INDEX
from llamavid.model.conversation import TOKENIZER_TEMPLATE
from llamavid.train.collate import LlamaVidCollator, without_trailing_padding_mask
from llamavid.train.datasets import LlavaJsonDataset
from llamavid.train.schema import ConfigError, RunConfig, packaged_config_dir

logger = logging.getLogger(__name__)

# Trainable modules per stage (docs/architecture.md §9). EVA and whatever the checkpoint's `bert_type` freezes are removed from
# these afterwards (`frozen_module_names`), so the stage-2 "everything" excludes the vision tower.
STAGE_TRAINABLE: dict[int, tuple[str, ...]] = {
    1: (
        "model.mm_projector",
        "model.vlm_att_projector",
        "model.vlm_att_key_projector",
        "model.vlm_att_val_projector",
    ),
    2: ("model", "lm_head"),
    3: ("model.language_model", "lm_head", "model.mm_projector"),
}
LLM_PREFIXES = ("model.language_model", "lm_head")
# What the official stage-1 saver kept in mm_projector.bin (docs/checkpoints.md): stage 2 starts from it.
ADAPTER_KEYS = ("mm_projector", "vlm_att")
CHECKPOINT_PREFIX = "step_"
TRAINABLE_FILE = "trainable.safetensors"


@dataclass
class TrainState:
    """Loop counters saved with every checkpoint."""

    global_step: int = 0  # optimizer steps done
    epoch: int = 0
    batches_done_in_epoch: int = 0  # micro-batches of `epoch` already consumed (per rank)
    losses: list[float] = field(default_factory=list)


def _is_under(name: str, prefixes: tuple[str, ...] | list[str]) -> bool:
    return any(name == prefix or name.startswith(prefix + ".") for prefix in prefixes)


def _strip_wrappers(name: str) -> str:
    """Parameter name without DDP / PEFT / torch.compile prefixes, for matching stage module names."""
    for prefix in ("module.", "_orig_mod.", "base_model.model."):
        if name.startswith(prefix):
            name = name[len(prefix) :]
    return name


def _walk(node: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """``(dotted key, value)`` for every leaf of a nested dict."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _walk(value, f"{prefix}.{key}" if prefix else str(key))
    else:
        yield prefix, node


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def context_positions(model: Any) -> int:
    """Positions the model's LLM attends to (`llamavid.inference.budget.context_limit`)."""
    from llamavid.inference.budget import context_limit

    return context_limit(model.config.text_config)


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder, or a run's ``output_dir`` (then its ``latest`` checkpoint).

    Raises:
        FileNotFoundError: nothing to resume from there.
    """
    path = Path(path)
    if (path / "trainer_state.json").is_file():
        return path
    latest = path / "latest"
    if latest.is_file():
        candidate = path / "checkpoints" / latest.read_text().strip()
        if (candidate / "trainer_state.json").is_file():
            return candidate
    raise MissingFileError(
        f"{path} is neither a checkpoint folder (with trainer_state.json) nor a run folder with a 'latest' "
        "checkpoint; pass train.output_dir of an earlier run or one of its checkpoints/step_* folders."
    )


def resolve_deepspeed_config(name: str) -> Path:
    """A DeepSpeed JSON path, or a packaged name (``zero2``, ``zero2_offload``, ``zero3``)."""
    path = Path(name)
    if path.is_file():
        return path
    packaged = packaged_config_dir() / (path.name if path.suffix == ".json" else f"{path.name}.json")
    if packaged.is_file():
        return packaged
    raise MissingFileError(
        f"DeepSpeed config {name!r} not found; use zero2, zero2_offload, zero3 or a JSON path."
    )


def lr_lambda(total_steps: int, warmup_steps: int, kind: str):
    """Linear warmup then cosine / linear decay to 0 or constant, as the HF schedulers the paper used."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return float(step) / float(max(1, warmup_steps))
        if kind == "constant":
            return 1.0
        progress = float(step - warmup_steps) / float(max(1, total_steps - warmup_steps))
        if kind == "linear":
            return max(0.0, 1.0 - progress)
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))

    return factor


def _non_default_losses(losses: Any) -> Any:
    """A phase's saved ``losses`` settings without the fields at their default value, so that a loss added to
    :class:`~llamavid.train.losses.LossSettings` later (e.g. ``count``) does not make older phases differ."""
    if not isinstance(losses, dict):
        return losses
    from dataclasses import asdict

    from llamavid.train.losses import LossSettings

    defaults = json.loads(json.dumps(asdict(LossSettings())))
    return {key: value for key, value in losses.items() if key not in defaults or value != defaults[key]}


class _BatchSampler:
    """Seeded per-epoch permutation, split across ranks, starting at a given batch (resume without decoding).

    Every rank yields the same number of batches (the remainder that does not split evenly is dropped), so
    collective operations (FSDP all-gathers, DeepSpeed reductions) never wait on a rank that ran out of data.
    """

    def __init__(self, size: int, batch_size: int, seed: int, rank: int, world: int) -> None:
        self.size, self.batch_size, self.seed, self.rank, self.world = size, batch_size, seed, rank, world
        self.epoch = 0
        self.start_batch = 0

    def batches_per_epoch(self) -> int:
        return math.ceil((self.size // self.world) / self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(self.size, generator=generator).tolist()
        per_rank = self.size // self.world
        mine = order[self.rank * per_rank : (self.rank + 1) * per_rank]
        for start in range(self.start_batch * self.batch_size, len(mine), self.batch_size):
            yield mine[start : start + self.batch_size]

    def __len__(self) -> int:
        return self.batches_per_epoch() - self.start_batch


class TrainingRecipe:
    """Full or LoRA fine-tuning of LLaMA-VID for one stage (see the module docstring).

    Args:
        cfg: the validated run configuration.
        resume_from: a run folder or checkpoint folder to continue from (``llamavid train ... --resume DIR``).
    """

    def __init__(self, cfg: RunConfig, resume_from: str | Path | None = None) -> None:
        self.cfg = cfg
        self.resume_from = resume_from
        self.output_dir = Path(cfg.train.output_dir)
        self.state = TrainState()
        self.strategy = cfg.distributed.strategy
        # Any: a plain module, a DDP / FSDP2 / PEFT wrapper or a DeepSpeed engine, depending on the strategy.
        self.model: Any = None
        self.engine: Any = None  # DeepSpeed engine
        self.optimizer: Any = None
        self.scheduler: Any = None
        self.peft = False
        self._owns_process_group = False
        self._last_batch: dict[str, Any] | None = None
        self.skipped_batches = 0
        # A tiny-model phase (data.tiny, docs/tiny-model.md): its data, loss terms and training-only heads.
        self.tiny: Any = None
        self.tiny_phase: Any = None
        self.tiny_curriculum: Any = None
        self.aux_heads: Any = None
        self.tiny_loss: Any = None
        self._loss_terms: dict[str, float] = {}
        # LLaVA JSON (LlavaJsonDataset, LlamaVidCollator, _BatchSampler) or a tiny phase's mixture (tiny_phase).
        self.dataset: Any = None
        self.collator: Any = None
        self.sampler: Any = None
        if cfg.data.tiny:
            resume = self._read_tiny_phase()
            if resume and resume_from is None and (self.output_dir / "latest").is_file():
                logger.info("data.tiny.resume: continuing %s from its latest checkpoint", self.output_dir)
                self.resume_from = self.output_dir

    # Setup ------------------------------------------------------------------------------------------------------
    def setup(self) -> None:
        """Process group and device, model (weights loaded before sharding), data, optimizer, resume state."""
        self._setup_distributed()
        torch.manual_seed(self.cfg.train.seed + self.rank)
        resume_dir = resolve_checkpoint(self.resume_from) if self.resume_from else None
        self._setup_model()
        if self.tiny is not None:
            self._setup_aux_heads()
        if resume_dir is not None:
            self._load_trainable(resume_dir)
        self._setup_data()
        self._setup_optimizer()
        if resume_dir is not None:
            self._load_training_state(resume_dir)
        if self.is_main:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            (self.output_dir / "run_config.json").write_text(json.dumps(self.cfg.to_dict(), indent=2) + "\n")
            self._truncate_metrics()

    def _setup_distributed(self) -> None:
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if torch.cuda.is_available():
            self.device = torch.device("cuda", local_rank)
            torch.cuda.set_device(self.device)
        elif (
            getattr(torch.backends, "mps", None) is not None
            and torch.backends.mps.is_available()
            and self.world_size == 1
        ):
            self.device = torch.device("mps")
        else:
            self.device = torch.device("cpu")
        if self.world_size > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")
            self._owns_process_group = True
        if self.strategy in ("fsdp2", "deepspeed", "ddp") and self.world_size == 1:
            logger.info(
                "strategy %s with one process: it runs, but nothing is sharded or replicated.", self.strategy
            )
        precision = self.cfg.train.precision
        if precision == "auto":
            bf16_ok = self.device.type == "cuda" and torch.cuda.is_bf16_supported()
            precision = "bf16" if bf16_ok else "fp32"
        if precision == "fp16" and self.strategy != "deepspeed":
            raise ConfigError(
                "train.precision=fp16 needs distributed.strategy=deepspeed (loss scaling); use bf16."
            )
        self.precision = precision

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def _barrier(self) -> None:
        if dist.is_initialized():
            dist.barrier()

    def _build_model(self) -> tuple[Any, Any]:
        from transformers import AutoTokenizer, LlamaTokenizer

        from llamavid.model import LlamaVidConfig, LlamaVidForConditionalGeneration, LlamaVidProcessor

        mcfg = self.cfg.model
        if mcfg.llm is not None:
            return self._build_from_llm()
        if self.tiny is not None and mcfg.init == "random":
            return self._build_tiny_model()
        if mcfg.init == "random":
            config = LlamaVidConfig(**{**mcfg.random_init, **mcfg.config_overrides})
        else:
            config = LlamaVidConfig.from_pretrained(mcfg.init)
            for key, value in mcfg.config_overrides.items():
                if not hasattr(config, key):
                    raise ConfigError(f"model.config_overrides: LlamaVidConfig has no field {key!r}.")
                setattr(config, key, value)
            config._check_settings()
        self._apply_rope_scaling(config)
        if mcfg.attn_implementation:
            config._attn_implementation = mcfg.attn_implementation
        torch.manual_seed(mcfg.seed)
        if mcfg.init == "random":
            model = LlamaVidForConditionalGeneration(config)
        else:
            kwargs: dict[str, Any] = {"config": config, "dtype": torch.float32}
            if self.cfg.lora.quantize:
                kwargs["quantization_config"] = self._quantization_config()
            model = LlamaVidForConditionalGeneration.from_pretrained(mcfg.init, **kwargs)
        tokenizer_source = mcfg.tokenizer or (mcfg.init if mcfg.init != "random" else None)
        if tokenizer_source in (None, "demo"):
            from llamavid.assets import DEMO_TOKENIZER_DIR

            tokenizer = LlamaTokenizer.from_pretrained(str(DEMO_TOKENIZER_DIR))
        else:
            tokenizer = AutoTokenizer.from_pretrained(tokenizer_source)
        if tokenizer.pad_token_id is None and tokenizer.unk_token_id is not None:
            tokenizer.pad_token = tokenizer.unk_token  # official: pad = unk (docs/architecture.md §3)
        init_dir = Path(mcfg.init) if mcfg.init != "random" else None
        if init_dir is not None and (init_dir / "processor_config.json").is_file() and mcfg.tokenizer is None:
            processor = LlamaVidProcessor.from_pretrained(init_dir)
        else:
            processor = LlamaVidProcessor.from_config(
                config,
                tokenizer,
                image_aspect_ratio=self.cfg.data.image_aspect_ratio,
                template=self.cfg.template,
            )
        processor.image_processor.image_aspect_ratio = self.cfg.data.image_aspect_ratio
        return model, processor

    def _build_from_llm(self) -> tuple[Any, Any]:
        """A new LLaMA-VID around ``model.llm`` (docs/llms.md): its tokenizer, its chat template for inference."""
        from llamavid.model import LlamaVidProcessor
        from llamavid.model.processing_llamavid import tokenizer_adds_bos
        from llamavid.train.from_llm import build_from_llm, load_llm

        mcfg = self.cfg.model
        assert mcfg.llm is not None
        llm, tokenizer = load_llm(mcfg.llm)
        model = build_from_llm(
            {**mcfg.random_init, **mcfg.config_overrides}, llm, vision=mcfg.vision, seed=mcfg.seed
        )
        del llm
        if self.cfg.train.rope_scaling == "auto" and self.cfg.data.model_max_length > context_positions(
            model
        ):
            raise ConfigError(
                f"data.model_max_length {self.cfg.data.model_max_length} exceeds the {context_positions(model)} "
                "positions of model.llm; lower it (RoPE scaling of a pretrained LLM is a stage-3 step)."
            )
        if mcfg.attn_implementation:
            model.config._attn_implementation = mcfg.attn_implementation
        if tokenizer.pad_token_id is None:
            fallback = tokenizer.unk_token if tokenizer.unk_token is not None else tokenizer.eos_token
            tokenizer.pad_token = fallback
        # Prompts at inference use the LLM's own chat template (Vicuna's when it has none); training data
        # still follows data.template (stage 1: plain_guided captions).
        processor = LlamaVidProcessor.from_config(
            model.config,
            tokenizer,
            image_aspect_ratio=self.cfg.data.image_aspect_ratio,
            add_bos=tokenizer_adds_bos(tokenizer),
        )
        return model, processor

    def _apply_rope_scaling(self, config: Any) -> None:
        """Linear RoPE scaling when ``model_max_length`` exceeds the LLM's positions (official stage 3, docs/architecture.md §6)."""
        if self.cfg.train.rope_scaling != "auto":
            return
        text = config.text_config
        params = dict(getattr(text, "rope_parameters", None) or {})
        current = float(params.get("factor", 1.0)) if params.get("rope_type", "default") != "default" else 1.0
        positions = text.max_position_embeddings
        wanted = self.cfg.data.model_max_length
        if wanted > positions * current:
            factor = float(math.ceil(wanted / positions))
            params.update({"rope_type": "linear", "factor": factor})
            params.setdefault("rope_theta", 10000.0)
            text.rope_parameters = params
            logger.info(
                "model_max_length %d > %d positions: linear RoPE scaling, factor %g.",
                wanted,
                positions,
                factor,
            )

    def _quantization_config(self) -> Any:
        from transformers import BitsAndBytesConfig

        skip = ["vision_tower", "vlm_att", "mm_projector", "lm_head"]
        if self.cfg.lora.quantize == "4bit":
            return BitsAndBytesConfig(
                load_in_4bit=True,
                bnb_4bit_quant_type="nf4",
                bnb_4bit_use_double_quant=True,
                bnb_4bit_compute_dtype=torch.bfloat16 if self.precision == "bf16" else torch.float32,
                llm_int8_skip_modules=skip,
            )
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip)

    def _load_weight_files(self, model: Any) -> None:
        """``model.load_weights`` files into the *unsharded* model (stage 1's projector/Q-Former for stage 2)."""
        from safetensors.torch import load_file

        for path in self.cfg.model.load_weights:
            if Path(path).suffix in (".bin", ".pth", ".pt"):
                # An official stage-1 `mm_projector.bin`: read with weights_only and renamed to our parameter names.
                from llamavid.model.convert_original_checkpoint import load_torch_file, rename_official_key

                raw = load_torch_file(path)
                renamed = {
                    rename_official_key(key, model.model.bert_variant): value for key, value in raw.items()
                }
                state = {key: value for key, value in renamed.items() if key is not None}
            else:
                state = load_file(str(path))
            result = model.load_state_dict(state, strict=False)
            if result.unexpected_keys:
                raise ConfigError(
                    f"model.load_weights {path}: {len(result.unexpected_keys)} tensors match no parameter "
                    f"(e.g. {result.unexpected_keys[:3]}); is this file from a model with the same architecture?"
                )
            logger.info("loaded %d tensors from %s", len(state), path)

    def trainable_prefixes(self, model: Any) -> tuple[list[str], list[str]]:
        """``(train, frozen)`` module prefixes for this stage; frozen wins (EVA, `bert_type` freezes)."""
        train = list(self.cfg.train.trainable or STAGE_TRAINABLE[self.cfg.train.stage])
        frozen = list(model.frozen_module_names())
        if self.cfg.train.stage in (1, 3) and self.cfg.train.trainable is None:
            # Stage 1 keeps the Q-Former frozen (`qformer_pretrain_freeze`), stage 3 the whole text decoder
            # (`qformer_pretrain_freeze_all`), whatever bert_type the checkpoint was saved with.
            frozen += ["model.vlm_att_encoder", "model.vlm_att_ln", "model.vlm_att_query"]
        modules = {name for name, _ in model.named_modules()} | {name for name, _ in model.named_parameters()}
        for prefix in train:
            if prefix not in modules:
                raise ConfigError(f"train.trainable: the model has no module or parameter named {prefix!r}.")
        return train, frozen

    def _setup_model(self) -> None:
        model, self.processor = self._build_model()
        self._load_weight_files(model)
        train, frozen = self.trainable_prefixes(model)
        for name, param in model.named_parameters():
            param.requires_grad_(_is_under(name, train) and not _is_under(name, frozen))
        if self.cfg.lora.enabled:
            model = self._apply_lora(model, train, frozen)
        if self.cfg.train.gradient_checkpointing:
            base = model.get_base_model() if self.peft else model
            base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            if hasattr(base, "enable_input_require_grads") and self.peft:
                base.enable_input_require_grads()
        model.to(self.device)
        model.train()
        self.trainable_names = [name for name, p in model.named_parameters() if p.requires_grad]
        if not self.trainable_names:
            raise ConfigError("no parameter is trainable with this stage / train.trainable setting.")
        count = sum(p.numel() for p in model.parameters() if p.requires_grad)
        total = sum(p.numel() for p in model.parameters())
        logger.info(
            "stage %d: %d / %d parameters trainable (%.2f%%)",
            self.cfg.train.stage,
            count,
            total,
            100 * count / total,
        )
        self.model = model

    def _apply_lora(self, model: Any, train: list[str], frozen: list[str]) -> Any:
        try:
            from peft import LoraConfig, get_peft_model
        except ImportError:
            raise ConfigError(
                "lora.enabled needs PEFT: pip install 'llamavid[train]' (or pip install peft)."
            ) from None
        lcfg = self.cfg.lora
        if self.cfg.lora.quantize:
            from peft import prepare_model_for_kbit_training

            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
        names = "|".join(lcfg.target_modules)
        peft_config = LoraConfig(
            r=lcfg.r,
            lora_alpha=lcfg.alpha,
            lora_dropout=lcfg.dropout,
            # Only the LLM's layers: the Q-Former has its own "query"/"value" Linears that must not be adapted.
            target_modules=rf"model\.language_model\..*\.({names})",
            bias="none",
        )
        model = get_peft_model(model, peft_config)
        self.peft = True
        # PEFT froze everything but the adapters; re-enable this stage's non-LLM modules (e.g. mm_projector).
        for name, param in model.named_parameters():
            plain = _strip_wrappers(name)
            if "lora_" in name:
                continue
            if (
                _is_under(plain, train)
                and not _is_under(plain, frozen)
                and not _is_under(plain, LLM_PREFIXES)
            ):
                param.requires_grad_(True)
        return model

    def _synth_files(self) -> list[str]:
        """Generate the ``data.synth`` dataset (rank 0 writes, the others wait) and return its JSON path."""
        synth = dict(self.cfg.data.synth)
        if not synth:
            return []
        from llamavid.synth import write_dataset

        folder = self.output_dir / "synth_data"
        split = synth.pop("split", "train")
        if "clip_frames" in synth and isinstance(synth["clip_frames"], list):
            synth["clip_frames"] = tuple(synth["clip_frames"])
        path = None
        if self.is_main:
            try:
                path = write_dataset(folder, split, **synth)
            except TypeError as error:
                raise ConfigError(
                    f"data.synth: {error} (keys are llamavid.synth.write_dataset arguments)."
                ) from None
        self._barrier()
        if path is None:
            seed = synth.get("seed", 0)
            path = folder / f"{split}_{synth.get('kind', 'image_qa')}_s{seed}.json"
        return [str(path)]

    def _setup_data(self) -> None:
        if self.tiny is not None:
            self._setup_tiny_data()
            return
        dcfg = self.cfg.data
        self.dataset = LlavaJsonDataset(
            self._synth_files() + list(dcfg.train_files),
            self.processor.tokenizer,
            self.cfg.template,
            image_folder=dcfg.image_folder,
            video_folder=dcfg.video_folder,
            video_fps=dcfg.video_fps,
            max_frames=dcfg.max_frames,
            long_video_max_frames=dcfg.long_video_max_frames,
            seed=self.cfg.train.seed,
            validate=dcfg.validate,
            add_bos=self.processor.add_bos,
            chat_render=(
                self.processor.render_with_tokenizer_template
                if self.cfg.template == TOKENIZER_TEMPLATE
                else None
            ),
        )
        self.collator = LlamaVidCollator(self.processor, dcfg.model_max_length, dcfg.overlong)
        self.sampler = _BatchSampler(
            len(self.dataset),
            self.cfg.train.per_device_batch_size,
            self.cfg.train.seed,
            self.rank,
            self.world_size,
        )
        per_epoch = self.sampler.batches_per_epoch()
        accum = self.cfg.train.grad_accum_steps
        if per_epoch < accum:
            raise ConfigError(
                f"{len(self.dataset)} samples give {per_epoch} micro-batches per process per epoch, fewer than "
                f"train.grad_accum_steps={accum}; add data or lower the batch size / accumulation."
            )
        # Micro-batches that cannot fill a last accumulation group are dropped (same on every rank).
        self.steps_per_epoch = per_epoch // accum
        self.batches_per_epoch = self.steps_per_epoch * accum
        self.total_steps = self.cfg.train.max_steps or self.steps_per_epoch * self.cfg.train.num_epochs

    def _setup_optimizer(self) -> None:
        ocfg = self.cfg.optim
        model = self.model
        assert model is not None
        if self.strategy == "fsdp2":
            model = self._shard_fsdp2(model)
        elif self.world_size > 1 and self.strategy in ("none", "ddp"):
            from torch.nn.parallel import DistributedDataParallel

            model = DistributedDataParallel(
                model,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=True,
            )
        if self.tiny is not None:
            groups = self._tiny_param_groups(model)
        else:
            params = [p for p in model.parameters() if p.requires_grad]
            decay = [p for p in params if p.ndim >= 2]
            no_decay = [p for p in params if p.ndim < 2]
            groups = [
                {"params": decay, "weight_decay": ocfg.weight_decay},
                {"params": no_decay, "weight_decay": 0.0},
            ]
            groups = [g for g in groups if g["params"]]
        # On the CPU torch's default AdamW loops over the tensors one by one; its fused kernel does the same update
        # about 4x faster (the tiny model: 7 ms against 27 ms a step). Other devices and sharded runs keep the default.
        fused = True if self.device.type == "cpu" and self.strategy in ("none", "ddp") else None
        optimizer = torch.optim.AdamW(
            groups, lr=ocfg.lr, betas=(ocfg.betas[0], ocfg.betas[1]), eps=ocfg.eps, fused=fused
        )
        if self.tiny is not None:
            scheduler = self._tiny_scheduler(optimizer)
        else:
            warmup = math.ceil(self.total_steps * ocfg.warmup_ratio)
            scheduler = torch.optim.lr_scheduler.LambdaLR(
                optimizer, lr_lambda(self.total_steps, warmup, ocfg.scheduler)
            )
        if self.strategy == "deepspeed":
            import deepspeed

            ds_config = self._deepspeed_config()
            engine, optimizer, _, scheduler = deepspeed.initialize(
                model=model, optimizer=optimizer, lr_scheduler=scheduler, config=ds_config
            )
            self.engine = engine
            model = engine
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler

    def _shard_fsdp2(self, model: Any) -> Any:
        """``fully_shard`` each transformer block, then the root; weights are already loaded (load-then-shard)."""
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        base = model.get_base_model() if self.peft else model
        # The class attribute: transformers widens the instance's list with nested sub-blocks at load time.
        block_names = set(getattr(type(base), "_no_split_modules", None) or [])
        reshard = self.cfg.distributed.fsdp_reshard_after_forward
        policy = (
            MixedPrecisionPolicy(param_dtype=torch.bfloat16)
            if self.precision == "bf16"
            else MixedPrecisionPolicy()
        )
        sharded: list[str] = []
        for name, module in model.named_modules():
            if type(module).__name__ in block_names and not _is_under(name, sharded):
                fully_shard(module, reshard_after_forward=reshard, mp_policy=policy)
                sharded.append(name)
        fully_shard(model, reshard_after_forward=reshard, mp_policy=policy)
        return model

    def _deepspeed_config(self) -> dict[str, Any]:
        """The DeepSpeed JSON with its ``"auto"`` values filled from the run config (as the HF Trainer does)."""
        path = resolve_deepspeed_config(self.cfg.distributed.deepspeed_config or "")
        config = json.loads(path.read_text())
        tcfg = self.cfg.train
        fills = {
            "train_micro_batch_size_per_gpu": tcfg.per_device_batch_size,
            "gradient_accumulation_steps": tcfg.grad_accum_steps,
            "train_batch_size": tcfg.per_device_batch_size * tcfg.grad_accum_steps * self.world_size,
            "gradient_clipping": self.cfg.optim.max_grad_norm,
        }
        for key, value in fills.items():
            if config.get(key, "auto") == "auto":
                config[key] = value
        for key, enabled in (("bf16", self.precision == "bf16"), ("fp16", self.precision == "fp16")):
            section = config.setdefault(key, {})
            if section.get("enabled", "auto") == "auto":
                section["enabled"] = enabled
        zero = config.get("zero_optimization", {})
        hidden = int(self._base_model().config.text_config.hidden_size)
        # The HF Trainer's fills for bucket sizes, scaled to the LLM width.
        for key, value in (
            ("reduce_bucket_size", hidden * hidden),
            ("stage3_prefetch_bucket_size", int(0.9 * hidden * hidden)),
            ("stage3_param_persistence_threshold", 10 * hidden),
        ):
            if zero.get(key) == "auto":
                zero[key] = value
        if "offload_optimizer" in zero and "optimizer" not in config:
            # We hand DeepSpeed torch's AdamW; allow it on offloaded states (DeepSpeedCPUAdam needs a compiled op).
            config.setdefault("zero_force_ds_cpu_optimizer", False)
        left = [key for key, value in _walk(config) if value == "auto"]
        if left:
            raise ConfigError(
                f"DeepSpeed config {path}: no value to fill 'auto' for {left}; set them explicitly."
            )
        config.setdefault("steps_per_print", 10**9)
        return config

    def _base_model(self) -> Any:
        model = self.model.module if hasattr(self.model, "module") else self.model
        return model.get_base_model() if self.peft else model

    # Resume -----------------------------------------------------------------------------------------------------
    def _load_trainable(self, checkpoint: Path) -> None:
        """Trainable weights of a checkpoint into the unsharded model (before FSDP/DeepSpeed wrap it)."""
        from safetensors.torch import load_file

        assert self.model is not None
        state = load_file(str(checkpoint / TRAINABLE_FILE))
        own = dict(self.model.named_parameters())
        missing = [name for name in self.trainable_names if name not in state]
        unknown = [name for name in state if name not in own]
        if missing or unknown:
            raise ConfigError(
                f"{checkpoint} does not match this run: {len(missing)} trainable parameters missing "
                f"(e.g. {missing[:2]}), {len(unknown)} unknown (e.g. {unknown[:2]}). Resume with the same stage, "
                "trainable modules and LoRA settings."
            )
        with torch.no_grad():
            for name, tensor in state.items():
                own[name].copy_(tensor.to(own[name].dtype))
        if self.aux_heads is not None:
            self._load_aux_heads(checkpoint, required=True)

    def _load_training_state(self, checkpoint: Path) -> None:
        meta = json.loads((checkpoint / "trainer_state.json").read_text())
        self.state = TrainState(
            global_step=meta["global_step"],
            epoch=meta["epoch"],
            batches_done_in_epoch=meta["batches_done_in_epoch"],
            losses=list(meta.get("losses", [])),
        )
        if meta.get("world_size", 1) != self.world_size:
            raise ConfigError(
                f"{checkpoint} was written by {meta.get('world_size')} processes but {self.world_size} are running; "
                "the data order per process would change. Resume with the same number of processes."
            )
        if self.engine is not None:
            self.engine.load_checkpoint(str(checkpoint / "deepspeed"), tag="state", load_module_strict=False)
        else:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

            optim_state = torch.load(checkpoint / "optimizer.pt", map_location="cpu", weights_only=True)
            if self.tiny is not None:  # see save_checkpoint
                self.optimizer.load_state_dict(optim_state)
            else:
                set_optimizer_state_dict(
                    self.model, self.optimizer, optim_state, options=StateDictOptions(full_state_dict=True)
                )
            self.scheduler.load_state_dict(torch.load(checkpoint / "scheduler.pt", weights_only=True))
        rng_path = checkpoint / f"rng_rank{self.rank}.pt"
        rng = torch.load(rng_path, weights_only=True)
        torch.set_rng_state(rng["cpu"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state(rng["cuda"], self.device)
        logger.info("resumed from %s at step %d", checkpoint, self.state.global_step)

    # Training ---------------------------------------------------------------------------------------------------
    def _autocast(self):
        if self.engine is not None or self.precision == "fp32":
            return nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def _to_device(self, batch: dict[str, Any]) -> dict[str, Any]:
        return {k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}

    def _loss(self, batch: dict[str, Any]) -> tuple[torch.Tensor, int]:
        """Mean next-token loss of a micro-batch and its supervised-token count.

        A batch whose samples were all skipped (over-long) re-runs the previous batch with weight 0: every rank
        still performs the same collectives, so sharded runs cannot hang on one rank's bad data.
        """
        weight = 1.0
        if batch is None or not bool((batch["labels"] != IGNORE_INDEX).any()):
            if self._last_batch is None:
                raise LlamaVidRuntimeError(
                    "the first batch has no usable sample (all over-long or without supervised tokens); "
                    "raise data.model_max_length or fix the data."
                )
            self.skipped_batches += 1
            batch, weight = self._last_batch, 0.0
        else:
            self._last_batch = batch
        if self.tiny is not None:
            return self._tiny_step_loss(batch)
        inputs = self._to_device({k: v for k, v in batch.items() if k != "sample_ids"})
        inputs = without_trailing_padding_mask(inputs)
        with self._autocast():
            output = self.model(**inputs)
        tokens = int((inputs["labels"][:, 1:] != IGNORE_INDEX).sum()) if weight else 0
        return output.loss.float() * weight, tokens

    def _loader(self) -> DataLoader:
        return DataLoader(
            self.dataset,
            batch_sampler=self.sampler,
            collate_fn=self.collator,
            num_workers=self.cfg.data.num_workers,
            persistent_workers=False,
        )

    def _step(self) -> float:
        """Clip, optimizer and scheduler step (non-DeepSpeed); returns the gradient norm before clipping."""
        max_norm = self.cfg.optim.max_grad_norm
        params = [p for p in self.model.parameters() if p.requires_grad]
        if self.tiny_loss is not None and self.tiny_loss.uses_heads:
            params += list(self.aux_heads.parameters())  # clipped together, as the heads share the loss
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm > 0 else float("inf"))
        if hasattr(norm, "full_tensor"):
            norm = norm.full_tensor()
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(norm)

    def _reduce_mean(self, value: float) -> float:
        if not dist.is_initialized():
            return value
        tensor = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor)
        return float(tensor) / self.world_size

    def train(self) -> list[float]:
        """Run until ``total_steps``; returns the per-step losses of this process's run (rank-averaged)."""
        from tqdm.auto import tqdm

        tcfg = self.cfg.train
        accum = tcfg.grad_accum_steps
        bar = tqdm(
            total=self.total_steps,
            initial=self.state.global_step,
            disable=not (self.is_main and tcfg.progress_bar),
            desc=f"stage {tcfg.stage}",
            dynamic_ncols=True,
        )
        start_time = time.perf_counter()
        run_losses: list[float] = []
        step_loss, step_tokens, micro = 0.0, 0, 0
        while self.state.global_step < self.total_steps:
            self.dataset.set_epoch(self.state.epoch)
            self.sampler.epoch = self.state.epoch
            self.sampler.start_batch = self.state.batches_done_in_epoch
            for batch in self._loader():
                if self.state.batches_done_in_epoch >= self.batches_per_epoch:
                    break
                boundary = (micro + 1) % accum == 0
                sync = boundary or self.engine is not None
                no_sync = getattr(self.model, "no_sync", None)
                context = (
                    no_sync()
                    if (not sync and no_sync is not None and self.strategy != "fsdp2")
                    else nullcontext()
                )
                if self.strategy == "fsdp2" and hasattr(self.model, "set_requires_gradient_sync"):
                    self.model.set_requires_gradient_sync(boundary)
                with context:
                    loss, tokens = self._loss(batch)
                    if self.engine is not None:
                        self.engine.backward(loss)
                        self.engine.step()
                    else:
                        (loss / accum).backward()
                step_loss += float(loss.detach()) / accum
                step_tokens += tokens
                micro += 1
                self.state.batches_done_in_epoch += 1
                if not boundary:
                    continue
                grad_norm = (
                    self._step() if self.engine is None else float(self.engine.get_global_grad_norm() or 0.0)
                )
                self.state.global_step += 1
                terms, self._loss_terms = self._loss_terms, {}
                loss_value = self._reduce_mean(step_loss)
                run_losses.append(loss_value)
                self.state.losses.append(loss_value)
                if self.is_main and self.state.global_step % tcfg.log_steps == 0:
                    self._log_metrics(
                        {
                            "step": self.state.global_step,
                            "epoch": self.state.epoch,
                            "loss": loss_value,
                            "lr": self.scheduler.get_last_lr()[0],
                            "grad_norm": grad_norm,
                            "supervised_tokens": step_tokens,
                            "skipped_batches": self.skipped_batches,
                            "elapsed_s": round(time.perf_counter() - start_time, 3),
                            **({"loss_terms": terms} if terms else {}),
                        }
                    )
                bar.update(1)
                bar.set_postfix(loss=f"{loss_value:.4f}")
                step_loss, step_tokens = 0.0, 0
                if self.tiny is not None:
                    self._tiny_eval()
                if tcfg.save_steps and self.state.global_step % tcfg.save_steps == 0:
                    self.save_checkpoint()
                if self.state.global_step >= self.total_steps:
                    break
            else:
                self.state.epoch += 1
                self.state.batches_done_in_epoch = 0
                continue
            if self.state.batches_done_in_epoch >= self.batches_per_epoch:
                self.state.epoch += 1
                self.state.batches_done_in_epoch = 0
        bar.close()
        return run_losses

    # Saving -----------------------------------------------------------------------------------------------------
    def _trainable_state(self) -> dict[str, torch.Tensor]:
        """Full (gathered) trainable tensors on CPU, keyed by parameter name; collective under FSDP/ZeRO-3."""
        if self.engine is not None:
            module = self.engine.module
            params = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
            if self.engine.zero_optimization_stage() == 3:
                import deepspeed

                with deepspeed.zero.GatheredParameters([p for _, p in params], modifier_rank=None):
                    return {n: p.detach().cpu().clone() for n, p in params}
            return {n: p.detach().cpu().clone() for n, p in params}
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        state: dict[str, Any] = get_model_state_dict(
            self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
        )
        wanted = set(self.trainable_names)
        return {name: tensor.detach().clone() for name, tensor in state.items() if name in wanted}

    def save_checkpoint(self) -> Path:
        """Write ``checkpoints/step_N`` atomically and point ``latest`` at it; also refresh the loss curve."""
        name = f"{CHECKPOINT_PREFIX}{self.state.global_step:07d}"
        final_dir = self.output_dir / "checkpoints" / name
        tmp_dir = self.output_dir / "checkpoints" / f".{name}.tmp"
        if self.is_main:
            shutil.rmtree(tmp_dir, ignore_errors=True)
            tmp_dir.mkdir(parents=True)
        self._barrier()
        trainable = self._trainable_state()
        if self.engine is not None:
            self.engine.save_checkpoint(str(tmp_dir / "deepspeed"), tag="state")
            optim_state = None
        elif self.tiny is not None:
            # One process, and the optimizer also holds the auxiliary heads, which are not the model's
            # parameters (get_optimizer_state_dict maps every parameter to a model name): the plain state dict.
            optim_state = self.optimizer.state_dict()
        else:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

            optim_state = get_optimizer_state_dict(
                self.model, self.optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
            )
        rng = {"cpu": torch.get_rng_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        torch.save(rng, tmp_dir / f"rng_rank{self.rank}.pt")
        if self.is_main:
            from safetensors.torch import save_file

            save_file({k: v.contiguous() for k, v in trainable.items()}, str(tmp_dir / TRAINABLE_FILE))
            if self.aux_heads is not None:
                self._save_aux_heads(tmp_dir)
            if optim_state is not None:
                torch.save(optim_state, tmp_dir / "optimizer.pt")
                torch.save(self.scheduler.state_dict(), tmp_dir / "scheduler.pt")
            meta = {
                "global_step": self.state.global_step,
                "epoch": self.state.epoch,
                "batches_done_in_epoch": self.state.batches_done_in_epoch,
                "total_steps": self.total_steps,
                "world_size": self.world_size,
                "stage": self.cfg.train.stage,
                "losses": self.state.losses,
            }
            (tmp_dir / "trainer_state.json").write_text(json.dumps(meta, indent=2) + "\n")
        self._barrier()
        if self.is_main:
            if final_dir.exists():
                shutil.rmtree(final_dir)
            os.replace(tmp_dir, final_dir)
            _atomic_write_text(self.output_dir / "latest", name + "\n")
            self._prune_checkpoints()
            self.plot_losses(self.output_dir / "loss_curve.png")
        self._barrier()
        return final_dir

    def _prune_checkpoints(self) -> None:
        limit = self.cfg.train.save_total_limit
        if not limit:
            return
        folders = sorted((self.output_dir / "checkpoints").glob(f"{CHECKPOINT_PREFIX}*"))
        for old in folders[:-limit]:
            shutil.rmtree(old, ignore_errors=True)

    def save_final(self) -> Path:
        """``output_dir/final``: ``save_pretrained`` weights (safetensors) + processor, the stage-1 style
        ``mm_projector.safetensors`` (projectors + Q-Former, what stage 2 loads), the LoRA adapter, the loss curve."""
        from safetensors.torch import save_file

        final = self.output_dir / "final"
        if self.engine is not None and self.engine.zero_optimization_stage() == 3:
            raise NotImplementedError(
                "final export under ZeRO-3: use the last checkpoint's trainable.safetensors."
            )
        state: dict[str, Any] | None = None
        if self.strategy == "fsdp2":
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

            state = get_model_state_dict(
                self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
            )
        if not self.is_main:
            self._barrier()
            return final
        final.mkdir(parents=True, exist_ok=True)
        module = self.engine.module if self.engine is not None else getattr(self.model, "module", self.model)
        if self.peft:
            module.save_pretrained(str(final / "adapter"))
            if self.cfg.lora.merge_on_save and state is None:
                import copy

                module = copy.deepcopy(module).merge_and_unload()
            else:
                module = module.get_base_model()
        if state is not None:
            module.save_pretrained(str(final), state_dict=state)
            full = state
        else:
            module.save_pretrained(str(final))
            full = module.state_dict()
        self.processor.save_pretrained(final)
        adapter = {
            k: v.detach().cpu().contiguous() for k, v in full.items() if any(key in k for key in ADAPTER_KEYS)
        }
        save_file(adapter, str(final / "mm_projector.safetensors"))
        if self.aux_heads is not None:
            self._save_aux_heads(final)
            if self.tiny.export:
                from llamavid.train.tiny_model import save_tiny_model

                save_tiny_model(module, self.processor, Path(self.tiny.export))
            # Written last: its presence marks the phase finished (data.tiny.resume).
            _atomic_write_text(final / "tiny_phase.json", json.dumps(self.tiny_settings(), indent=1) + "\n")
        self.plot_losses(final / "loss_curve.png")
        self._barrier()
        return final

    # Metrics ----------------------------------------------------------------------------------------------------
    def _log_metrics(self, record: dict[str, Any]) -> None:
        with open(self.output_dir / "metrics.jsonl", "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
        logger.debug("step %(step)d loss %(loss).4f lr %(lr).3g", record)

    def _truncate_metrics(self) -> None:
        """Drop metric lines past the resumed step (written after the checkpoint by a killed run)."""
        path = self.output_dir / "metrics.jsonl"
        if not path.is_file():
            return
        kept = [
            line
            for line in path.read_text().splitlines()
            if line and json.loads(line)["step"] <= self.state.global_step
        ]
        _atomic_write_text(path, "".join(line + "\n" for line in kept))

    def plot_losses(self, path: Path) -> Path | None:
        """Loss curve PNG from ``metrics.jsonl`` (matplotlib, headless). Skipped with a log line if missing."""
        metrics = self.output_dir / "metrics.jsonl"
        if not metrics.is_file():
            return None
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            logger.warning("matplotlib not installed: no loss curve (pip install 'llamavid[train]').")
            return None
        rows = [json.loads(line) for line in metrics.read_text().splitlines() if line]
        figure, axis = plt.subplots(figsize=(6, 3.5), dpi=100)
        axis.plot(
            [r["step"] for r in rows], [r["loss"] for r in rows], marker="o" if len(rows) < 50 else None
        )
        axis.set_xlabel("optimizer step")
        axis.set_ylabel("training loss")
        axis.set_title(f"LLaMA-VID stage {self.cfg.train.stage}: {self.output_dir.name}")
        axis.grid(alpha=0.3)
        figure.tight_layout()
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}.png")
        figure.savefig(tmp)
        plt.close(figure)
        os.replace(tmp, path)
        return path

    # Tiny-model phases (data.tiny; llamavid.train.tiny_phase) ------------------------------------------------------
    def _read_tiny_phase(self) -> bool:
        """The phase named by ``data.tiny`` from its curriculum; refuses what a tiny phase cannot run with.

        Returns ``data.tiny.resume``.
        """
        from llamavid.train.curriculum import load_curriculum
        from llamavid.train.tiny_phase import TinyPhaseConfig

        self.tiny = TinyPhaseConfig.from_config(dict(self.cfg.data.tiny))
        path = self.tiny.curriculum_path()
        self.tiny_curriculum = load_curriculum(path)
        phases = {phase.name: phase for phase in self.tiny_curriculum.phases}
        if self.tiny.phase not in phases:
            raise ConfigError(
                f"data.tiny.phase: {path} has no phase {self.tiny.phase!r}; it has {sorted(phases)}."
            )
        self.tiny_phase = phases[self.tiny.phase]
        if self.cfg.train.max_steps is not None:
            raise ConfigError(
                f"data.tiny: the phase {self.tiny.phase!r} sets its steps ({self.tiny_phase.steps}); leave "
                "train.max_steps null (a shorter run is a shorter phase in another curriculum, e.g. tiny/smoke)."
            )
        # Why one process: the auxiliary heads live outside the model (they are not part of the saved model), and
        # the tiny model trains on 2 CPU cores; sharding them with the model is not worth the code.
        if self.strategy not in ("none", "ddp") or int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise ConfigError("data.tiny runs in one process (distributed.strategy: none, no torchrun).")
        if self.tiny.threads:
            torch.set_num_threads(self.tiny.threads)
        return bool(self.tiny.resume)

    def tiny_finished(self) -> bool:
        """Whether this phase already finished in ``output_dir`` (``data.tiny.resume``); refuses other settings."""
        if not self.tiny.resume:
            return False
        path = self.output_dir / "final" / "tiny_phase.json"
        if not path.is_file():
            return False
        saved, current = json.loads(path.read_text()), self.tiny_settings()
        # A loss added later is absent from older files: compare the non-default loss settings.
        for settings in (saved, current):
            settings["losses"] = _non_default_losses(settings.get("losses"))
        if saved != current:
            changed = sorted(key for key in {*saved, *current} if saved.get(key) != current.get(key))
            raise ConfigError(
                f"{path.parent} was trained with other settings for phase {self.tiny.phase!r} (differing: "
                f"{changed}). Delete {self.output_dir} (and the phases after it) to retrain, or use another "
                "train.output_dir."
            )
        self.total_steps = self.state.global_step = self.tiny_phase.steps
        self.rank, self.world_size = 0, 1  # one process (_read_tiny_phase); setup() is not run
        if self.tiny.export and not (Path(self.tiny.export) / "config.json").is_file():
            from llamavid.model import LlamaVidForConditionalGeneration, LlamaVidProcessor
            from llamavid.train.tiny_model import save_tiny_model

            model = LlamaVidForConditionalGeneration.from_pretrained(str(path.parent), dtype=torch.float32)
            save_tiny_model(model, LlamaVidProcessor.from_pretrained(path.parent), Path(self.tiny.export))
        logger.info("phase %s already trained in %s; skipped", self.tiny.phase, path.parent)
        return True

    def tiny_settings(self) -> dict[str, Any]:
        """The phase's resolved training settings (`tiny_phase.resolved_settings`) and the curriculum's tokenizers."""
        from llamavid.train.tiny_phase import resolved_settings

        settings = resolved_settings(self.tiny_phase, self.cfg.optim, self.cfg.train.grad_accum_steps)
        return {**settings, "tokenizers": dict(self.tiny_curriculum.tokenizers)}

    def _build_tiny_model(self) -> tuple[Any, Any]:
        """A fresh tiny model: the curriculum's stage-0 tower and tokenizers (built once under work_dir)."""
        from llamavid.model import LlamaVidProcessor
        from llamavid.train.stage0_vision import Stage0Settings, train_stage0
        from llamavid.train.tiny_model import TEMPLATE, TinyModelSettings, build_tiny_model, load_tokenizers

        work = Path(self.tiny.work_dir)
        kinds = self.tiny_curriculum.tokenizers
        # One process (_read_tiny_phase): stage 0 and the tokenizers are built here the first time, then read.
        train_stage0(Stage0Settings(**self.tiny_curriculum.stage0), work / "stage0")
        tokenizer, qformer_tokenizer = load_tokenizers(work, kinds["llm"], kinds["qformer"])
        torch.manual_seed(self.cfg.model.seed)
        try:
            settings = TinyModelSettings(**self.cfg.model.random_init)
        except TypeError as error:
            raise ConfigError(
                f"model.random_init with data.tiny takes TinyModelSettings fields: {error}"
            ) from None
        model = build_tiny_model(work / "stage0", tokenizer, qformer_tokenizer, settings)
        processor = LlamaVidProcessor.from_config(
            model.config, tokenizer, qformer_tokenizer, template=TEMPLATE
        )
        return model, processor

    def _setup_aux_heads(self) -> None:
        """Training-only probes; continued from ``model.init``'s ``auxiliary_heads.safetensors`` when it has one."""
        from llamavid.train.losses import AuxiliaryHeads

        torch.manual_seed(self.cfg.model.seed + 1)  # created after the model: its initialisation is unchanged
        width = int(self.model.config.text_config.hidden_size)
        self.aux_heads = AuxiliaryHeads(width).to(self.device)
        if self.cfg.model.init != "random":
            self._load_aux_heads(Path(self.cfg.model.init), required=False)

    def _load_aux_heads(self, folder: Path, required: bool) -> None:
        from safetensors.torch import load_file

        from llamavid.train.tiny_phase import AUX_WEIGHTS

        path = folder / AUX_WEIGHTS
        if not path.is_file():
            if required:
                raise ConfigError(f"{folder} has no {AUX_WEIGHTS}: it was not written by a data.tiny run.")
            logger.info("%s has no %s; auxiliary heads start fresh", folder, AUX_WEIGHTS)
            return
        saved, own = load_file(str(path)), self.aux_heads.state_dict()
        wrong = {
            k: (tuple(v.shape), tuple(own[k].shape))
            for k, v in saved.items()
            if k in own and v.shape != own[k].shape
        }
        if wrong:
            raise ConfigError(
                f"{path}: auxiliary heads of other sizes than this version's (name: saved vs expected shape) "
                f"{wrong}; start this phase from a folder written by the same llamavid version, or from "
                "model.init=random."
            )
        missing = self.aux_heads.load_state_dict(saved, strict=False).missing_keys
        if missing:
            logger.info("auxiliary heads %s not in %s; freshly initialised", missing, path)

    def _save_aux_heads(self, folder: Path) -> None:
        from safetensors.torch import save_file

        from llamavid.train.tiny_phase import AUX_WEIGHTS

        state = {k: v.detach().cpu().contiguous() for k, v in self.aux_heads.state_dict().items()}
        save_file(state, str(folder / AUX_WEIGHTS))

    def _setup_tiny_data(self) -> None:
        from llamavid.train.losses import AnswerPrior
        from llamavid.train.tiny_phase import (
            MixtureCollator,
            MixtureDataset,
            MixtureSampler,
            TinyLoss,
            load_phase_data,
        )

        phase, curriculum = self.tiny_phase, self.tiny_curriculum
        base = self._base_model()
        tower = base.model.vision_tower
        size = int(base.config.vision_config.image_size)
        cache_root = Path(self.tiny.feature_cache or Path(self.tiny.work_dir) / "features")
        names = list(phase.mixture)
        self.tiny_evals = list(curriculum.evals) if self.tiny.eval else []
        self.tiny_data = load_phase_data(curriculum, [*names, *self.tiny_evals], tower, size, cache_root)
        data = {name: self.tiny_data[name] for name in names}
        self.dataset = MixtureDataset(data)
        self.collator = MixtureCollator(data, self.processor)
        accum = self.cfg.train.grad_accum_steps
        self.total_steps = phase.steps
        self.steps_per_epoch = phase.steps
        self.batches_per_epoch = phase.steps * accum
        sizes = {name: len(items) for name, (items, _) in data.items()}
        self.sampler = MixtureSampler(phase, sizes, self.cfg.train.seed, self.batches_per_epoch)
        losses = phase.losses
        prior = None
        if losses.answer_prior and losses.lm:
            every = (item for name in names for item in data[name][0])
            prior = AnswerPrior(every, self.processor.tokenizer, losses.answer_prior)
        self.tiny_loss = TinyLoss.build(base, losses, self.aux_heads, prior)
        if self.is_main:
            logger.info("tiny phase %s: %s", phase.name, json.dumps(self.tiny_settings()))

    def _tiny_param_groups(self, model: Any) -> list[dict[str, Any]]:
        from llamavid.train.tiny_phase import param_groups

        heads = self.aux_heads if self.tiny_loss.uses_heads else None
        return param_groups(model, heads, self.tiny_phase.lr, self.tiny_phase.visual_lr_scale)

    def _tiny_scheduler(self, optimizer: Any) -> Any:
        """transformers' warmup + cosine to 5 % (the tiny phases' schedule since v1), per parameter group."""
        from transformers import get_cosine_with_min_lr_schedule_with_warmup

        from llamavid.train.tiny_phase import MIN_LR_RATE

        return get_cosine_with_min_lr_schedule_with_warmup(
            optimizer, self.tiny_phase.warmup, self.total_steps, min_lr_rate=MIN_LR_RATE
        )

    def _tiny_step_loss(self, batch: dict[str, Any]) -> tuple[torch.Tensor, int]:
        items = batch["tiny_items"]
        # TinyLoss drops a right-padded batch's mask itself (it runs the LLM per length group).
        inputs = self._to_device({k: v for k, v in batch.items() if k != "tiny_items"})
        tokens = int((inputs["labels"][:, 1:] != IGNORE_INDEX).sum())
        inputs["tiny_items"] = items
        with self._autocast():
            loss, terms = self.tiny_loss(self.model, inputs)
        accum = self.cfg.train.grad_accum_steps
        for key, value in terms.items():
            self._loss_terms[key] = self._loss_terms.get(key, 0.0) + value / accum
        return loss.float(), tokens if self.tiny_phase.losses.lm else 0

    def _tiny_eval(self) -> None:
        """Score the curriculum's eval sets at the phase's ``eval_every`` (0-based step) and at its last step."""
        from llamavid.train.tiny_model import score_items

        step, every = self.state.global_step - 1, self.tiny_phase.eval_every
        last = self.state.global_step >= self.total_steps
        if not self.tiny_evals or not self.is_main or not ((every and step and step % every == 0) or last):
            return
        model = self._base_model()
        point: dict[str, Any] = {"phase": self.tiny_phase.name, "step": self.state.global_step}
        for name in self.tiny_evals:
            result = score_items(model, self.processor, *self.tiny_data[name])
            point[name] = {"mean": result["mean"], "per_type": result["per_type"]}
            logger.info("%s step %d %s: mean %.3f", self.tiny_phase.name, step, name, result["mean"])
        with open(self.output_dir / "scores.jsonl", "a", encoding="utf-8") as handle:
            handle.write(json.dumps(point) + "\n")

    def cleanup(self) -> None:
        """Release the process group this recipe created."""
        if self.tiny_loss is not None:
            self.tiny_loss.close()
        if self._owns_process_group and dist.is_initialized():
            dist.destroy_process_group()


def run(cfg: RunConfig, resume_from: str | Path | None = None) -> tuple[TrainingRecipe, list[float]]:
    """setup -> train -> final checkpoint + export -> cleanup; returns the recipe and its per-step losses."""
    recipe = TrainingRecipe(cfg, resume_from=resume_from)
    if recipe.tiny is not None and recipe.tiny_finished():
        return recipe, []
    try:
        recipe.setup()
        losses = recipe.train()
        recipe.save_checkpoint()
        recipe.save_final()
    finally:
        recipe.cleanup()
    return recipe, losses


__all__ = ["STAGE_TRAINABLE", "TrainState", "TrainingRecipe", "lr_lambda", "resolve_checkpoint", "run"]
