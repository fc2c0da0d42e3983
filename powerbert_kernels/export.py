"""Deployment of PoWER-BERT models: ``torch.export`` with dynamic shapes, and ONNX for ONNX Runtime.

A patched model keeps a fixed number of word-vectors per layer (``min(l_j, n)``), so its shapes are a
function of the input's shape alone and one graph serves every batch size and padded length. The ONNX
file holds standard operators only: the custom ops are first rewritten into matmul / softmax / sum and
top-k / gather (:mod:`powerbert_kernels.ops.decompositions`), then the dynamo-based exporter writes the
graph. ONNX Runtime, TensorRT or OpenVINO then run it without this package.

Fractions of the padded length (``retention=[0.6, ...]``) do not export: the count they give is rounded
from the length, a step the graph would have to carry for every layer; re-patch with counts.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from .models import HardExtract, is_patched
from .models.architectures import adapter_for
from .models.patch import _patched_base
from .ops.decompositions import DECOMPOSITIONS

ONNX_EXTRA_HINT = "pip install 'powerbert-kernels[onnx]'"
DEFAULT_OPSET = 18
VERIFY_ATOL = 1e-4
"""Largest absolute difference :func:`export_onnx` accepts between ONNX Runtime and PyTorch outputs."""


class ExportError(RuntimeError):
    """A model cannot be exported, or its exported form does not reproduce the PyTorch model."""


def _require_onnx() -> None:
    missing = []
    for name in ("onnx", "onnxscript", "onnxruntime"):
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise ModuleNotFoundError(
            f"ONNX export needs {', '.join(missing)} (the [onnx] extra): {ONNX_EXTRA_HINT}", name=missing[0]
        )


def _check_exportable(model: nn.Module, *, require_patched: bool) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    base = _patched_base(model)
    if base is None:
        if require_patched:
            raise ValueError(
                "model: it is not patched with apply_power_bert; patch it first (or pass allow_unpatched=True "
                "to export the stock model the same way, as a baseline)"
            )
        adapter_for(model)
    else:
        extracts = list(base.power_extract)
        if not all(type(e) is HardExtract for e in extracts):
            kinds = sorted({type(e).__name__ for e in extracts})
            raise ExportError(
                f"model: only hard extract layers (a retention configuration) export, got {kinds}; derive "
                "a retention from the configuration search and re-patch with it"
            )
        retention = [e.retention for e in extracts]
        if any(isinstance(r, float) for r in retention):
            raise ExportError(
                f"model: retention {retention} is fractions of each row's length, which do not export (each "
                "row's count is rounded from its length); re-patch with counts, e.g. "
                "powerbert_kernels.models.keep_counts(retention, N) for a typical length N"
            )
    if type(model).__name__.endswith("ForMultipleChoice"):
        raise ExportError(
            f"model: {type(model).__name__} takes (batch, choices, seq_len) inputs; export the bare encoder "
            "or a sequence classification head"
        )


def _input_names(model: nn.Module) -> list[str]:
    names = ["input_ids", "attention_mask"]
    # RoBERTa-style models have a single token type (type_vocab_size 1) and tokenizers that omit them.
    if getattr(model.config, "type_vocab_size", 0) > 1:
        names.append("token_type_ids")
    return names


def _is_bare(model: nn.Module) -> bool:
    adapter = adapter_for(model)
    return adapter.base_model(model) is model


def output_names(model: nn.Module) -> list[str]:
    """The outputs of the exported model: ``logits`` for a task head, else ``last_hidden_state`` (and
    ``kept_indices`` when patched)."""
    if not _is_bare(model):
        return ["logits"]
    return ["last_hidden_state", "kept_indices"] if is_patched(model) else ["last_hidden_state"]


class _ExportInterface(nn.Module):
    """The model with positional tensor inputs and tensor outputs, as an exported graph has them."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.input_names = _input_names(model)
        self.output_names = output_names(model)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, ...]:
        """input_ids, attention_mask, token_type_ids: (B, N) int64 -> the tensors named ``output_names``."""
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            inputs["token_type_ids"] = token_type_ids
        out = self.model(**inputs, return_dict=True)
        return tuple(getattr(out, name) for name in self.output_names)


