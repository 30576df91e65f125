"""Lumen pseudo-labels from the CECT for training with zero lumen labels (aorta masks only).

Contrast agent fills the lumen and not the thrombus, so inside the aorta the enhancement separates the two:
an Otsu threshold (:func:`skimage.filters.threshold_otsu`) over the enhancement ``CECT - NCCT`` of the
paired scans (the CECT alone when no NCCT is given) in the whole case's aorta,
moved to the midpoint of the two classes' mean HU (isodata iterations from Otsu's split: Otsu's own
threshold sits at the first histogram bin of a gap, at the edge of the dark class, while the midpoint is the
50 % partial-volume boundary), calcium (above ``max_hu`` in the CECT) left out of both the threshold and the
lumen (calcium smeared into neighbouring voxels is bright in both phases, so its enhancement stays low:
on the CECT alone it can outshine a weakly enhanced lumen),
then cleaned per axial slice with
scipy morphology: an opening (removes partial-volume specks at the wall and at calcified arcs), hole filling
and the largest connected component (the lumen is one blob per slice). A case whose bright and dark aorta
voxels differ by less than ``min_contrast_hu`` (no enhancement) gets an empty lumen.

:class:`PseudoLumenLabeld` replaces the datalist's lumen label (present or not) by this pseudo-label and
marks every case as labeled, so the semi-supervised training of ``train.json`` becomes training with zero
lumen labels (``configs/zero_lumen_labels.json``).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform
from monai.utils import convert_to_numpy
from scipy import ndimage
from skimage.filters import threshold_otsu

from tools.data.transforms import like

__all__ = ["pseudo_lumen", "PseudoLumenLabeld"]


def pseudo_lumen(cect_hu: np.ndarray, aorta: np.ndarray, ncct_hu: np.ndarray | None = None, max_hu: float = 650.0,
                 min_contrast_hu: float = 60.0, opening_radius: int = 1) -> np.ndarray:
    """Lumen pseudo-label (bool, same shape) of a CECT volume ``(H, W, D)`` in HU inside the ``aorta`` mask.

    With the paired ``ncct_hu`` the threshold is taken on the enhancement ``CECT - NCCT`` (calcium, bright in
    both phases, does not enhance), else on the CECT. Axial slices along the last axis; 2D arrays are one
    slice. See the module docstring for the rule.
    """
    cect = np.asarray(cect_hu, dtype=np.float32)
    aorta = np.asarray(aorta) > 0
    if cect.shape != aorta.shape:
        raise ValueError(f"pseudo_lumen: CECT shape {cect.shape} differs from the aorta mask's {aorta.shape}")
    signal = cect
    if ncct_hu is not None:
        ncct = np.asarray(ncct_hu, dtype=np.float32)
        if ncct.shape != cect.shape:
            raise ValueError(f"pseudo_lumen: NCCT shape {ncct.shape} differs from the CECT's {cect.shape}")
        signal = cect - ncct
    squeeze = cect.ndim == 2
    if squeeze:
        cect, aorta, signal = cect[..., None], aorta[..., None], signal[..., None]
    out = np.zeros(aorta.shape, dtype=bool)
    candidates = aorta & (cect <= max_hu)
    values = signal[candidates]
    if values.size < 2 or values.min() == values.max():
        return out[..., 0] if squeeze else out
    t = float(threshold_otsu(values))
    for _ in range(20):  # from Otsu's split to the midpoint of the two class means (isodata / Ridler-Calvard)
        bright, dark = values[values > t], values[values <= t]
        if bright.size == 0 or dark.size == 0:
            return out[..., 0] if squeeze else out
        mid = 0.5 * float(bright.mean() + dark.mean())
        if abs(mid - t) < 0.5:
            break
        t = mid
    bright, dark = values[values > t], values[values <= t]
    if bright.size == 0 or dark.size == 0 or float(bright.mean() - dark.mean()) < min_contrast_hu:
        return out[..., 0] if squeeze else out
    raw = candidates & (signal > t)
    disk = ndimage.generate_binary_structure(2, 1)
    if opening_radius > 1:
        disk = ndimage.iterate_structure(disk, opening_radius)
    for k in range(raw.shape[-1]):
        m = raw[..., k]
        if not m.any():
            continue
        if opening_radius > 0:
            m = ndimage.binary_opening(m, structure=disk)
        m = ndimage.binary_fill_holes(m)
        lab, n = ndimage.label(m)
        if n > 1:
            sizes = ndimage.sum_labels(m, lab, index=np.arange(1, n + 1))
            m = lab == (int(np.argmax(sizes)) + 1)
        out[..., k] = m & aorta[..., k]
    return out[..., 0] if squeeze else out


class PseudoLumenLabeld(MapTransform):
    """Set ``keys`` (the lumen) to :func:`pseudo_lumen` of ``image_key`` (the CECT, in HU) and ``ncct_key`` (its
    NCCT; None: the CECT alone) inside ``aorta_key`` for every case, replacing any lumen label, and
    ``flag_key`` to 1.0 (every case has a target).

    Place it where ``train.json`` has :class:`tools.aortadiff.labeled_flag.LabeledFlagd`: after loading and
    orientation, before the CECT is windowed. Arrays are channel first ``(1, H, W, D)``.
    """

    def __init__(self, keys: KeysCollection, image_key: str = "cect", aorta_key: str = "aorta",
                 ncct_key: str | None = "ncct", flag_key: str = "labeled", max_hu: float = 650.0,
                 min_contrast_hu: float = 60.0, opening_radius: int = 1) -> None:
        super().__init__(keys, allow_missing_keys=True)
        self.image_key, self.aorta_key, self.ncct_key, self.flag_key = image_key, aorta_key, ncct_key, flag_key
        self.max_hu, self.min_contrast_hu, self.opening_radius = float(max_hu), float(min_contrast_hu), int(opening_radius)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        cect = convert_to_numpy(d[self.image_key])
        aorta = convert_to_numpy(d[self.aorta_key])
        ncct = convert_to_numpy(d[self.ncct_key]) if self.ncct_key else None
        lumen = np.stack([pseudo_lumen(cect[c], aorta[min(c, aorta.shape[0] - 1)],
                                       None if ncct is None else ncct[c], self.max_hu, self.min_contrast_hu,
                                       self.opening_radius) for c in range(cect.shape[0])])
        for k in self.keys:
            d[k] = like(d[self.aorta_key], torch.from_numpy(lumen.astype(np.float32)))
        d[self.flag_key] = torch.tensor(1.0)
        return d
