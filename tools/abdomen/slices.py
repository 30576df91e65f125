"""Deterministic choice of axial slices for validation and evaluation of 2D slice models."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, Orientationd
from monai.utils import convert_to_numpy

from tools.data.transforms import slice_entries

__all__ = ["select_slices", "body_slice_entries"]


def body_slice_entries(
    entries: Sequence[dict], body_threshold_hu: float = -500.0, image_key: str = "image", axcodes: str | None = "RAS"
) -> list[dict]:
    """One entry per axial slice that lies inside the body: some voxel of ``image_key`` (HU) above the threshold.

    The same threshold as the pipeline's ``BodyMaskd`` (whose mask is non-empty exactly when a voxel exceeds it).
    """
    out: list[dict] = []
    for entry in entries:
        xforms = [LoadImaged(image_key, image_only=True), EnsureChannelFirstd(image_key)]
        if axcodes:
            xforms.append(Orientationd(image_key, axcodes=axcodes))
        vol = convert_to_numpy(Compose(xforms)({image_key: entry[image_key]})[image_key])
        inside = np.nonzero((vol > body_threshold_hu).any(axis=tuple(range(vol.ndim - 1))))[0]
        out.extend({**entry, "slice_index": int(i)} for i in inside)
    return out


def select_slices(
    entries: Sequence[dict],
    num_slices: int | None = None,
    mask_key: str = "label",
    axcodes: str | None = "RAS",
    body_threshold_hu: float = -500.0,
) -> list[dict]:
    """One entry per eligible axial slice, thinned to ``num_slices`` evenly spaced ones.

    Args:
        entries: volume entries (``{"image": path, "label": path, ...}``) from a datalist split.
        num_slices: how many slices to keep (``None`` or <= 0: all). Evenly spaced over the ordered list of
            (case, slice), so every case contributes in proportion to its eligible extent.
        mask_key: ``"body"``: every slice inside the body (:func:`body_slice_entries`); otherwise the key of a
            label map whose non-empty slices are eligible (``"label"``: slices with an organ).
        axcodes: orientation the slice index refers to (as the pipeline's ``Orientationd``).
        body_threshold_hu: HU threshold of the body (``mask_key="body"`` only).
    Returns:
        entries with a ``slice_index`` key, for ``tools.data.transforms.ExtractSliced``.
    """
    if not entries:
        raise ValueError("select_slices: no entries given (is the datalist split empty?)")
    if mask_key == "body":
        slices = body_slice_entries(entries, body_threshold_hu, axcodes=axcodes)
    else:
        slices = slice_entries(entries, mask_key=mask_key, axcodes=axcodes)
    if num_slices is None or num_slices <= 0 or num_slices >= len(slices):
        return slices
    idx = np.unique(np.linspace(0, len(slices) - 1, int(num_slices)).round().astype(int))
    return [slices[i] for i in idx]
