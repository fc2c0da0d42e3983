"""The shared error bound: what it accepts, and what its failure message shows."""

from __future__ import annotations

import pytest
import torch
from tolerance import assert_close_to_reference


def test_bound_is_twice_the_same_dtype_error_plus_the_floor():
    reference = torch.zeros(2, 3)
    same_dtype = reference.clone()
    same_dtype[0, 0] = 0.01
    within = reference + 0.02 + 0.9e-3  # 2 x 0.01 + float16's floor 1e-3
    assert_close_to_reference("out", within, reference, same_dtype, torch.float16)
    outside = reference.clone()
    outside[1, 2] = 0.03
    outside[0, 1] = float("nan")
    with pytest.raises(AssertionError) as err:
        assert_close_to_reference("out", outside, reference, same_dtype, torch.float16)
    message = str(err.value)
    assert message.startswith("out: 2 of 6 elements differ from the reference by more than 0.021")
    assert "at (0, 1): got nan, reference 0, |diff| inf" in message
    assert "at (1, 2): got 0.03, reference 0, |diff| 0.03" in message
