"""Overlap of two binary masks (numpy), as the AortaDiff evaluation reports it per slice and per case."""

from __future__ import annotations

import numpy as np

__all__ = ["mask_dice"]


def mask_dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice coefficient ``2 |A and B| / (|A| + |B|)`` of two masks of the same shape (voxels > 0 are foreground).

    Empty masks: 0.0 when exactly one is empty (a structure predicted where the reference has none, or
    missed, counts as a failure) and NaN when both are empty (nothing to score; NaN-aware means skip it).
    MONAI's ``compute_dice`` gives NaN for any empty reference (``ignore_empty=True``) or 1.0 when both are
    empty (``ignore_empty=False``), hence this function.
    """
    a, b = np.asarray(a) > 0, np.asarray(b) > 0
    if a.shape != b.shape:
        raise ValueError(f"mask_dice: masks have different shapes {a.shape} and {b.shape}")
    total = int(np.count_nonzero(a)) + int(np.count_nonzero(b))
    return float("nan") if total == 0 else 2.0 * int(np.count_nonzero(a & b)) / total
