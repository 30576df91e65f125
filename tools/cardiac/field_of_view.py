"""The in-plane field of view the model sees: a centre crop of real volumes, none of generated ones.

Real volumes are centre-cropped to ``fov_fraction`` of their in-plane size before being resized to the model grid
(``small.json``: the heart-centred 60 %). Generated pairs are written on the model grid and already cover exactly
that field of view (``synthetic_pairs.resized_ras_affine``), so cropping them again would zoom them in a second
time. Entries of a generated datalist carry ``"synthetic": true``; :class:`FieldOfViewCropd` passes them through
and drops the flag (so real and generated entries collate alike).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping

from monai.config import KeysCollection
from monai.transforms import CenterScaleCropd, MapTransform

__all__ = ["FieldOfViewCropd", "SYNTHETIC_KEY"]

SYNTHETIC_KEY = "synthetic"


class FieldOfViewCropd(MapTransform):
    """``CenterScaleCropd(roi_scale=[f, f, 1])`` on ``keys`` unless the entry is flagged ``synthetic``."""

    def __init__(self, keys: KeysCollection, fov_fraction: float = 1.0, flag_key: str = SYNTHETIC_KEY,
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        if not 0.0 < float(fov_fraction) <= 1.0:
            raise ValueError(f"fov_fraction must be in (0, 1], got {fov_fraction}")
        self.flag_key = flag_key
        self.crop = CenterScaleCropd(keys, roi_scale=[float(fov_fraction)] * 2 + [1.0],
                                     allow_missing_keys=allow_missing_keys)

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        if bool(d.pop(self.flag_key, False)):
            return d
        return self.crop(d)
