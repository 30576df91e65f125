"""Removal of small disconnected fragments from generated label maps.

Labels decoded from a latent diffusion model (argmax of the decoded logits) carry speckle and small
islands near structure boundaries (Hu et al., figure 5). Each cardiac structure is one connected
object, so for every structure id we keep its largest connected component and any other component of
at least ``min_fraction`` of the largest one's size (and at least ``min_voxels``); removed voxels become
background (0).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform
from scipy import ndimage

__all__ = ["remove_small_fragments", "RemoveSmallFragmentsd"]


def remove_small_fragments(
    label: np.ndarray,
    label_ids: Sequence[int] | None = None,
    min_fraction: float = 0.1,
    min_voxels: int = 0,
    connectivity: int = 1,
) -> np.ndarray:
    """Clean an integer label map (any spatial rank, no channel axis).

    Args:
        label: integer label map, e.g. ``(H, W, D)``.
        label_ids: structure ids to clean (default: every non-zero id present).
        min_fraction: keep a non-largest component only if its size >= ``min_fraction`` x the largest's.
        min_voxels: keep a non-largest component only if it has at least this many voxels.
        connectivity: 1 = face neighbours (6 in 3D), ``label.ndim`` = full (26 in 3D).

    Returns:
        A cleaned copy with the same shape and dtype.
    """
    label = np.asarray(label)
    if not np.issubdtype(label.dtype, np.integer):
        if not np.all(np.equal(np.mod(label, 1), 0)):
            raise ValueError("label map must hold integer ids")
    out = label.copy()
    ids = [int(i) for i in np.unique(label) if i != 0] if label_ids is None else [int(i) for i in label_ids]
    structure = ndimage.generate_binary_structure(label.ndim, connectivity)
    for lid in ids:
        mask = label == lid
        if not mask.any():
            continue
        components, n = ndimage.label(mask, structure=structure)
        if n <= 1:
            continue
        sizes = np.bincount(components.ravel())[1:]
        largest = sizes.max()
        keep = (sizes >= min_fraction * largest) & (sizes >= min_voxels)
        keep[int(np.argmax(sizes))] = True  # the largest component always stays
        removed = ~np.concatenate([[True], keep])[components]
        out[removed & mask] = 0
    return out


class RemoveSmallFragmentsd(MapTransform):
    """Dictionary transform applying :func:`remove_small_fragments` to channel-first label maps
    ``(1, H, W, D)`` (numpy or torch/MetaTensor; metadata kept)."""

    def __init__(
        self,
        keys: KeysCollection,
        label_ids: Sequence[int] | None = None,
        min_fraction: float = 0.1,
        min_voxels: int = 0,
        connectivity: int = 1,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.kwargs = dict(label_ids=label_ids, min_fraction=min_fraction, min_voxels=min_voxels,
                           connectivity=connectivity)

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            img = d[key]
            arr = img.detach().cpu().numpy() if isinstance(img, torch.Tensor) else np.asarray(img)
            cleaned = np.stack([remove_small_fragments(np.rint(c).astype(np.int64), **self.kwargs) for c in arr])
            if isinstance(img, torch.Tensor):
                new = img.clone()
                new[...] = torch.as_tensor(cleaned, dtype=img.dtype, device=img.device)
                d[key] = new
            else:
                d[key] = cleaned.astype(arr.dtype)
        return d
