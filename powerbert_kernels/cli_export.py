"""``powerbert export``: write a saved PoWER-BERT model as an ONNX file that ONNX Runtime runs."""

from __future__ import annotations

import argparse
import sys

from .cli_args import load_error, positive_int, retention_list

HELP = "export a PoWER-BERT model to ONNX (standard operators, dynamic batch and sequence, checked in ONNX Runtime)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        required=True,
        help="model folder (a classifier saved by `powerbert train`, or any supported BERT-family model)",
    )
    parser.add_argument("--output", required=True, help="the ONNX file to write (written only once it checked)")
    parser.add_argument(
        "--retention",
        type=retention_list,
        help="comma-separated counts, one per layer (default: the configuration stored in the model)",
    )
    parser.add_argument(
        "--encoder",
        action="store_true",
        help="export the bare encoder (outputs last_hidden_state, kept_indices) instead of the classifier (logits)",
    )
    parser.add_argument("--opset", type=positive_int, default=18, help="ONNX opset, 18 or newer (default: 18)")
    parser.add_argument(
        "--no-verify", action="store_true", help="skip the comparison of ONNX Runtime with PyTorch before writing"
    )


def _load(args: argparse.Namespace):
    from pathlib import Path

    from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification

    from .models import apply_power_bert
    from .models.retention import CONFIG_KEY

    if not Path(args.model).is_dir():
        raise FileNotFoundError(f"--model: {args.model!r} is not a model folder")
    try:
        config = AutoConfig.from_pretrained(args.model)
    except (OSError, ValueError) as e:
        raise load_error("--model", args.model, e) from None
    retention = args.retention or getattr(config, CONFIG_KEY, None)
    if retention is None:
        raise ValueError(f"--model: {args.model} stores no PoWER-BERT configuration ({CONFIG_KEY}); pass --retention")
    architectures = getattr(config, "architectures", None) or []
    head = not args.encoder and any(a.endswith("ForSequenceClassification") for a in architectures)
    loader = AutoModelForSequenceClassification if head else AutoModel
    model = loader.from_pretrained(args.model, attn_implementation="sdpa").eval()
    return apply_power_bert(model, retention)


def run(args: argparse.Namespace) -> int:
    from .export import ExportError, export_onnx, output_names

    model = _load(args)
    try:
        path = export_onnx(model, args.output, opset=args.opset, verify=not args.no_verify)
    except ExportError as e:
        # A configuration that does not export, or a failed check: the user's to fix, not a crash.
        print(f"powerbert export: error: {e}", file=sys.stderr)
        return 2
    outputs = ", ".join(output_names(model))
    checked = "" if args.no_verify else ", checked against PyTorch under ONNX Runtime"
    print(f"wrote {path} (inputs of any batch size and length; outputs {outputs}{checked})")
    return 0
