"""A tiny-model curriculum as data: datasets, subsets, evals and phases read from ``train/configs/tiny/*.yaml``.

``llamavid train train/configs/tiny/phase.yaml data.tiny.curriculum=tiny/v4 data.tiny.phase=NAME`` trains one
phase of it through the one recipe (:mod:`llamavid.train.tiny_phase`); ``make tiny-model`` lists those calls.
This module only reads and checks the YAML: a mixture naming an undefined set, an unknown key, held-out
phrasings in a training set or the sealed test seed anywhere are refused with the file and the place named.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llamavid.errors import InvalidInputError
from llamavid.synth.dataset import FREE_FORM_TYPES, QUESTION_TYPES
from llamavid.synth.phrasing import check_phrasing
from llamavid.train.losses import LossSettings
from llamavid.train.stage0_vision import Stage0Settings

SEALED_TEST_SEEDS = {
    "v5": 933225671,
    "v5.1": 764493370,
    "v5.2": 1904615733,
    "v5.3": 760503152,
    "v5.4": 593098119,
    "v5.5": 399356114,  # the v5.5 plan's; unused (v5.5 failed its dev commit rule)
    "v5.6": 1261412181,  # the v5.6 plan's; unused (v5.6 failed its dev commit rule)
    "v5.7": 2085303183,  # the v5.7 plan's; unused (v5.7 failed its dev commit rule)
    "v5.8": 1700190228,  # the v5.8 plan's; unused (v5.8 failed its dev commit rule)
    "v5.9": 840529061,  # the v5.9 plan's; unused (v5.9 was stopped on the dev seed)
    "v5.10": 1978060563,  # the v5.10 plan's; unused (v5.10 failed its dev commit rule)
    "v5.11": 882612407,  # the v5.11 plan's; unused (v5.11 failed its dev commit rule)
    "v5.12": 1352142660,  # the v5.12 plan's; unused (v5.12 failed its dev commit rule)
    "v5.13": 88918718,  # the v5.13 plan's; scored once (committed 2026-12-07, replaced by v5.18)
    "v5.14": 1600855915,  # the v5.14 plan's; unused (v5.14 was stopped on the dev seed)
    "v5.15": 1155462301,  # the v5.15 plan's; unused (v5.15 was stopped on the dev seed)
    "v5.16": 693909314,  # the v5.16 plan's; unused (v5.16 diverged and was stopped)
    "v5.17": 312593987,  # the v5.17 plan's; unused (v5.17 was stopped on the dev seed)
    "v5.18": 185419803,  # the v5.18 plan's; the committed model's
}
"""Each tiny model's sealed test seed (docs/tiny-model.md, "v5 plan" ... "v5.18 plan"): reserved for
that model's one final score; a curriculum that names any of them as a data seed is refused, and ``llamavid
eval-synth`` asks for ``--sealed`` before using one. A used seed stays here so it is never trained or developed on
later."""
SEALED_TEST_SEED = SEALED_TEST_SEEDS["v5.18"]
"""The sealed seed of the committed tiny model (v5.18), used once for its final score."""


def sealed_seed_name(seed: int) -> str | None:
    """The model whose sealed test seed ``seed`` is (``"v5"``, ``"v5.1"``, ...), or None for a free seed."""
    return next((name for name, sealed in SEALED_TEST_SEEDS.items() if sealed == seed), None)


TOKENIZER_CHOICES = {"llm": ("word", "subword"), "qformer": ("synth", "bert")}
DEFAULT_TOKENIZERS = {"llm": "word", "qformer": "synth"}  # v4's
_PHASE_KEYS = (
    "name",
    "steps",
    "mixture",
    "batch_size",
    "lr",
    "warmup",
    "eval_every",
    "seed",
    "visual_lr_scale",
)
_DATASET_KEYS = ("split", "kind", "n", "seed", "episode_frames")
_DATASET_OPTIONS = (
    "phrasing",
    "turns",
    "balanced_needles",
    "varied_needles",
    "clip_frames",
)  # generate_items keywords


@dataclass
class Phase:
    """One phase: a mixture of cached item sets sampled by weight, its schedule and its losses.

    Attributes:
        mixture: set name -> sampling weight; each step draws one set, then a batch from it.
        batch_size / batch_sizes: items per batch, per set where ``batch_sizes`` names it (long videos: small).
        lr: the LLM's peak learning rate; the visual side (text decoder, projectors, probes) gets
            ``lr * visual_lr_scale``. Warmup for ``warmup`` steps, then cosine to 5 %.
        eval_every: score the curriculum's evals every this many steps (0: only at the end).
        seed: added to the run seed for this phase's batch sampling.
        losses: what the phase optimises (:class:`~llamavid.train.losses.LossSettings`).
    """

    name: str
    steps: int
    mixture: dict[str, float]
    batch_size: int = 32
    lr: float = 1e-3
    warmup: int = 30
    eval_every: int = 0
    seed: int = 0
    visual_lr_scale: float = 1.0
    batch_sizes: dict[str, int] = field(default_factory=dict)
    losses: LossSettings = field(default_factory=LossSettings)


@dataclass
class Curriculum:
    """A tiny-model curriculum (:func:`load_curriculum`).

    Attributes:
        datasets: name -> ``(split, kind, items, data seed, frames per long video or 0)``, cached once each.
        subsets: name -> how a set is derived from a cached one (``{"from", "subset", ...}``).
        evals: the sets scored during training.
        phases: the phases, in order.
        dataset_options: name -> extra ``generate_items`` keywords (``phrasing``, ``turns``,
            ``balanced_needles``, ``varied_needles``, ``clip_frames``) of the datasets that set any.
        stage0: :class:`Stage0Settings` fields of the stage-0 tower a fresh model is built around.
        tokenizers: ``{"llm": "word" | "subword", "qformer": "synth" | "bert"}``: the LLM's tokenizer (v4's
            word-level one, or the byte-level BPE with no unknown token) and the text decoder's vocab (v4's
            WordPiece of the synth words, or the released BERT-uncased vocab); built by
            :func:`llamavid.train.tiny_model.load_tokenizers` for a phase that starts from a fresh model.
    """

    datasets: dict[str, tuple[str, str, int, int, int]]
    subsets: dict[str, dict[str, Any]]
    evals: tuple[str, ...]
    phases: list[Phase]
    dataset_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    stage0: dict[str, Any] = field(default_factory=dict)
    tokenizers: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_TOKENIZERS))


def _phase(config: dict[str, Any], where: str) -> Phase:
    allowed = [*_PHASE_KEYS, "batch_sizes", "losses"]
    unknown = sorted(set(config) - set(allowed))
    if unknown:
        raise InvalidInputError(f"{where}: unknown key(s) {unknown}; expected some of {allowed}.")
    for key in ("name", "steps", "mixture"):
        if key not in config:
            raise InvalidInputError(f"{where}: missing {key!r}.")
    return Phase(
        **{key: config[key] for key in _PHASE_KEYS if key in config},
        batch_sizes=dict(config.get("batch_sizes") or {}),
        losses=LossSettings.from_config(config.get("losses") or {}, f"{where}.losses"),
    )


def _dataset(path: Path, name: str, spec: dict[str, Any]) -> tuple[tuple[str, str, int, int, int], dict]:
    extra = sorted(set(spec) - set(_DATASET_KEYS) - set(_DATASET_OPTIONS))
    if extra or not {"split", "kind", "n"} <= set(spec):
        raise InvalidInputError(
            f"{path}: datasets.{name}: expected split, kind, n and optionally seed, episode_frames, "
            f"{', '.join(_DATASET_OPTIONS)}; found {sorted(spec)}."
        )
    owner = sealed_seed_name(int(spec.get("seed", 0)))
    if owner is not None:
        raise InvalidInputError(
            f"{path}: datasets.{name}: seed {spec['seed']} is the sealed {owner} test seed, reserved for the one "
            f"final score (docs/tiny-model.md, {owner} plan); use another seed (dev: 2)."
        )
    options = {key: spec[key] for key in _DATASET_OPTIONS if key in spec}
    if "phrasing" in options:
        check_phrasing(options["phrasing"])
        if options["phrasing"] == "heldout_templates" and spec["split"] == "train":
            raise InvalidInputError(
                f"{path}: datasets.{name}: a train set may not use the held-out templates (they measure "
                "phrasings never trained)."
            )
    for key in ("balanced_needles", "varied_needles"):
        if key in options and (
            not isinstance(options[key], bool) or spec["kind"] not in ("long_qa", "stage3")
        ):
            raise InvalidInputError(
                f"{path}: datasets.{name}.{key}: expected true or false on a long_qa or stage3 set, found "
                f"{options[key]!r} on kind {spec['kind']!r}."
            )
    for key in ("turns", "clip_frames"):
        if isinstance(options.get(key), list):
            options[key] = tuple(options[key])
    row = (
        spec["split"],
        spec["kind"],
        int(spec["n"]),
        int(spec.get("seed", 0)),
        int(spec.get("episode_frames", 0)),
    )
    return row, options


_MERGED_BY_NAME = ("stage0", "tokenizers", "datasets", "subsets")  # mappings an ``extends`` child adds to
_TOP_KEYS = {"version", "extends", "presets", "evals", "phases", *_MERGED_BY_NAME}


_SUBSET_KEYS = {  # subset kind -> the keys it takes besides ``from`` and ``subset``
    "question_type": {"question_type", "answers"},
    "visual_needle": {"needle_length"},
}


def _check_subset(path: Path, name: str, spec: dict[str, Any], datasets: dict[str, Any]) -> None:
    """Refuse a subset whose source, kind or keys are wrong, naming the file and the subset."""
    where = f"{path}: subsets.{name}"
    if spec.get("from") not in datasets:
        raise InvalidInputError(f"{where}.from={spec.get('from')!r} is not a dataset.")
    kind = spec.get("subset")
    if kind not in _SUBSET_KEYS:
        raise InvalidInputError(f"{where}.subset={kind!r}: expected one of {sorted(_SUBSET_KEYS)}.")
    extra = sorted(set(spec) - {"from", "subset"} - _SUBSET_KEYS[kind])
    if extra:
        raise InvalidInputError(f"{where}: unknown key(s) {extra} for a {kind} subset.")
    if kind == "question_type":
        question_type = spec.get("question_type")
        named = [question_type] if isinstance(question_type, str) else question_type
        if not isinstance(named, list) or not named or not all(isinstance(t, str) for t in named):
            raise InvalidInputError(
                f"{where}.question_type={question_type!r}: expected a question type or a non-empty list of them, "
                "e.g. long_subtitle_needle or [image_shape, image_size]."
            )
        unknown = sorted(set(named) - set(QUESTION_TYPES) - set(FREE_FORM_TYPES))
        if unknown:
            raise InvalidInputError(
                f"{where}.question_type: unknown question type(s) {unknown}; expected some of "
                f"{sorted([*QUESTION_TYPES, *FREE_FORM_TYPES])}."
            )
    answers = spec.get("answers")
    if answers is not None and (
        isinstance(answers, (str, bytes))
        or not answers
        or not all(isinstance(a, (str, int)) for a in answers)
    ):
        raise InvalidInputError(
            f'{where}.answers={answers!r}: expected a non-empty list of answers, e.g. ["6", "7"].'
        )
    if answers is not None:
        spec["answers"] = [str(answer) for answer in answers]


def _read(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The raw mapping of a curriculum file with its ``extends`` chain applied (see :func:`load_curriculum`)."""
    import yaml

    if path.resolve() in seen:
        chain = " -> ".join(str(p) for p in (*seen, path.resolve()))
        raise InvalidInputError(f"{path}: `extends` comes back to a file already read ({chain}).")
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise InvalidInputError(f"{path}: no such curriculum file.") from err
    if not isinstance(config, dict):
        raise InvalidInputError(f"{path}: expected a mapping at the top level.")
    unknown = sorted(set(config) - _TOP_KEYS)
    if unknown:
        raise InvalidInputError(f"{path}: unknown top-level key(s) {unknown}.")
    base_name = config.pop("extends", None)
    if base_name is None:
        return config
    if not isinstance(base_name, str) or not base_name:
        raise InvalidInputError(f"{path}: extends: expected a curriculum file name, found {base_name!r}.")
    base = _read(path.parent / base_name, (*seen, path.resolve()))
    merged = {**base, **{k: v for k, v in config.items() if k not in (*_MERGED_BY_NAME, "phases")}}
    for key in _MERGED_BY_NAME:
        merged[key] = {**(base.get(key) or {}), **(config.get(key) or {})}
    phases = [dict(phase) for phase in base.get("phases") or []]
    for phase in config.get("phases") or []:
        names = [p.get("name") for p in phases]
        if isinstance(phase, dict) and phase.get("name") in names:
            phases[names.index(phase["name"])] = phase
        else:
            phases.append(phase)
    merged["phases"] = phases
    return merged


