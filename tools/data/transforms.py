"""Generic CT transforms shared by the bundles: windowing, body mask, 2D slices from volumes.

Windowing itself is MONAI's ``ScaleIntensityRanged`` (``a_min = level - width / 2``,
``a_max = level + width / 2``); :func:`unit_to_hu` maps a windowed prediction back to HU.

Array conventions: channel first, ``(C, H, W)`` for slices and ``(C, H, W, D)`` for volumes, axial
slices along the last axis. Images are in HU until a window transform rescales them.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, Randomizable
from monai.utils import convert_to_numpy
from scipy import ndimage

__all__ = [
    "hu_to_unit",
    "unit_to_hu",
    "body_mask",
    "BodyMaskd",
    "RandSliced",
    "ExtractSliced",
    "slice_entries",
    "like",
]


# --------------------------------------------------------------------------- windowing
def hu_to_unit(x, a_min: float, a_max: float, clip: bool = True):
    """HU -> [0, 1] over the window ``[a_min, a_max]`` (same as ``ScaleIntensityRange`` to 0..1)."""
    y = (x - a_min) / (a_max - a_min)
    if clip:
        y = y.clip(0.0, 1.0) if isinstance(y, np.ndarray) else torch.clamp(y, 0.0, 1.0)
    return y


def unit_to_hu(y, a_min: float, a_max: float, clip: bool = True):
    """[0, 1] -> HU, the inverse of :func:`hu_to_unit`; values are clipped to the window when ``clip``."""
    if clip:
        y = y.clip(0.0, 1.0) if isinstance(y, np.ndarray) else torch.clamp(y, 0.0, 1.0)
    return y * (a_max - a_min) + a_min


# --------------------------------------------------------------------------- body mask
def body_mask(image_hu: np.ndarray, threshold_hu: float = -500.0, closing_iterations: int = 2) -> np.ndarray:
    """Body of a CT as a boolean array: threshold, close, keep the largest component, fill holes.

    Works per axial slice on ``(H, W, D)`` volumes (holes such as lungs and bowel gas are filled
    within each slice) and directly on ``(H, W)`` slices.
    """
    img = np.asarray(image_hu)
    if img.ndim == 3:
        return np.stack([body_mask(img[..., k], threshold_hu, closing_iterations) for k in range(img.shape[-1])], -1)
    if img.ndim != 2:
        raise ValueError(f"body_mask expects a (H, W) slice or (H, W, D) volume, got shape {img.shape}")
    fg = img > threshold_hu
    if closing_iterations:
        fg = ndimage.binary_closing(fg, iterations=closing_iterations, border_value=0) | fg
    labels, n = ndimage.label(fg)
    if n == 0:
        return fg
    sizes = ndimage.sum_labels(fg, labels, index=np.arange(1, n + 1))
    largest = labels == (int(np.argmax(sizes)) + 1)
    return ndimage.binary_fill_holes(largest)


class BodyMaskd(MapTransform):
    """Add ``output_key``: the body mask (``(C, ...)`` uint8) of the CT in ``keys`` (HU).

    The "body" class of the abdominal semantic-synthesis paper; computed before any windowing.
    """

    def __init__(self, keys: KeysCollection, output_key: str = "body", threshold_hu: float = -500.0,
                 closing_iterations: int = 2, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.output_key = output_key
        self.threshold_hu = threshold_hu
        self.closing_iterations = closing_iterations

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            img = d[key]
            arr = convert_to_numpy(img)
            mask = np.stack([body_mask(c, self.threshold_hu, self.closing_iterations) for c in arr]).astype(np.uint8)
            d[self.output_key] = like(img, mask)
        return d


# --------------------------------------------------------------------------- 2D slices from volumes
def _take_slice(img, index: int, axis: int):
    """Slice ``index`` along spatial ``axis`` of a channel-first array; MetaTensors keep their metadata and
    get an in-plane affine (the volume's affine stays under ``volume_affine``)."""
    if isinstance(img, MetaTensor):
        nd = img.ndim - 1
        ax = axis % nd
        arr = img.as_tensor().select(ax + 1, index)
        vol_aff = img.affine.clone().to(torch.float64)
        keep = [i for i in range(nd) if i != ax]
        aff = torch.eye(nd, dtype=torch.float64)
        aff[: nd - 1, : nd - 1] = vol_aff[keep][:, keep]
        origin = vol_aff[:nd, nd] + vol_aff[:nd, ax] * index
        aff[: nd - 1, nd - 1] = origin[keep]
        meta = dict(img.meta)
        meta["volume_affine"] = vol_aff
        meta["slice_index"] = int(index)
        meta.pop("affine", None)
        return MetaTensor(arr, affine=aff, meta=meta)
    if isinstance(img, torch.Tensor):
        return img.select((axis % (img.ndim - 1)) + 1, index)
    arr = np.asarray(img)
    return np.take(arr, index, axis=(axis % (arr.ndim - 1)) + 1)


def _volume_spacing(img, axis: int) -> tuple[float, ...] | None:
    if not isinstance(img, MetaTensor):
        return None
    nd = img.ndim - 1
    spacing = torch.linalg.norm(img.affine[:nd, :nd].to(torch.float64), dim=0).tolist()
    return tuple(float(s) for i, s in enumerate(spacing) if i != axis % nd)


class ExtractSliced(MapTransform):
    """Take the axial slice ``data[slice_key]`` along ``axis`` from every volume in ``keys``.

    Adds ``spacing`` (in-plane voxel size in mm, from the first key's affine) and keeps every other key
    (``case_id`` ...). Volumes are ``(C, H, W, D)``; slices come out ``(C, H, W)``.
    """

    def __init__(self, keys: KeysCollection, slice_key: str = "slice_index", axis: int = -1,
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.slice_key = slice_key
        self.axis = axis

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        if self.slice_key not in d:
            raise KeyError(f"ExtractSliced: key '{self.slice_key}' missing (case {d.get('case_id', '?')})")
        self._extract(d, int(d[self.slice_key]))
        return d

    def _extract(self, d: dict, index: int) -> None:
        first = True
        for key in self.key_iterator(d):
            depth = d[key].shape[(self.axis % (d[key].ndim - 1)) + 1]
            if not 0 <= index < depth:
                raise IndexError(f"slice {index} out of range for key '{key}' with {depth} slices "
                                 f"(case {d.get('case_id', '?')})")
            if first:
                spacing = _volume_spacing(d[key], self.axis)
                if spacing is not None:
                    d["spacing"] = torch.tensor(spacing, dtype=torch.float32)
                first = False
            d[key] = _take_slice(d[key], index, self.axis)
        d[self.slice_key] = index


class RandSliced(Randomizable, ExtractSliced):
    """Draw one random axial slice per call; with ``mask_key``, only among slices where that mask is non-zero.

    Writes the chosen index to ``slice_key`` (so case id and slice index travel with the sample).
    A case whose mask is empty everywhere raises a ``ValueError`` naming the case.
    """

    def __init__(self, keys: KeysCollection, mask_key: str | None = None, slice_key: str = "slice_index",
                 axis: int = -1, allow_missing_keys: bool = False) -> None:
        ExtractSliced.__init__(self, keys, slice_key, axis, allow_missing_keys)
        self.mask_key = mask_key

    def randomize(self, data: Sequence[int]) -> int:
        return int(data[self.R.randint(len(data))])

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        ref = d[self.mask_key] if self.mask_key is not None else d[self.first_key(d)]
        ax = (self.axis % (ref.ndim - 1)) + 1
        if self.mask_key is not None:
            m = convert_to_numpy(ref) != 0
            other = tuple(i for i in range(m.ndim) if i != ax)
            candidates = np.nonzero(m.any(axis=other))[0]
            if len(candidates) == 0:
                raise ValueError(f"RandSliced: mask '{self.mask_key}' is empty in case {d.get('case_id', '?')}")
        else:
            candidates = np.arange(ref.shape[ax])
        self._extract(d, self.randomize(candidates))
        return d


def slice_entries(entries: Sequence[dict], mask_key: str | None = None, axis: int = -1,
                  axcodes: str | None = "RAS", slice_key: str = "slice_index") -> list[dict]:
    """Expand volume entries into one entry per axial slice (with ``mask_key`` foreground, if given).

    The slice index refers to the volume as the pipeline sees it after ``Orientationd(axcodes)``
    (``None``: as stored). Used for validation and evaluation, where every slice is visited once.
    """
    from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, Orientationd

    out: list[dict] = []
    for entry in entries:
        key = mask_key
        if key is None:
            key = next(k for k in entry if isinstance(entry[k], str) and entry[k].endswith((".nii", ".nii.gz")))
        xforms = [LoadImaged(key, image_only=True), EnsureChannelFirstd(key)]
        if axcodes:
            xforms.append(Orientationd(key, axcodes=axcodes))
        vol = convert_to_numpy(Compose(xforms)({key: entry[key]})[key])
        ax = (axis % (vol.ndim - 1)) + 1
        if mask_key is None:
            indices = range(vol.shape[ax])
        else:
            other = tuple(i for i in range(vol.ndim) if i != ax)
            indices = np.nonzero((vol != 0).any(axis=other))[0]
        out.extend({**entry, slice_key: int(i)} for i in indices)
    return out


# --------------------------------------------------------------------------- helpers
def like(ref, arr: np.ndarray):
    """Wrap ``arr`` like ``ref``: a MetaTensor with ``ref``'s metadata, or a plain tensor/array."""
    if isinstance(ref, MetaTensor):
        meta = {k: v for k, v in ref.meta.items() if k != "affine"}
        return MetaTensor(torch.as_tensor(arr), affine=ref.affine, meta=meta,
                          applied_operations=list(ref.applied_operations))
    if isinstance(ref, torch.Tensor):
        return torch.as_tensor(arr, device=ref.device)
    return arr
