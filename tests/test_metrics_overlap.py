"""tools.metrics.overlap.mask_dice against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tools.metrics.overlap import mask_dice


def test_mask_dice_hand_computed():
    a = np.zeros((4, 4), np.uint8)
    b = np.zeros((4, 4), np.uint8)
    a[0, :3] = 1  # 3 pixels
    b[0, 1:] = 1  # 3 pixels, 2 shared with a
    assert mask_dice(a, b) == pytest.approx(2 * 2 / (3 + 3))  # 0.6667
    assert mask_dice(a, a) == 1.0
    c = np.zeros((2, 2, 2), bool)
    d = np.zeros((2, 2, 2), bool)
    c[0, 0, 0] = d[0, 0, 0] = d[1, 1, 1] = True  # 3D: |C| = 1, |D| = 2, 1 shared
    assert mask_dice(c, d) == pytest.approx(2 / 3)
    assert mask_dice(np.array([0, 2, 0]), np.array([0, 1, 1])) == pytest.approx(2 * 1 / (1 + 2))  # labels > 0


def test_mask_dice_empty_masks():
    empty, one = np.zeros((3, 3)), np.eye(3)
    assert mask_dice(one, empty) == 0.0  # predicted where the reference has nothing: a failure
    assert mask_dice(empty, one) == 0.0  # missed
    assert math.isnan(mask_dice(empty, empty))  # nothing to score
    with pytest.raises(ValueError, match="different shapes"):
        mask_dice(np.zeros(3), np.zeros(4))
