"""AortaDiff's mask transforms: the lumen as a signed distance field and the aorta-centred ROI.

The mask head regresses a normalised signed distance field (SDF) of the lumen instead of a binary mask;
:func:`sdf_decode` turns a predicted SDF back into a mask (``sdf < 0``). The ROI restricts LPIPS,
RePaint's inpainting region and the background fusion to the aorta and a margin around it.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform
from monai.utils import convert_to_numpy
from monai.transforms.utils import distance_transform_edt
from scipy import ndimage

from tools.data.transforms import like

__all__ = ["sdf_encode", "binary_encode", "sdf_decode", "SignedDistanced", "AortaMaskd", "AortaROId", "MASK_ENCODINGS"]


# --------------------------------------------------------------------------- signed distance field
def sdf_encode(mask: np.ndarray | torch.Tensor, spacing: Sequence[float] | None = None) -> np.ndarray:
    """Normalised signed distance field of a binary mask ``(C, *spatial)``, per channel.

    ``sdf = d_out / max(d_out) - d_in / max(d_in)``, where ``d_in`` is each inside voxel's Euclidean
    distance to the nearest outside voxel and ``d_out`` each outside voxel's distance to the nearest
    inside voxel (in mm when ``spacing`` is given, voxels otherwise). Inside is negative, outside
    positive, values in [-1, 1]; every inside voxel is < 0 and every outside voxel > 0, so
    :func:`sdf_decode` recovers the mask exactly. An empty channel gives +1 everywhere, a full one -1.
    """
    m = convert_to_numpy(mask).astype(bool)
    out = np.empty(m.shape, dtype=np.float32)
    for c in range(m.shape[0]):
        inside = m[c]
        if not inside.any():
            out[c] = 1.0
            continue
        if inside.all():
            out[c] = -1.0
            continue
        d_in = distance_transform_edt(inside[None].astype(np.uint8), sampling=spacing)[0]
        d_out = distance_transform_edt((~inside)[None].astype(np.uint8), sampling=spacing)[0]
        out[c] = d_out / d_out.max() - d_in / d_in.max()
    return out


def sdf_decode(sdf):
    """Binary mask (same type as the input, uint8 / float) from a signed distance field: ``sdf < 0``."""
    if isinstance(sdf, torch.Tensor):
        return (sdf < 0).to(torch.float32)
    return (np.asarray(sdf) < 0).astype(np.uint8)


def binary_encode(mask: np.ndarray | torch.Tensor) -> np.ndarray:
    """The binary-mask ablation of :func:`sdf_encode`: -1 inside, +1 outside (same sign, no distance)."""
    return np.where(convert_to_numpy(mask).astype(bool), -1.0, 1.0).astype(np.float32)


MASK_ENCODINGS = {"sdf": sdf_encode, "binary": lambda mask, spacing=None: binary_encode(mask)}


class SignedDistanced(MapTransform):
    """Encode binary masks in ``keys`` as normalised SDFs (see :func:`sdf_encode`).

    ``encoding="binary"`` is the paper's ablation: the mask head regresses the mask itself, as -1 inside and
    +1 outside (:func:`binary_encode`), decoded by the same ``sdf < 0``.
    ``per_slice=True`` encodes each axial slice (last axis) of a volume separately, as a 2D model sees it.
    The result replaces the key, or goes to ``output_key`` (one key only) when given.
    """

    def __init__(self, keys: KeysCollection, output_key: str | None = None, per_slice: bool = False,
                 encoding: str = "sdf", allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        if output_key is not None and len(self.keys) != 1:
            raise ValueError("SignedDistanced: output_key needs exactly one input key")
        if encoding not in MASK_ENCODINGS:
            raise ValueError(f"mask_encoding must be one of {sorted(MASK_ENCODINGS)}, got {encoding!r}")
        self.output_key = output_key
        self.per_slice = per_slice
        self.encode = MASK_ENCODINGS[encoding]

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            arr = convert_to_numpy(d[key])
            if self.per_slice and arr.ndim == 4:
                sdf = np.stack([self.encode(arr[..., k]) for k in range(arr.shape[-1])], -1)
            else:
                sdf = self.encode(arr)
            d[self.output_key or key] = like(d[key], sdf)
        return d


# --------------------------------------------------------------------------- aorta mask and ROI
class AortaMaskd(MapTransform):
    """Binary aorta mask (uint8, 1 = aorta) from a mask or a multi-label map.

    ``label=0``: every voxel > 0 is aorta (a binary mask as given); ``label=N``: the voxels of class N of a
    label map (TotalSegmentator's ``total`` task: 52). Geometry and metadata are kept.
    """

    def __init__(self, keys: KeysCollection, label: int = 0, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.label = int(label)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            x = torch.as_tensor(d[key])
            m = (x.round() == self.label) if self.label else (x > 0)
            d[key] = like(d[key], m.to(torch.uint8))
        return d


class AortaROId(MapTransform):
    """Add ``output_key``: the aorta-centred region of interest, the aorta mask dilated by ``margin`` pixels.

    Dilation is in-plane (per axial slice) with a disk, so that a 2D model's ROI matches what a 3D volume
    gives slice by slice. ``margin=0`` returns the aorta mask itself. ``whole_slice=True`` (the paper's
    "no aorta restriction" ablation) makes the ROI every pixel of each slice that holds aorta: LPIPS then
    covers the whole slice and RePaint generates the whole slice (no fusion with the NCCT).
    """

    def __init__(self, keys: KeysCollection, output_key: str = "roi", margin: int = 5, whole_slice: bool = False,
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.output_key = output_key
        self.margin = int(margin)
        self.whole_slice = bool(whole_slice)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            m = convert_to_numpy(d[key]) > 0
            if self.whole_slice:
                m = np.broadcast_to(m.any(axis=(1, 2), keepdims=True), m.shape)  # (C, H, W[, D]): per axial slice
            elif self.margin > 0:
                r = self.margin
                yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
                disk = (yy**2 + xx**2) <= r * r
                struct = disk.reshape(disk.shape + (1,) * (m.ndim - 3))
                m = np.stack([ndimage.binary_dilation(c, structure=struct) for c in m])
            d[self.output_key] = like(d[key], m.astype(np.float32))
        return d
