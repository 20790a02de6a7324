"""Run the official LLaMA-VID code on tiny seeded checkpoints and dump parity fixtures (parity venv only).

    python tools/parity/make_fixtures.py --official /tmp/official --out tests/parity/fixtures

`--official` is a directory holding the official ``llamavid/`` package, extracted at run time from a local
checkout (``git --git-dir=<mirror> archive HEAD llamavid | tar -x -C /tmp/official``); nothing of it is copied into
this repository. The interpreter must be the parity venv of ``tools/parity/README.md`` (transformers 4.31).

Shim (everything that differs from an unmodified official run, all forced by "tiny, offline, CPU"):

* ``timm``: `shim_timm.install()` (identity drop-path, exact in eval mode).
* Hard-coded widths: the official code builds EVA at width 1408 / depth 39 / 16 heads / mlp ratio 4.3637, sizes a
  pretrained Q-Former's cross-attention for 1408-wide features (``att_feat_size = 1408``, EVA ViT-g's width) and
  detects precomputed long-video features by ``shape[-1] > 1000``. A source-level import hook (`_PatchedLoader`)
  replaces exactly these literals in ``eva_vit.py`` / ``llamavid_arch.py`` by the tiny sizes (each substitution
  must match exactly once): EVA's width becomes the config's ``mm_hidden_size`` (1408 in every real config), and
  ``att_feat_size`` the tiny stand-in for 1408 (`TinySizes.qformer_feature_width`, 32). A case whose tower is
  narrower than 32 (a small EVA-like tower, or the CLIP option) therefore gets the official ``vlm_att_bert_proj``
  and a 32-wide ``vlm_att_ln``, exactly as a CLIP ViT-L (1024) gets 1024 -> 1408.
* CLIP tower (``mm_vision_tower`` containing ``OpenAI``): a folder with a tiny random ``CLIPModel`` config, its
  weights and the openai preprocessor settings at the tiny size; the official code loads it with
  ``CLIPVisionModel.from_pretrained`` (no hub).
* ``bert-base-uncased``: a local folder of that name in the working directory (`official_layout.write_bert_folder`:
  tiny `BertConfig`, the tiny test vocab, no weights); `init_bert` loads it instead of downloading. Its weights are
  replaced by the checkpoint's.
* Relative paths of the config (``./model_zoo/LAVIS/eva_vit_g.pth``, ``./llamavid/processor/clip-patch14-S``) are
  created in a temporary working directory; the processor json is the official one with the tiny frame size.
* `tokenizer_image_token` and `process_images` (LLaVA's `mm_utils`, not in the official repo): stand-ins written
  from the spec (§5.2 per-chunk tokenisation; §8.2 pad to a square with the mean colour).
* fp32 on CPU: no device moves or ``half`` casts. `initialize_attention_modules(for_eval=True)` casts the ``vlm_att_*``
  modules to fp16 (spec §11.4); `load_official` casts back with ``.float()`` and re-loads their fp32 tensors from
  the checkpoint, with the official loader's own key handling.

Outputs under ``--out``: ``checkpoints/<kind>.safetensors`` (official key names, the exact tensors the official run
loaded; ``<kind>_w<width>`` for a tower of another width than 32), ``checkpoints/eva.safetensors`` /
``eva_w<width>.safetensors`` / ``clip_w<width>.safetensors`` (vision towers), ``cases.json`` (per case: config,
prompt strings, settings, the CLIP config) and ``<case>.safetensors`` (official ids, QFormer ids, pixels or
features, visual tokens, inputs_embeds, logits, greedy tokens). ``--cases a b`` regenerates only those cases and
the files they use, and updates their entries in an existing ``cases.json``.
"""

from __future__ import annotations

import argparse
import importlib.abc
import importlib.machinery
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "model"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import shim_timm  # noqa: E402
from official_layout import (  # noqa: E402
    CLIP_TOWER_PATH,
    TinySizes,
    clip_config,
    clip_vision_state_dict,
    eva_state_dict,
    official_config,
    official_state_dict,
    write_bert_folder,
    write_clip_folder,
    write_official_folder,
)

