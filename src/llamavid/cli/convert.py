"""``llamavid convert`` (official checkpoint -> llamavid folder) and ``llamavid convert-features`` (.pkl -> safetensors)."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "convert",
        help="convert a released LLaMA-VID checkpoint (+ its EVA file or CLIP folder) into one llamavid folder",
        description="Join an official llama-vid-* folder, its vision tower (eva_vit_g.pth, or the CLIP model folder "
        "of the official CLIP option) and a BERT-uncased tokenizer into a self-contained llamavid folder "
        "(safetensors, config, processor, generation defaults).",
    )
    parser.add_argument(
        "official", type=Path, help="downloaded llama-vid-* folder (config.json, shards, tokenizer)"
    )
    parser.add_argument(
        "--vision-tower",
        "--eva",
        dest="vision_tower",
        type=Path,
        required=True,
        help="the tower config.json's mm_vision_tower names: eva_vit_g.pth (LAVIS BLIP-2 release) or a CLIP model "
        "folder such as clip-vit-large-patch14",
    )
    parser.add_argument("--output", "-o", type=Path, required=True, help="new folder to write")
    parser.add_argument(
        "--bert-tokenizer",
        type=Path,
        default=None,
        help="local bert-base-uncased folder (vocab.txt; its config.json, if any, gives the Q-Former's head count)",
    )
    parser.add_argument(
        "--qformer",
        type=Path,
        default=None,
        help="InstructBLIP file for checkpoints without vlm_att_* weights",
    )
    parser.add_argument("--image-size", type=int, default=None, help="frame side (default: from config.json)")
    parser.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default=None)
    parser.add_argument(
        "--generation-use",
        choices=("cli", "movie", "video_qa", "image_eval"),
        default=None,
        help="official sampling defaults to store (default: by checkpoint kind)",
    )
    parser.set_defaults(func=run)

    features = subparsers.add_parser(
        "convert-features",
        help="convert official long-video feature .pkl files to safetensors + JSON (no code runs while reading)",
    )
    features.add_argument("pickles", type=Path, nargs="+", help="official .pkl feature files")
    features.add_argument(
        "--output-dir", type=Path, default=None, help="folder for the outputs (default: beside)"
    )
    features.set_defaults(func=run_features)


def run(args: argparse.Namespace) -> int:
    from llamavid.model.convert_original_checkpoint import convert

    output = convert(
        args.official,
        args.vision_tower,
        args.output,
        bert_tokenizer_folder=args.bert_tokenizer,
        qformer_path=args.qformer,
        image_size=args.image_size,
        dtype=args.dtype,
        generation_use=args.generation_use,
    )
    print(f"wrote {output}")
    return 0


def run_features(args: argparse.Namespace) -> int:
    from llamavid.data.official_features import convert_feature_pickle

    for path in args.pickles:
        stem = args.output_dir / path.stem if args.output_dir else None
        tensor_path, sidecar_path = convert_feature_pickle(path, stem)
        print(f"{path} -> {tensor_path}, {sidecar_path}")
    return 0