def example_inputs(
    model: nn.Module,
    batch: int = 2,
    seq_len: int = 16,
    *,
    padding: str = "right",
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """Random inputs in the model's interface, on its device, with ragged rows.

    Args:
        model: the model they are for (its vocabulary and token types).
        batch, seq_len: the padded shape (B, N).
        padding: ``"right"`` or ``"left"``: which end of the shorter rows holds the padding. Row ``i``
            has ``N - (i * 7) % (N // 2)`` real tokens, the first of them the CLS id.

    Returns:
        ``input_ids``, ``attention_mask`` (int64, (B, N)) and ``token_type_ids`` where the model has them.
    """
    if padding not in ("right", "left"):
        raise ValueError(f"padding must be 'right' or 'left', got {padding!r}")
    device = next(model.parameters()).device
    vocab = model.config.vocab_size
    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(min(1000, vocab - 1), vocab, (batch, seq_len), generator=g)
    attention_mask = torch.zeros(batch, seq_len, dtype=torch.long)
    cls_id = getattr(model.config, "cls_token_id", None) or min(101, vocab - 1)
    for i in range(batch):
        real = seq_len - (i * 7) % max(1, seq_len // 2)
        start = 0 if padding == "right" else seq_len - real
        attention_mask[i, start : start + real] = 1
        input_ids[i, start] = cls_id
    inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
    if "token_type_ids" in _input_names(model):
        inputs["token_type_ids"] = torch.zeros(batch, seq_len, dtype=torch.long)
    return {name: t.to(device) for name, t in inputs.items()}


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    # Exports describe inference: dropout must not enter the graph. The caller's mode is restored.
    training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(training)


def _export(model: nn.Module, decompose: bool) -> torch.export.ExportedProgram:
    interface = _ExportInterface(model)
    max_len = int(getattr(model.config, "max_position_embeddings", 512))
    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    sequence = torch.export.Dim("sequence", min=2, max=max_len)
    inputs = example_inputs(model, batch=2, seq_len=min(16, max_len))
    args = tuple(inputs[name] for name in interface.input_names)
    with _eval_mode(model), torch.no_grad():
        program = torch.export.export(interface, args, dynamic_shapes=tuple({0: batch, 1: sequence} for _ in args))
    if decompose:
        table = torch.export.default_decompositions()
        table.update(DECOMPOSITIONS)
        program = program.run_decompositions(table)
    return program


def export_program(model: nn.Module, *, decompose: bool = False) -> torch.export.ExportedProgram:
    """``torch.export`` a PoWER-BERT model with dynamic batch and sequence dimensions.

    The program takes the model's inputs positionally (``input_ids``, ``attention_mask`` and
    ``token_type_ids`` where the model has them, each (B, N) int64) for any B >= 1 and 2 <= N <= the
    model's maximum positions, and returns ``(logits,)`` for a task head, ``(last_hidden_state,
    kept_indices)`` for a patched bare encoder.

    Args:
        model: a model patched with int retention (or, for comparisons, a stock supported model).
        decompose: rewrite the custom ops into standard PyTorch operators
            (:data:`~powerbert_kernels.ops.decompositions.DECOMPOSITIONS`), as ONNX export needs.

    Returns:
        The exported program; ``program.module()(*inputs)`` runs it.
    """
    _check_exportable(model, require_patched=False)
    return _export(model, decompose)


def _rename_dims(proto, names: Mapping[str, str]) -> None:
    # The exporter names dynamic dimensions after its symbols (s18, min(4, s41)); give the inputs' ones
    # the names a serving stack shows, inside every expression that uses them.
    if not names:
        return
    pattern = re.compile(r"\b(" + "|".join(map(re.escape, names)) + r")\b")
    for value in [*proto.graph.input, *proto.graph.output, *proto.graph.value_info]:
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param:
                dim.dim_param = pattern.sub(lambda m: names[m.group(1)], dim.dim_param)


def _foreign_ops(proto) -> list[str]:
    standard = ("", "ai.onnx")
    found = {f"{n.domain}::{n.op_type}" for n in proto.graph.node if n.domain not in standard}
    for function in proto.functions:
        found.update(f"{n.domain}::{n.op_type}" for n in function.node if n.domain not in standard)
    return sorted(found)


def _write_onnx(model: nn.Module, path: Path, opset: int) -> None:
    import onnx

    program = _export(model, decompose=True)
    interface_inputs = _input_names(model)
    onnx_program = torch.onnx.export(
        program,
        dynamo=True,
        opset_version=opset,
        input_names=interface_inputs,
        output_names=output_names(model),
        verbose=False,
    )
    # One self-contained file (protobuf's 2 GiB limit holds up to BERT-large), so that the rename into
    # place moves everything.
    onnx_program.save(str(path), external_data=False)
    proto = onnx.load(str(path), load_external_data=False)
    foreign = _foreign_ops(proto)
    if foreign:
        raise ExportError(f"the exported graph uses operators outside the standard ONNX domain: {foreign}")
    ids_dims = proto.graph.input[0].type.tensor_type.shape.dim
    names = {d.dim_param: new for d, new in zip(ids_dims, ("batch", "sequence"), strict=True) if d.dim_param}
    _rename_dims(proto, names)
    onnx.save(proto, str(path))
    onnx.checker.check_model(str(path))


def verification_inputs(model: nn.Module) -> list[dict[str, torch.Tensor]]:
    """The inputs :func:`export_onnx` checks an export on: right and left padding, batch 1, two lengths."""
    max_len = int(getattr(model.config, "max_position_embeddings", 512))
    return [
        example_inputs(model, 3, min(37, max_len), padding="right", seed=1),
        example_inputs(model, 2, min(21, max_len), padding="left", seed=2),
        example_inputs(model, 1, min(11, max_len), seed=3),
    ]


def onnx_session(path: str | os.PathLike, *, threads: int | None = None):
    """An ONNX Runtime CPU session on ``path`` with full graph optimisations (``threads``: intra-op threads)."""
    _require_onnx()
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def verify_onnx(
    path: str | os.PathLike,
    model: nn.Module,
    inputs: Sequence[Mapping[str, torch.Tensor]] | None = None,
    *,
    atol: float = VERIFY_ATOL,
) -> float:
    """Run the ONNX file under ONNX Runtime (CPU) and compare it with ``model`` in PyTorch.

    Args:
        path: the ONNX file.
        model: the PyTorch model it was exported from.
        inputs: batches in the model's interface (default: :func:`verification_inputs`).
        atol: the largest absolute difference allowed on float outputs.

    Returns:
        The largest absolute difference seen on float outputs.

    Raises:
        ExportError: a float output differs by more than ``atol``, or kept indices differ.
    """
    session = onnx_session(path)
    interface = _ExportInterface(model)
    worst = 0.0
    with _eval_mode(model), torch.no_grad():
        for batch in inputs if inputs is not None else verification_inputs(model):
            feed = {name: batch[name].cpu().numpy() for name in interface.input_names}
            got = session.run(interface.output_names, feed)
            expected = interface(*(batch[name] for name in interface.input_names))
            for name, ours, theirs in zip(interface.output_names, expected, got, strict=True):
                theirs = torch.from_numpy(theirs)
                ours = ours.detach().cpu()
                shape = tuple(batch["input_ids"].shape)
                if ours.shape != theirs.shape:
                    raise ExportError(f"{name}: ONNX Runtime gave shape {tuple(theirs.shape)}, PyTorch {ours.shape}")
                if not ours.is_floating_point():
                    if not torch.equal(ours, theirs):
                        raise ExportError(f"{name} differ between ONNX Runtime and PyTorch on inputs of shape {shape}")
                    continue
                diff = (ours.float() - theirs.float()).abs().max().item()
                worst = max(worst, diff)
                if not diff <= atol:
                    raise ExportError(
                        f"{name}: ONNX Runtime differs from PyTorch by {diff:.3g} (allowed {atol:g}) on inputs "
                        f"of shape {shape}"
                    )
    return worst


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    opset: int = DEFAULT_OPSET,
    verify: bool = True,
    atol: float = VERIFY_ATOL,
    allow_unpatched: bool = False,
) -> Path:
    """Write a PoWER-BERT model as an ONNX file of standard operators, with dynamic batch and sequence.

    Inputs ``input_ids``, ``attention_mask`` (and ``token_type_ids`` where the model has them), each
    (batch, sequence) int64. Outputs ``logits`` for a task head; ``last_hidden_state`` (batch, l_L, D)
    and ``kept_indices`` (batch, l_L) int64 for a bare encoder. The file appears only once the export
    succeeded, passed ``onnx.checker``, holds no custom-domain operator and (``verify``) ONNX Runtime
    reproduced the PyTorch model within ``atol`` on :func:`verification_inputs`.

    Args:
        model: a model patched by :func:`~powerbert_kernels.apply_power_bert` with int retention.
        path: the ONNX file to write (replaced if it exists).
        opset: the ONNX opset (18 or newer).
        verify: compare ONNX Runtime with PyTorch before the file is written.
        atol: the largest absolute difference ``verify`` accepts.
        allow_unpatched: export a stock model the same way (for a like-for-like baseline).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        ValueError: ``model`` is not patched. ExportError: fraction retention or another configuration
        that does not export, or a failed check. ImportError: the ``[onnx]`` extra is missing.
    """
    _require_onnx()
    _check_exportable(model, require_patched=not allow_unpatched)
    if isinstance(opset, bool) or not isinstance(opset, int) or opset < DEFAULT_OPSET:
        raise ValueError(f"opset must be an int >= {DEFAULT_OPSET}, got {opset!r}")
    path = Path(path)
    if not path.parent.is_dir():
        raise FileNotFoundError(f"path: the folder {str(path.parent)!r} does not exist")
    # Written and checked in a private folder beside the target, then renamed: the target never holds a
    # half-written or unverified file.
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".powerbert-export-") as tmp:
        tmp_path = Path(tmp) / path.name
        _write_onnx(model, tmp_path, opset)
        if verify:
            verify_onnx(tmp_path, model, atol=atol)
        os.replace(tmp_path, path)
    return path