SIZES = TinySizes()
IMAGE_TOKEN_INDEX = -200
BASE_SIZE = 56  # tiny stand-in for 224 px: 4x4 patches of 14 (224 -> 16x16)
HIGH_SIZE = 84  # tiny stand-in for 336 px: 6x6 patches on the 4x4 table (336 -> 24x24 on 16x16)
GREEDY_TOKENS = 8
SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
    "detailed, and polite answers to the user's questions."
)

# (file, original, replacement): literal substitutions applied while importing the official modules.
SUBSTITUTIONS = {
    "eva_vit.py": [
        ("self.out_channel = 1408", "self.out_channel = args.mm_hidden_size"),
        # `load_model` (the LAVIS `create_eva_vit_g` below it has the same literals but is never called)
        (
            "depth=39,\n            num_heads=self.out_channel//88,\n            mlp_ratio=4.3637,",
            f"depth={SIZES.eva_blocks - 1}, num_heads={SIZES.vision_overrides['num_attention_heads']}, "
            f"mlp_ratio={SIZES.eva_mlp / SIZES.eva_width},",
        ),
    ],
    "llamavid_arch.py": [
        ("att_feat_size = 1408", f"att_feat_size = {SIZES.qformer_feature_width}"),
        ("images[0].shape[-1] > 1000", "images[0].shape[-1] == self.config.mm_hidden_size"),
    ],
}


class _PatchedLoader(importlib.machinery.SourceFileLoader):
    def get_code(self, fullname):
        source = Path(self.path).read_text()
        for old, new in SUBSTITUTIONS[Path(self.path).name]:
            if source.count(old) != 1:
                raise RuntimeError(f"{self.path}: expected exactly one {old!r}; the official code changed.")
            source = source.replace(old, new)
        return compile(source, self.path, "exec", dont_inherit=True)


class _PatchFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        if fullname.rsplit(".", 1)[-1] + ".py" not in SUBSTITUTIONS:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is not None:
            spec.loader = _PatchedLoader(fullname, spec.origin)
        return spec


def import_official(official: Path):
    shim_timm.install()
    sys.meta_path.insert(0, _PatchFinder())
    sys.path.insert(0, str(official))
    import llamavid.model.llamavid_arch  # noqa: F401

    from llamavid.model import LlavaLlamaAttForCausalLM

    return LlavaLlamaAttForCausalLM


# ---------------------------------------------------------------------------------------------------------------
# Stand-ins for LLaVA's mm_utils (spec §5.2, §8.2)
# ---------------------------------------------------------------------------------------------------------------
def tokenizer_image_token(prompt: str, tokenizer) -> list[int]:
    """Tokenise each chunk between ``<image>`` on its own; BOS only from the first chunk; -200 between chunks."""
    chunks = [tokenizer(chunk).input_ids for chunk in prompt.split("<image>")]
    ids: list[int] = []
    for index, chunk in enumerate(chunks):
        if index and chunk and chunk[0] == tokenizer.bos_token_id:
            chunk = chunk[1:]
        if index:
            ids.append(IMAGE_TOKEN_INDEX)
        ids.extend(chunk)
    return ids


