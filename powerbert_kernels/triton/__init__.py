"""Triton kernels for the PoWER-BERT ops (one file per kernel).

- :mod:`.attention_significance`: fused attention + significance (flash-style, never writes the
  B x H x N x N probabilities);
- :mod:`.select_gather`: rank-based selection (no sort) and gather of the kept vectors;
- :mod:`.backend`: the ``triton`` implementations of the public ops, loaded by the ops dispatcher on
  first use.
"""
