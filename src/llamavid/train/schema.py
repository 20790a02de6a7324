"""Typed run configuration: YAML + dotted CLI overrides -> `RunConfig` (STYLE §3.4).

Why dataclasses and not a free-form dict: every key a YAML may use is declared once here with its default and
type, so a typo (``optim.learning_rate``) fails at start-up naming the valid keys instead of being silently
ignored for a 20-hour run. Architecture stays in `LlamaVidConfig` (saved with the weights); a run config only
points at a checkpoint (``model.init``) or, for random debug models, gives ``model.random_init`` kwargs.

Overrides use dotted keys with YAML-typed values: ``optim.lr=2e-5 train.max_steps=10 data.train_files=[a.json]``.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llamavid.errors import LlamaVidError, MissingFileError

STAGES = (1, 2, 3)
TEMPLATES_BY_STAGE = {1: "plain_guided", 2: "imgsp_v1", 3: "imgsp_v1"}
OVERLONG_POLICIES = ("skip", "truncate", "error")
PRECISIONS = ("auto", "bf16", "fp16", "fp32")
SCHEDULERS = ("cosine", "linear", "constant")
STRATEGIES = ("none", "ddp", "fsdp2", "deepspeed")


class ConfigError(LlamaVidError, ValueError):
    """A run configuration that cannot be used; the message names the key and the allowed values."""


@dataclass
class ModelConfig:
    """Which weights to start from and how to build the trainable model.

    Attributes:
        init: a llamavid model folder (``save_pretrained`` output, e.g. from ``llamavid convert``), or
            ``"random"`` to build a randomly initialised model from `random_init` (debug/tests only).
        random_init: `LlamaVidConfig` keyword arguments used when ``init == "random"``.
        tokenizer: tokenizer folder; default: `init`. ``"demo"`` = the small packaged sentencepiece tokenizer.
        load_weights: extra weight files loaded on top of `init` *before* any sharding (stage 2 reads stage
            1's ``mm_projector.safetensors`` here, the official ``--pretrain_mm_mlp_adapter``; an official
            ``mm_projector.bin`` is read with ``weights_only`` and renamed). Unknown names are an error.
        config_overrides: named `LlamaVidConfig` fields to change (e.g. ``bert_type``), applied before weights.
        seed: seed of the random initialisation (``init: random``) and of freshly created modules.
        attn_implementation: transformers attention backend (``sdpa``, ``eager``, ``flash_attention_2``).
        llm: build a NEW LLaMA-VID around this pretrained causal LM (any `AutoModelForCausalLM` family;
            docs/llms.md): a transformers folder, or a ``.gguf`` file (needs the ``gguf`` package). Its config
            becomes ``text_config``, its weights the LLM's and its tokenizer the prompt tokenizer; `random_init`
            gives the rest of the architecture (vision, Q-Former, tokens per frame). Needs ``init: random``.
        vision: with `llm`, a llamavid model folder whose vision tower (config and weights, e.g. a converted
            EVA ViT-g) the new model takes; ``None`` keeps the tower `random_init` describes, randomly initialised.
    """

    init: str = "random"
    random_init: dict[str, Any] = field(default_factory=dict)
    tokenizer: str | None = None
    load_weights: list[str] = field(default_factory=list)
    config_overrides: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    attn_implementation: str | None = None
    llm: str | None = None
    vision: str | None = None


@dataclass
class DataConfig:
    """Training data (LLaVA-format JSON, docs/architecture.md §9) and how samples become token sequences.

    Attributes:
        train_files: JSON files (lists of records); relative media paths resolve against the folders below.
        image_folder / video_folder: media roots; default: the folder of each JSON file.
        template: conversation template; default: the stage's (``plain_guided`` for 1, ``imgsp_v1`` for 2/3).
        video_fps: frame sampling rate for videos (the paper: 1 fps).
        max_frames: cap on frames per video (uniform re-sampling above it); ``None`` = no cap (official).
        long_video_max_frames: the same cap for long videos (raw frames interleaved with subtitles).
        model_max_length: longest expanded sequence (text + visual placeholders) the collator lets through.
        overlong: what to do with a longer sample: ``skip`` (warn and drop it), ``truncate`` (cut trailing text
            when no visual token is lost, else skip) or ``error``.
        image_aspect_ratio: ``pad`` (stage 2/3) or ``square`` (stage 1), passed to the image processor.
        num_workers: DataLoader workers (decoding runs there).
        validate: scan every record at start-up (JSON shape, turns, ``<image>`` counts, media existence) so bad
            data fails in the first second, not hours in.
        synth: generate a synthetic dataset first (`llamavid.synth.write_dataset` arguments, e.g.
            ``{kind: stage2, n: 32, image_size: 56}``) under ``output_dir/synth_data`` and train on it too; makes
            ``tiny_debug.yaml`` self-contained.
        tiny: train one phase of a tiny-model curriculum instead (``llamavid.train.tiny_phase.TinyPhaseConfig``:
            ``{curriculum: tiny/v4, phase: images, ...}``); see ``configs/tiny/phase.yaml``.
    """

    train_files: list[str] = field(default_factory=list)
    image_folder: str | None = None
    video_folder: str | None = None
    template: str | None = None
    video_fps: float = 1.0
    max_frames: int | None = None
    long_video_max_frames: int | None = None
    model_max_length: int = 2048
    overlong: str = "skip"
    image_aspect_ratio: str = "pad"
    num_workers: int = 0
    validate: bool = True
    synth: dict[str, Any] = field(default_factory=dict)
    tiny: dict[str, Any] = field(default_factory=dict)


@dataclass
class OptimConfig:
    """AdamW + schedule (docs/architecture.md §9: AdamW, cosine, warmup ratio 0.03, weight decay 0)."""

    lr: float = 2e-5
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    scheduler: str = "cosine"
    warmup_ratio: float = 0.03
    max_grad_norm: float = 1.0


@dataclass
class LoraConfig:
    """LoRA / QLoRA adapters on the LLM (PEFT). The LLM's own weights then stay frozen.

    Attributes:
        enabled: turn LoRA on.
        r / alpha / dropout: adapter rank, scaling numerator and dropout (LLaVA's LoRA recipe: 128 / 256 / 0.05).
        target_modules: LLM linear layer names to adapt.
        quantize: ``None``, ``"4bit"`` (QLoRA, NF4) or ``"8bit"``: load the LLM's linear layers through
            bitsandbytes; needs ``model.init`` to be a folder.
        merge_on_save: write the final model with adapters merged (plain weights) next to ``adapter/``.
    """

    enabled: bool = False
    r: int = 128
    alpha: int = 256
    dropout: float = 0.05
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    quantize: str | None = None
    merge_on_save: bool = True


@dataclass
class DistributedConfig:
    """How several processes share the work (launch with ``torchrun --nproc_per_node N``).

    Attributes:
        strategy: ``none`` (one process; DDP automatically when several are launched), ``ddp``, ``fsdp2``
            (``torch.distributed.fsdp.fully_shard`` per decoder layer, then the root) or ``deepspeed``.
        deepspeed_config: a JSON path or a packaged name (``zero2``, ``zero2_offload``, ``zero3``); ``"auto"``
            values are filled from this run config, as the HF Trainer does.
        fsdp_reshard_after_forward: FSDP2 ZeRO-3 style (``True``) or ZeRO-2 style (``False``) parameters.
    """

    strategy: str = "none"
    deepspeed_config: str | None = None
    fsdp_reshard_after_forward: bool = True


@dataclass
class TrainConfig:
    """The loop itself: stage, batch geometry, precision, checkpoints, logging.

    Attributes:
        stage: 1 (alignment: projectors only), 2 (instruction tuning: all but EVA) or 3 (long video: LLM +
            ``mm_projector``, linear RoPE scaling from ``data.model_max_length``).
        trainable: module-name prefixes to train instead of the stage's defaults (EVA and what the checkpoint's
            ``bert_type`` freezes stay frozen regardless).
        per_device_batch_size / grad_accum_steps: global batch = per-device x accumulation x processes.
        num_epochs: passes over the data (the paper: 1).
        max_steps: optimizer steps; overrides `num_epochs` when set.
        precision: ``auto`` = bf16 where the device supports it (CUDA with bf16), else fp32.
        gradient_checkpointing: recompute activations in the backward pass (the paper: on).
        seed: data order, per-turn ``<image>`` placement, dropout.
        output_dir: checkpoints, metrics, the loss curve and the final model go here.
        save_steps: checkpoint every N optimizer steps (0: only at the end).
        save_total_limit: keep only the newest N checkpoints.
        log_steps: metrics every N optimizer steps.
        rope_scaling: ``auto``: when ``model_max_length`` exceeds the LLM's positions, set linear RoPE
            scaling with factor ceil(max_length / positions), as the official stage-3 script (docs/architecture.md §6); ``none``.
        progress_bar: show a tqdm bar on rank 0.
    """

    stage: int = 2
    trainable: list[str] | None = None
    per_device_batch_size: int = 1
    grad_accum_steps: int = 1
    num_epochs: int = 1
    max_steps: int | None = None
    precision: str = "auto"
    gradient_checkpointing: bool = True
    seed: int = 42
    output_dir: str = "runs/llamavid"
    save_steps: int = 1000
    save_total_limit: int | None = None
    log_steps: int = 1
    rope_scaling: str = "auto"
    progress_bar: bool = True


@dataclass
class RunConfig:
    """One training run. Sections mirror the YAML top-level keys."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)

    def __post_init__(self) -> None:
        self.validate()

    @property
    def template(self) -> str:
        """The conversation template: ``data.template`` or the stage's default."""
        return self.data.template or TEMPLATES_BY_STAGE[self.train.stage]

    def validate(self) -> None:
        """Reject values the recipe cannot use, naming the key and the allowed values."""
        _choice("train.stage", self.train.stage, STAGES)
        _choice("data.overlong", self.data.overlong, OVERLONG_POLICIES)
        _choice("train.precision", self.train.precision, PRECISIONS)
        _choice("optim.scheduler", self.optim.scheduler, SCHEDULERS)
        _choice("distributed.strategy", self.distributed.strategy, STRATEGIES)
        _choice("data.image_aspect_ratio", self.data.image_aspect_ratio, ("pad", "square"))
        _choice("train.rope_scaling", self.train.rope_scaling, ("auto", "none"))
        _choice("lora.quantize", self.lora.quantize, (None, "4bit", "8bit"))
        positive: dict[str, float] = {
            "train.per_device_batch_size": self.train.per_device_batch_size,
            "train.grad_accum_steps": self.train.grad_accum_steps,
            "train.num_epochs": self.train.num_epochs,
            "train.log_steps": self.train.log_steps,
            "data.model_max_length": self.data.model_max_length,
            "data.video_fps": self.data.video_fps,
            "lora.r": self.lora.r,
        }
        for key, value in positive.items():
            if value <= 0:
                raise ConfigError(f"{key} must be positive, got {value}.")
        optional: dict[str, int | None] = {
            "train.max_steps": self.train.max_steps,
            "data.max_frames": self.data.max_frames,
            "data.long_video_max_frames": self.data.long_video_max_frames,
        }
        for key, count in optional.items():
            if count is not None and count <= 0:
                raise ConfigError(f"{key} must be positive or null, got {count}.")
        if self.optim.lr <= 0:
            raise ConfigError(f"optim.lr must be positive, got {self.optim.lr}.")
        if not 0 <= self.optim.warmup_ratio < 1:
            raise ConfigError(f"optim.warmup_ratio must be in [0, 1), got {self.optim.warmup_ratio}.")
        if len(self.optim.betas) != 2:
            raise ConfigError(f"optim.betas must have two values, got {self.optim.betas}.")
        if not self.data.train_files and not self.data.synth and not self.data.tiny:
            raise ConfigError("no training data: set data.train_files (LLaVA-format JSON) or data.synth.")
        if self.model.llm is not None and self.model.init != "random":
            raise ConfigError(
                f"model.llm builds a new model around {self.model.llm}, but model.init is {self.model.init!r}; "
                "leave model.init at 'random' (the parts around the LLM are new) or drop model.llm."
            )
        random = self.model.init == "random" and self.model.llm is None and not self.data.tiny
        if random and self.model.random_init and "text_config" not in self.model.random_init:
            raise ConfigError(
                "model.random_init has no text_config: set model.llm to a pretrained LLM (folder or .gguf "
                "file) or give model.random_init.text_config."
            )
        if self.model.vision is not None and self.model.llm is None:
            raise ConfigError("model.vision is only used with model.llm (a new model built around an LLM).")
        if (
            self.model.init == "random"
            and not self.model.random_init
            and self.model.llm is None
            and not self.data.tiny
        ):
            raise ConfigError(
                "model.init is 'random' but model.random_init is empty; give LlamaVidConfig kwargs "
                "(see configs/tiny_debug.yaml) or point model.init at a llamavid model folder."
            )
        if self.distributed.strategy == "deepspeed" and not self.distributed.deepspeed_config:
            raise ConfigError(
                "distributed.strategy=deepspeed needs distributed.deepspeed_config (zero2, zero2_offload, "
                "zero3 or a JSON path)."
            )
        if self.lora.quantize and self.model.init == "random":
            raise ConfigError(
                "lora.quantize needs model.init to be a model folder (weights are quantized on load)."
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _choice(key: str, value: Any, allowed: tuple[Any, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{key}={value!r} is not supported; expected one of {list(allowed)}.")


# Building dataclasses from plain data ---------------------------------------------------------------------------
def _type_name(annotation: Any) -> str:
    return getattr(annotation, "__name__", str(annotation))


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """Convert a YAML value to the annotated type, or fail naming the key.

    PyYAML reads ``2e-5`` as a string (YAML 1.1 needs a dot), so numeric strings are accepted for numbers.
    """
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, key)
            except ConfigError as error:
                errors.append(str(error))
        raise ConfigError(errors[0] if errors else f"{key}: cannot use {value!r}.")
    if dataclasses.is_dataclass(annotation):
        cls = typing.cast(type, annotation)
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a mapping of {cls.__name__} fields, got {value!r}.")
        return _build(cls, value, key)
    if origin is list:
        (inner,) = typing.get_args(annotation) or (Any,)
        if isinstance(value, (str, int, float)) and inner is str:
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} must be a list, got {value!r}.")
        return [_coerce(item, inner, f"{key}[{index}]") for index, item in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a mapping, got {value!r}.")
        return dict(value)
    if annotation is Any:
        return value
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key} must be true or false, got {value!r}.")
    if annotation in (int, float):
        if isinstance(value, bool):
            raise ConfigError(f"{key} must be a number, got {value!r}.")
        if isinstance(value, str):
            try:
                value = float(value) if annotation is float else int(value)
            except ValueError:
                raise ConfigError(f"{key} must be {_type_name(annotation)}, got {value!r}.") from None
        if annotation is int and isinstance(value, float):
            if not value.is_integer():
                raise ConfigError(f"{key} must be an integer, got {value!r}.")
            value = int(value)
        if not isinstance(value, (int, float)):
            raise ConfigError(f"{key} must be {_type_name(annotation)}, got {value!r}.")
        return annotation(value)
    if annotation is str:
        if isinstance(value, (dict, list)) or value is None:
            raise ConfigError(f"{key} must be a string, got {value!r}.")
        return str(value)
    return value


def _build(cls: type, values: dict[str, Any], prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in values.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" Did you mean {(prefix + '.' if prefix else '') + close[0]!r}?" if close else ""
            raise ConfigError(f"unknown config key {dotted!r}; valid keys here: {names}.{hint}")
        kwargs[key] = _coerce(value, hints[key], dotted)
    return cls(**kwargs)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"optim.lr=2e-5"`` -> ``(["optim", "lr"], "2e-5")`` with the value parsed as YAML."""
    import yaml

    key, sep, raw = text.partition("=")
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r} must look like section.key=value (e.g. optim.lr=2e-5).")
    return key.split("."), yaml.safe_load(raw) if raw else ""


def apply_overrides(values: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Set dotted keys in a nested dict (new keys included: the schema rejects unknown ones afterwards)."""
    for text in overrides:
        path, value = parse_override(text)
        node = values
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {text!r}: {part!r} is not a section.")
            node = child
        node[path[-1]] = value
    return values


def load_config(
    source: str | Path | dict[str, Any] | None = None, overrides: list[str] | None = None
) -> RunConfig:
    """Build a validated `RunConfig` from a YAML path (or packaged config name, or dict) plus overrides.

    Args:
        source: a YAML file, the name of a packaged config (``tiny_debug``, ``stage2_instruct``...), a dict,
            or ``None`` for the defaults.
        overrides: ``section.key=value`` strings, applied after the file.

    Raises:
        ConfigError: unknown keys, wrong types or unsupported values (the message names the key).
        FileNotFoundError: the YAML file does not exist.
    """
    import yaml

    if source is None:
        values: dict[str, Any] = {}
    elif isinstance(source, dict):
        values = copy.deepcopy(source)
    else:
        path = resolve_config_path(source)
        values = yaml.safe_load(path.read_text()) or {}
        if not isinstance(values, dict):
            raise ConfigError(
                f"{path}: expected a mapping of sections at the top level, got {type(values).__name__}."
            )
    values = apply_overrides(values, list(overrides or []))
    return _build(RunConfig, values)


def packaged_config_dir() -> Path:
    return Path(__file__).resolve().parent / "configs"


def resolve_config_path(source: str | Path) -> Path:
    """A YAML path, or the name of a packaged config (``tiny_debug`` or ``tiny_debug.yaml``)."""
    path = Path(source)
    if path.is_file():
        return path
    packaged = packaged_config_dir() / (path.name if path.suffix else f"{path.name}.yaml")
    if packaged.is_file() and len(path.parts) == 1:
        return packaged
    names = sorted(p.stem for p in packaged_config_dir().glob("*.yaml"))
    raise MissingFileError(
        f"config {str(source)!r} not found; give a YAML path or a packaged config: {names}."
    )


__all__ = [
    "ConfigError",
    "DataConfig",
    "DistributedConfig",
    "LoraConfig",
    "ModelConfig",
    "OptimConfig",
    "RunConfig",
    "TrainConfig",
    "apply_overrides",
    "load_config",
    "packaged_config_dir",
    "resolve_config_path",
]
