"""Deterministic choice of axial slices for validation and evaluation of 2D slice models."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from tools.data.transforms import slice_entries

__all__ = ["select_slices"]


def select_slices(
    entries: Sequence[dict], num_slices: int | None = None, mask_key: str = "label", axcodes: str | None = "RAS"
) -> list[dict]:
    """One entry per axial slice with ``mask_key`` foreground, thinned to ``num_slices`` evenly spaced ones.

    Args:
        entries: volume entries (``{"image": path, "label": path, ...}``) from a datalist split.
        num_slices: how many slices to keep (``None`` or <= 0: all). Evenly spaced over the ordered list of
            (case, slice), so every case contributes in proportion to its labelled extent.
        mask_key: key of the label map whose non-empty slices are eligible.
        axcodes: orientation the slice index refers to (as the pipeline's ``Orientationd``).
    Returns:
        entries with a ``slice_index`` key, for ``tools.data.transforms.ExtractSliced``.
    """
    if not entries:
        raise ValueError("select_slices: no entries given (is the datalist split empty?)")
    slices = slice_entries(entries, mask_key=mask_key, axcodes=axcodes)
    if num_slices is None or num_slices <= 0 or num_slices >= len(slices):
        return slices
    idx = np.unique(np.linspace(0, len(slices) - 1, int(num_slices)).round().astype(int))
    return [slices[i] for i in idx]