def expand2square(image, background):
    from PIL import Image

    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    result = Image.new(image.mode, (side, side), background)
    result.paste(image, ((side - width) // 2, (side - height) // 2))
    return result


# ---------------------------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------------------------
def make_image(seed: int, height: int, width: int) -> torch.Tensor:
    """A smooth, seeded uint8 RGB image (H, W, 3): gradients plus low-frequency noise, so resizing matters."""
    g = torch.Generator().manual_seed(seed)
    ys = torch.linspace(0, 1, height)[:, None, None]
    xs = torch.linspace(0, 1, width)[None, :, None]
    base = torch.tensor([0.9, 0.4, 0.6]) * ys + torch.tensor([0.1, 0.7, 0.3]) * xs
    noise = torch.nn.functional.interpolate(
        torch.rand(1, 3, 5, 5, generator=g), size=(height, width), mode="bilinear", align_corners=False
    )[0].permute(1, 2, 0)
    return ((0.6 * base + 0.4 * noise).clamp(0, 1) * 255).round().to(torch.uint8)


CASES = [
    # name, bert_type, compress, frame size, media, question, llm prompt
    {
        "name": "image_qformer_pretrain",
        "bert_type": "qformer_pretrain",
        "compress_type": None,
        "image_size": BASE_SIZE,
        "media": "image",
        "question": "what is in the image?",
        "prompt": f"{SYSTEM} USER: <image>\nwhat is in the image? ASSISTANT:",
    },
    {
        "name": "image_high_res",
        "bert_type": "qformer_pretrain",
        "compress_type": None,
        "image_size": HIGH_SIZE,
        "media": "image",
        "question": "describe the picture.",
        "prompt": "USER: <image>\ndescribe the picture. ASSISTANT:",
    },
    {
        "name": "image_grid2",
        "bert_type": "qformer_pretrain",
        "compress_type": "grid:2",
        "image_size": BASE_SIZE,
        "media": "image",
        "question": "is there a cat?",
        "prompt": "USER: is there a cat?\n<image> ASSISTANT:",
    },
    {
        "name": "video_mean",
        "bert_type": "qformer_pretrain",
        "compress_type": "mean",
        "image_size": BASE_SIZE,
        "media": "video",
        "question": "what happens in the video?",
        "prompt": "USER: <image>\nwhat happens in the video? ASSISTANT:",
    },
    {
        "name": "long_video_freeze_all",
        "bert_type": "qformer_pretrain_freeze_all",
        "compress_type": "mean",
        "image_size": BASE_SIZE,
        "media": "features",
        "rope_scaling": {"type": "linear", "factor": 16.0},
        "subtitles": ["hello there.", "", "the cat is on the table..."],
        "question": "who is in the movie?",
    },
    {
        "name": "image_raw_bert",
        "bert_type": "raw_bert",
        "compress_type": None,
        "image_size": BASE_SIZE,
        "media": "image",
        "question": "what colour is the sky?",
        "prompt": "USER: <image>\nwhat colour is the sky? ASSISTANT:",
    },
    # A pretrained Q-Former (cross-attention 32 wide, the stand-in for 1408) on towers 24 wide: the official model
    # inserts vlm_att_bert_proj (24 -> 32) before a 32-wide vlm_att_ln.
    {
        "name": "image_pretrain_narrow_eva",
        "bert_type": "qformer_pretrain",
        "compress_type": None,
        "image_size": BASE_SIZE,
        "media": "image",
        "tower": "eva",
        "width": 24,
        "question": "what shape is in the corner?",
        "prompt": "USER: <image>\nwhat shape is in the corner? ASSISTANT:",
    },
    {
        "name": "video_pretrain_clip",
        "bert_type": "qformer_pretrain_freeze",
        "compress_type": "mean",
        "image_size": BASE_SIZE,
        "media": "video",
        "tower": "clip",
        "width": 24,
        "question": "what moves in the clip?",
        "prompt": "USER: <image>\nwhat moves in the clip? ASSISTANT:",
    },
]


def case_sizes(case: dict) -> TinySizes:
    """Tiny sizes of a case: the default tower is 32 wide; `width` gives another (MLP twice as wide)."""
    width = case.get("width", SIZES.eva_width)
    return TinySizes(eva_width=width, eva_mlp=2 * width)


def checkpoint_kind(case: dict) -> str:
    kind = "raw_bert" if "raw" in case["bert_type"] else "qformer_pretrain"
    width = case.get("width", SIZES.eva_width)
    return kind if width == SIZES.eva_width else f"{kind}_w{width}"


def tower_name(case: dict) -> str:
    """Fixture name of the case's vision tower file (``eva``, ``eva_w24``, ``clip_w24``)."""
    width = case.get("width", SIZES.eva_width)
    tower = case.get("tower", "eva")
    return tower if tower == "eva" and width == SIZES.eva_width else f"{tower}_w{width}"


def long_video_prompt(case: dict) -> str:
    """The movie CLI prompt (spec §5.4): one ``<image>`` per frame, doubled (video_token 2), subtitles after it."""
    inputs = "".join("<image>" + text for text in case["subtitles"]).replace("...", "")
    inputs = inputs.replace("<image>", "<image>" * 2)
    start, end = (
        "Below is a movie. Memorize the content and answer my question after watching this movie.",
        "Now the movie end.",
    )
    return f"{SYSTEM} USER: {start}{inputs}{end}\n{case['question']} ASSISTANT:"


# ---------------------------------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------------------------------
def checkpoint_state(kind: str, sizes: TinySizes = SIZES) -> dict[str, torch.Tensor]:
    """Official full-checkpoint tensors as transformers 4.31 saves them (kind: ``qformer_pretrain`` or ``raw_bert``).

    ``rotary_emb.inv_freq`` is a persistent buffer in 4.31, saved with its true values; HF BERT's ``position_ids``
    is not persistent in 4.31, so a raw_bert save has none.
    """
    state = official_state_dict(sizes, kind.split("_w")[0])
    head_dim = SIZES.llm_width // SIZES.llm_heads
    inv_freq = 1.0 / (10000 ** (torch.arange(0, head_dim, 2).float() / head_dim))
    for key in state:
        if key.endswith("rotary_emb.inv_freq"):
            state[key] = inv_freq.clone()
    if kind == "raw_bert":
        state.pop("model.vlm_att_encoder.bert.embeddings.position_ids")
    return state


def write_workdir(
    work: Path, official: Path, tower: dict[str, torch.Tensor], image_size: int, clip: dict | None = None
) -> None:
    """The relative paths of the official config: vision tower (EVA file or CLIP folder), processor, BERT."""
    if clip is not None:
        write_clip_folder(work / CLIP_TOWER_PATH, tower, clip)
    else:
        (work / "model_zoo" / "LAVIS").mkdir(parents=True, exist_ok=True)
        torch.save(tower, work / "model_zoo" / "LAVIS" / "eva_vit_g.pth")
    processor = work / "llamavid" / "processor" / f"clip-patch14-{image_size}"
    processor.mkdir(parents=True, exist_ok=True)
    source = official / "llamavid" / "processor" / "clip-patch14-224"
    shutil.copy(source / "config.json", processor / "config.json")
    settings = json.loads((source / "preprocessor_config.json").read_text())
    settings.update(size=image_size, crop_size=image_size)
    (processor / "preprocessor_config.json").write_text(json.dumps(settings))
    if not (work / "bert-base-uncased").exists():
        write_bert_folder(work / "bert-base-uncased", SIZES)


def load_official(model_class, folder: Path, official_state: dict[str, torch.Tensor]):
    """Load as the official builder does (from_pretrained, EVA load_model, initialize_attention_modules), in fp32."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder), use_fast=False)
    model = model_class.from_pretrained(str(folder), torch_dtype=torch.float32)
    vision_tower = model.get_vision_tower()
    if not vision_tower.is_loaded:
        vision_tower.load_model()
    model.config.model_path = str(folder)
    model.get_model().initialize_attention_modules(model.config, for_eval=True)
    # for_eval casts vlm_att_* to fp16 (spec §11.4); undo it by re-reading the fp32 tensors of the checkpoint.
    model.float()
    inner = model.get_model()
    for name in (
        "vlm_att_encoder",
        "vlm_att_projector",
        "vlm_att_key_projector",
        "vlm_att_val_projector",
        "vlm_att_ln",
        "vlm_att_bert_proj",
    ):
        module = getattr(inner, name, None)
        if module is None:
            continue
        prefix = f"model.{name}."
        part = {k[len(prefix) :]: v for k, v in official_state.items() if k.startswith(prefix)}
        if (
            name == "vlm_att_encoder"
            and "bert.embeddings.position_ids" not in part
            and "raw" not in model.config.bert_type
        ):
            part["bert.embeddings.position_ids"] = module.bert.embeddings.position_ids
        module.load_state_dict(part)
    if getattr(inner, "vlm_att_query", None) is not None:
        inner.vlm_att_query.data = official_state["model.vlm_att_query"].clone()
    model.eval()
    for param in model.parameters():
        assert param.dtype == torch.float32
    return model, tokenizer, vision_tower.image_processor


def run_case(case: dict, model, tokenizer, image_processor) -> tuple[dict[str, torch.Tensor], dict]:
    from PIL import Image

    tensors: dict[str, torch.Tensor] = {}
    meta: dict = {}
    question = case["question"]
    if case["media"] == "features":
        frames = len(case["subtitles"])
        g = torch.Generator().manual_seed(11)
        feats = torch.randn(
            frames, SIZES_PATCHES(case) + 1, case_sizes(case).eva_width, generator=g
        )  # (T, 1+N, C) with CLS
        tensors["vision_features"] = feats
        images = [feats[:, 1:]]
        prompt = long_video_prompt(case)
    elif case["media"] == "image":
        pixels_in = make_image(5, 36, 48)  # landscape: padded to a square first (image_aspect_ratio "pad")
        tensors["image_uint8"] = pixels_in
        image = Image.fromarray(pixels_in.numpy())
        background = tuple(int(x * 255) for x in image_processor.image_mean)
        image = expand2square(image, background)
        pixel_values = image_processor.preprocess(image, return_tensors="pt")["pixel_values"]
        tensors["pixel_values"] = pixel_values
        images = pixel_values  # (1, 3, S, S), as eval/model_vqa_loader passes it
        prompt = case["prompt"]
    else:
        frames = torch.stack([make_image(20 + t, 40, 64) for t in range(4)])  # (T, H, W, 3), never padded
        tensors["video_uint8"] = frames
        pixel_values = image_processor.preprocess(list(frames.numpy()), return_tensors="pt")["pixel_values"]
        tensors["pixel_values"] = pixel_values
        images = [pixel_values]  # a list of (T, 3, S, S), as eval/model_msvd_qa passes it
        prompt = case["prompt"]
    meta.update(prompt=prompt, question=question)

    ids = tokenizer_image_token(prompt, tokenizer)
    input_ids = torch.tensor([ids])
    tensors["input_ids"] = input_ids
    prompts = [[question]]
    model.update_prompt(prompts)
    tensors["qformer_input_ids"] = (
        model.get_model()
        .vlm_att_tokenlizer(
            prompts[0], padding="longest", truncation=True, max_length=256, return_tensors="pt"
        )
        .input_ids
    )
    with torch.no_grad():
        attention_mask = torch.ones_like(input_ids)
        _, _, _, inputs_embeds, _ = model.prepare_inputs_labels_for_multimodal(
            input_ids, attention_mask, None, None, images, prompts=prompts
        )
        tensors["inputs_embeds"] = inputs_embeds[0]
        placeholder = input_ids[0] == IMAGE_TOKEN_INDEX
        if case["media"] == "features":
            tensors["visual_tokens"] = inputs_embeds[0][placeholder]
        else:
            start = int(placeholder.nonzero()[0])
            count = inputs_embeds.shape[1] - input_ids.shape[1] + 1
            tensors["visual_tokens"] = inputs_embeds[0, start : start + count]
        logits = model(
            input_ids=input_ids, attention_mask=attention_mask, images=images, prompts=prompts
        ).logits
        tensors["logits"] = logits[0]
        output = model.generate(
            input_ids, images=images, do_sample=False, max_new_tokens=GREEDY_TOKENS, use_cache=True
        )
        tensors["greedy_tokens"] = output[0, input_ids.shape[1] :]
    return tensors, meta


def SIZES_PATCHES(case: dict) -> int:  # noqa: N802
    return (case["image_size"] // SIZES.patch) ** 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--official", type=Path, required=True, help="folder holding the official llamavid/")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--cases", nargs="+", default=None, help="regenerate only these cases (default: all)")
    args = parser.parse_args()
    official = args.official.resolve()
    out = args.out.resolve()
    names = [case["name"] for case in CASES]
    unknown = sorted(set(args.cases or []) - set(names))
    if unknown:
        parser.error(f"unknown cases {unknown}; expected some of {names}")
    selected = [case for case in CASES if args.cases is None or case["name"] in args.cases]
    torch.manual_seed(0)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import transformers

    transformers.logging.set_verbosity_error()
    model_class = import_official(official)

    (out / "checkpoints").mkdir(parents=True, exist_ok=True)
    from safetensors.torch import save_file

    states, towers, clip_configs = {}, {}, {}
    for case in selected:
        sizes, kind, tower = case_sizes(case), checkpoint_kind(case), tower_name(case)
        if kind not in states:
            states[kind] = checkpoint_state(kind, sizes)
            save_file(
                {k: v.contiguous() for k, v in states[kind].items()},
                str(out / "checkpoints" / f"{kind}.safetensors"),
            )
        if tower not in towers:
            if case.get("tower", "eva") == "clip":
                clip_configs[tower] = clip_config(sizes, case["image_size"])
                towers[tower] = clip_vision_state_dict(sizes, case["image_size"])
            else:
                towers[tower] = eva_state_dict(sizes, grid=BASE_SIZE // SIZES.patch)
            save_file(towers[tower], str(out / "checkpoints" / f"{tower}.safetensors"))

    index_path = out / "cases.json"
    index = json.loads(index_path.read_text()) if args.cases and index_path.is_file() else {}
    cwd = Path.cwd()
    for case in selected:
        sizes, kind, tower = case_sizes(case), checkpoint_kind(case), tower_name(case)
        clip = clip_configs.get(tower)
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            os.chdir(work)
            try:
                write_workdir(work, official, towers[tower], case["image_size"], clip)
                config = official_config(
                    sizes,
                    case["bert_type"],
                    case["compress_type"],
                    case["image_size"],
                    case.get("rope_scaling"),
                    case.get("tower", "eva"),
                )
                folder = work / "llama-vid-tiny"
                write_official_folder(folder, states[kind], config, num_shards=2, fmt="bin")
                model, tokenizer, image_processor = load_official(model_class, folder, states[kind])
                if "pretrain" in case["bert_type"] and sizes.eva_width != sizes.qformer_feature_width:
                    # The layout under test: the official model built the projection and the wide LayerNorm.
                    inner = model.get_model()
                    assert inner.vlm_att_bert_proj.weight.shape == (
                        sizes.qformer_feature_width,
                        sizes.eva_width,
                    )
                    assert inner.vlm_att_ln.weight.shape == (sizes.qformer_feature_width,)
                tensors, meta = run_case(case, model, tokenizer, image_processor)
            finally:
                os.chdir(cwd)
        save_file(
            {k: v.detach().clone().contiguous() for k, v in tensors.items()},
            str(out / f"{case['name']}.safetensors"),
        )
        entry = {**case, **meta, "checkpoint": kind, "official_config": config}
        if case.get("tower", "eva") != "eva" or tower != "eva":
            entry["vision_tower"] = tower
        if clip is not None:
            entry["clip_config"] = clip
        index[case["name"]] = entry
        print(
            case["name"],
            {k: tuple(v.shape) for k, v in tensors.items()},
            "greedy",
            tensors["greedy_tokens"].tolist(),
        )
    ordered = {name: index[name] for name in names if name in index}
    index_path.write_text(json.dumps(ordered, indent=2) + "\n")


if __name__ == "__main__":
    main()
