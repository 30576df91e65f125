"""Label maps of the abdominal semantic-synthesis model: 15 AMOS22 organs plus a ``body`` class.

Class ids (K = 17 one-hot channels): 0 background (air / outside the body), 1..15 the AMOS22 organs
(:data:`tools.data.label_maps.AMOS_LABELS`), 16 ``body`` = every voxel inside the body that is not one of
the 15 organs (fat, muscle, bone, bowel, ...).

- Training: the body comes from the CT itself (threshold and morphology, the shared
  :class:`tools.data.transforms.BodyMaskd`); :class:`AddBodyClassd` writes id 16 where the body mask is set
  and no organ is labelled.
- Inference from a label map alone (no CT): if the map already has id 16 it is used as is; otherwise
  :class:`EnsureBodyClassd` approximates the body per axial slice as the convex hull of the organs grown by
  ``margin_mm`` (a stand-in; pass a real body mask for faithful anatomy) and logs that it did so.
- Label maps in TotalSegmentator ids are converted with ``RemapLabelsd(TOTALSEG_V2_TO_AMOS)`` from
  :mod:`tools.data.label_maps` (selected by the bundle's ``label_mapping`` key).
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform
from monai.utils import convert_to_dst_type, convert_to_numpy
from scipy import ndimage
from skimage.morphology import convex_hull_image

from tools.data.label_maps import AMOS_LABELS, TOTALSEG_V2_TO_AMOS

__all__ = [
    "BODY_ID",
    "NUM_CLASSES",
    "CLASS_NAMES",
    "ORGAN_IDS",
    "LABEL_MAPPINGS",
    "ORGAN_MAPPING",
    "CheckLabelIdsd",
    "AddBodyClassd",
    "approximate_body",
    "EnsureBodyClassd",
]

logger = logging.getLogger(__name__)

BODY_ID = 16
NUM_CLASSES = 17  # one-hot channels: background, 15 organs, body
CLASS_NAMES: dict[int, str] = {**AMOS_LABELS, BODY_ID: "body"}
ORGAN_IDS = tuple(range(1, 16))
# label_mapping key of the bundle -> id table into the model's ids ("amos": identity incl. body 16)
LABEL_MAPPINGS: dict[str, dict[int, int]] = {
    "amos": {i: i for i in range(NUM_CLASSES)},
    "totalsegmentator": dict(TOTALSEG_V2_TO_AMOS),
}
# ids kept by the downstream organ segmenter: the 15 organs; body (16) becomes background
ORGAN_MAPPING: dict[int, int] = {i: i for i in ORGAN_IDS}


def _source(d: Mapping, key: Hashable) -> str:
    img = d[key]
    if isinstance(img, MetaTensor):
        return str(img.meta.get("filename_or_obj", key))
    return str(key)


class CheckLabelIdsd(MapTransform):
    """Raise ``ValueError`` naming the file when a label map holds ids outside ``0..max_id`` or non-integers
    (or, with ``ndim``, is not a channel-first single-channel array of that many dims)."""

    def __init__(
        self, keys: KeysCollection, max_id: int = BODY_ID, ndim: int | None = None, allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.max_id = max_id
        self.ndim = ndim

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            arr = convert_to_numpy(d[key])
            if self.ndim is not None and (arr.ndim != self.ndim or arr.shape[0] != 1):
                raise ValueError(
                    f"label map '{_source(d, key)}' (key '{key}'): expected a single-channel volume of "
                    f"{self.ndim - 1} spatial dims, got array shape {arr.shape}."
                )
            if arr.size and (not np.array_equal(np.rint(arr), arr) or arr.min() < 0 or arr.max() > self.max_id):
                ids = np.unique(arr)[:20]
                raise ValueError(
                    f"label map '{_source(d, key)}' (key '{key}'): expected integer AMOS22 ids 0..{self.max_id} "
                    f"(0 background, 1..15 organs, 16 body), found values {ids.tolist()}; for TotalSegmentator "
                    "label maps set label_mapping to 'totalsegmentator'."
                )
        return d


class AddBodyClassd(MapTransform):
    """Write ``body_id`` into the label map ``keys`` where ``body_key`` is set and no organ is labelled.

    Args:
        keys: label map(s), channel first, AMOS ids 0..15.
        body_key: key of the body mask (e.g. the output of ``BodyMaskd`` on the CT), same shape.
        body_id: id of the body class (16).
    """

    def __init__(
        self, keys: KeysCollection, body_key: str = "body", body_id: int = BODY_ID, allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.body_key = body_key
        self.body_id = body_id

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        d = dict(data)
        body = convert_to_numpy(d[self.body_key]) > 0
        for key in self.key_iterator(d):
            lab = convert_to_numpy(d[key])
            if lab.shape != body.shape:
                raise ValueError(f"AddBodyClassd: '{key}' shape {lab.shape} differs from '{self.body_key}' {body.shape}")
            out = np.where((lab == 0) & body, self.body_id, lab).astype(lab.dtype)
            d[key] = convert_to_dst_type(out, d[key])[0]
        return d


def approximate_body(label: np.ndarray, spacing: tuple[float, float] = (1.0, 1.0), margin_mm: float = 25.0) -> np.ndarray:
    """Approximate body mask of a label map without CT: per slice, convex hull of the labels grown by ``margin_mm``.

    Args:
        label: (H, W) or (H, W, D) label map, axial slices along the last axis.
        spacing: in-plane voxel size (mm) of the first two axes.
        margin_mm: how far the body extends beyond the organs' convex hull.
    Returns:
        boolean mask, same shape. Slices without labels stay empty.
    """
    lab = np.asarray(label)
    if lab.ndim == 3:
        return np.stack([approximate_body(lab[..., k], spacing, margin_mm) for k in range(lab.shape[-1])], -1)
    fg = lab > 0
    if not fg.any():
        return fg
    # work on a grid of about 2 mm pixels (the margin is tens of mm): block-max downsampling
    step = [max(1, int(2.0 // max(float(s), 1e-3))) for s in spacing]
    small = fg[: fg.shape[0] // step[0] * step[0], : fg.shape[1] // step[1] * step[1]]
    small = small.reshape(small.shape[0] // step[0], step[0], small.shape[1] // step[1], step[1]).any(axis=(1, 3))
    if not small.any():
        small, step = fg, [1, 1]
    hull = convex_hull_image(small)
    dist = ndimage.distance_transform_edt(~hull, sampling=(spacing[0] * step[0], spacing[1] * step[1]))
    body_small = dist <= margin_mm
    body = np.repeat(np.repeat(body_small, step[0], axis=0), step[1], axis=1)
    out = np.zeros_like(fg)
    out[: body.shape[0], : body.shape[1]] = body
    if body.shape != fg.shape:  # rows / columns cut by the block size: extend the last ones
        out[body.shape[0] :, : body.shape[1]] = body[-1:, :]
        out[:, body.shape[1] :] = out[:, body.shape[1] - 1 : body.shape[1]]
    return out | fg


class EnsureBodyClassd(MapTransform):
    """Give a label map without a body class (id 16) an approximate one (see :func:`approximate_body`).

    Label maps that already contain id 16 pass unchanged. Works on channel-first volumes (1, H, W, D) or
    slices (1, H, W); the in-plane spacing is read from the MetaTensor affine.
    """

    def __init__(
        self, keys: KeysCollection, margin_mm: float = 25.0, body_id: int = BODY_ID, allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.margin_mm = margin_mm
        self.body_id = body_id

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            img = d[key]
            lab = convert_to_numpy(img)
            if (lab == self.body_id).any():
                continue
            spacing = (1.0, 1.0)
            if isinstance(img, MetaTensor):
                nd = img.ndim - 1
                sp = torch.linalg.norm(img.affine[:nd, :nd].double(), dim=0).tolist()
                spacing = (float(sp[0]), float(sp[1]))
            logger.warning(
                "label map '%s' has no body class (id %d): approximating the body as the organs' convex hull "
                "grown by %.0f mm per slice.",
                _source(d, key),
                self.body_id,
                self.margin_mm,
            )
            body = np.stack([approximate_body(c, spacing, self.margin_mm) for c in lab])
            out = np.where((lab == 0) & body, self.body_id, lab).astype(lab.dtype)
            d[key] = convert_to_dst_type(out, img)[0]
        return d
