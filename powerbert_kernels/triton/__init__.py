"""Triton kernels for the PoWER-BERT ops (one file per kernel)."""

from __future__ import annotations


def register() -> None:
    """Register the Triton implementations with the ops dispatcher."""