def curriculum_mapping(path: str | Path) -> dict[str, Any]:
    """A curriculum file as a plain mapping with its ``extends`` chain resolved (no ``extends`` key left), for
    tools that rewrite a curriculum (e.g. shorten its phases) and write it elsewhere; not checked beyond its
    top-level keys (:func:`load_curriculum` checks)."""
    return _read(Path(path))


def load_curriculum(path: str | Path) -> Curriculum:
    """Read and check a curriculum YAML; ``presets`` is free space for YAML anchors.

    A curriculum may start from another: ``extends: v5.1.yaml`` (a file in the same folder) takes that file's
    settings, adds this file's ``datasets``, ``subsets``, ``stage0`` and ``tokenizers`` to them (a name given
    again is replaced), replaces ``evals`` if given, and merges ``phases`` by name: a phase named like one of the
    base's replaces it in place, any other is appended. YAML anchors do not cross files: a child defines the
    presets its own phases use.

    Raises:
        InvalidInputError: on an unknown key, a missing field, a mixture naming an undefined set, held-out
            templates in training or the sealed seed, a missing or circular ``extends``, with the file and the
            phase or dataset in the message.
    """
    path = Path(path)
    config = _read(path)
    datasets, options = {}, {}
    for name, spec in (config.get("datasets") or {}).items():
        datasets[name], chosen = _dataset(path, name, spec)
        if chosen:
            options[name] = chosen
    subsets = {name: dict(spec) for name, spec in (config.get("subsets") or {}).items()}
    for name, spec in subsets.items():
        _check_subset(path, name, spec, datasets)
    phases = [_phase(phase, f"{path}: phases[{i}]") for i, phase in enumerate(config.get("phases") or [])]
    for phase in phases:
        missing = sorted(set(phase.mixture) - set(datasets) - set(subsets))
        if missing:
            raise InvalidInputError(f"{path}: phase {phase.name!r} mixes undefined set(s) {missing}.")
    evals = tuple(config.get("evals") or ())
    if not set(evals) <= set(datasets):
        raise InvalidInputError(f"{path}: evals {sorted(set(evals) - set(datasets))} are not datasets.")
    stage0 = dict(config.get("stage0") or {})
    bad = sorted(set(stage0) - {f.name for f in dataclasses.fields(Stage0Settings)})
    if bad:
        raise InvalidInputError(f"{path}: stage0: unknown Stage0Settings field(s) {bad}.")
    try:
        Stage0Settings(**stage0)
    except InvalidInputError as error:
        raise InvalidInputError(f"{path}: stage0: {error}") from None
    tokenizers = dict(DEFAULT_TOKENIZERS, **(config.get("tokenizers") or {}))
    for part, choice in tokenizers.items():
        if part not in TOKENIZER_CHOICES or choice not in TOKENIZER_CHOICES[part]:
            raise InvalidInputError(
                f"{path}: tokenizers.{part}={choice!r}: expected llm in {TOKENIZER_CHOICES['llm']} and qformer "
                f"in {TOKENIZER_CHOICES['qformer']}."
            )
    return Curriculum(datasets, subsets, evals, phases, options, stage0, tokenizers)


__all__ = [
    "DEFAULT_TOKENIZERS",
    "SEALED_TEST_SEED",
    "SEALED_TEST_SEEDS",
    "sealed_seed_name",
    "TOKENIZER_CHOICES",
    "Curriculum",
    "Phase",
    "curriculum_mapping",
    "load_curriculum",
]
