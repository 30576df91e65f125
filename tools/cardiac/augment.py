"""The cardiac LDM paper's data-variety augmentation (Hu et al.), built from MONAI transforms.

Applied to HU volumes (before windowing) that already have the training size ``image_size``:

1. contrast boost: +``contrast_shift_hu`` HU (50) with probability ``contrast_prob`` (0.05), :class:`RandContrastBoostd`
   (image only);
2. random-location centre crop resized back to the full in-plane size: with probability ``crop_prob`` an
   in-plane crop of ``crop_min_fraction``..1 of the width/height at a random position (all slices kept),
   resized back to ``image_size`` (image trilinear, label nearest);
3. horizontal and vertical flips, each with probability ``flip_prob`` (0.2), image and label together.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import torch
from monai.config import KeysCollection
from monai.transforms import Compose, Identityd, MapTransform, OneOf, Randomizable, RandFlipd, RandScaleCropd, Resized

__all__ = ["RandContrastBoostd", "cardiac_augmentations"]


class RandContrastBoostd(Randomizable, MapTransform):
    """With probability ``prob`` add ``shift_hu`` to the CT in ``keys`` (HU, before windowing).

    With ``threshold_hu`` set, only voxels above it (the contrast-enhanced blood pool) are shifted;
    otherwise the whole image is. The cardiac LDM paper uses +50 HU with p = 0.05.
    """

    def __init__(self, keys: KeysCollection, shift_hu: float = 50.0, prob: float = 0.05,
                 threshold_hu: float | None = None, allow_missing_keys: bool = False) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        self.shift_hu = shift_hu
        self.prob = prob
        self.threshold_hu = threshold_hu
        self._do = False

    def randomize(self, data=None) -> None:
        self._do = self.R.random_sample() < self.prob

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        self.randomize()
        if not self._do:
            return d
        for key in self.key_iterator(d):
            img = d[key]
            if self.threshold_hu is None:
                d[key] = img + self.shift_hu
            else:
                d[key] = img + self.shift_hu * (img > self.threshold_hu)
        return d


def cardiac_augmentations(
    image_size: Sequence[int],
    image_key: str = "image",
    label_key: str | None = "label",
    flip_prob: float = 0.2,
    contrast_prob: float = 0.05,
    contrast_shift_hu: float = 50.0,
    crop_prob: float = 0.5,
    crop_min_fraction: float = 0.8,
) -> Compose:
    """Compose of the three augmentations above for dictionaries with ``image_key`` (+ ``label_key``).

    Args:
        image_size: spatial size (H, W, D) of the incoming volumes; the crop is resized back to it.
        image_key / label_key: dictionary keys (``label_key=None`` for image-only stages).
        flip_prob: probability of each in-plane flip (axis 0 and axis 1 separately).
        contrast_prob / contrast_shift_hu: probability and size (HU) of the contrast boost.
        crop_prob / crop_min_fraction: probability and smallest in-plane size fraction of the crop.
    """
    for name, p in (("flip_prob", flip_prob), ("contrast_prob", contrast_prob), ("crop_prob", crop_prob)):
        if not 0.0 <= float(p) <= 1.0:
            raise ValueError(f"{name} must be a probability in [0, 1], got {p}")
    if not 0.0 < float(crop_min_fraction) <= 1.0:
        raise ValueError(f"crop_min_fraction must be in (0, 1], got {crop_min_fraction}")
    size = [int(s) for s in image_size]
    keys = [image_key] if label_key is None else [image_key, label_key]
    modes = ["trilinear"] if label_key is None else ["trilinear", "nearest"]
    if len(size) == 2:
        modes = [m.replace("trilinear", "bilinear") for m in modes]
    in_plane = [crop_min_fraction, crop_min_fraction] + [1.0] * (len(size) - 2)
    crop_resize = Compose([
        RandScaleCropd(keys, roi_scale=in_plane, max_roi_scale=[1.0] * len(size), random_center=True,
                       random_size=True),
        Resized(keys, spatial_size=size, mode=modes),
    ])
    return Compose([
        RandContrastBoostd(keys=image_key, shift_hu=contrast_shift_hu, prob=contrast_prob),
        OneOf([crop_resize, Identityd(keys)], weights=[crop_prob, 1.0 - crop_prob]),
        RandFlipd(keys, prob=flip_prob, spatial_axis=0),
        RandFlipd(keys, prob=flip_prob, spatial_axis=1),
    ])
