"""Zero-filled block masking for the self-supervised restoration pretext task (Hu et al., stage 4).

``RandBlockDropoutd`` is MONAI's ``RandCoarseDropoutd`` (25 holes, probability 0.8, fill 0) with one
fix: MONAI 1.6's ``RandCoarseDropout.randomize`` overwrites its minimum ``spatial_size`` with the size
it drew for the previous hole, so after a few holes every block is drawn at (or near) the maximum size
(16^3) instead of uniformly in 8..16. Here every hole's edge lengths are drawn independently and
uniformly from ``[spatial_size, max_spatial_size]`` (inclusive).
"""

from __future__ import annotations

from collections.abc import Sequence

from monai.transforms import RandCoarseDropout, RandCoarseDropoutd, RandomizableTransform
from monai.data.utils import get_random_patch, get_valid_patch_size
from monai.utils import fall_back_tuple

__all__ = ["RandBlockDropout", "RandBlockDropoutd"]


class RandBlockDropout(RandCoarseDropout):
    """``RandCoarseDropout`` whose hole sizes are i.i.d. uniform in ``[spatial_size, max_spatial_size]``."""

    def randomize(self, img_size: Sequence[int]) -> None:
        RandomizableTransform.randomize(self, None)  # draws _do_transform with probability prob
        if not self._do_transform:
            return None
        low = fall_back_tuple(self.spatial_size, img_size)
        high = fall_back_tuple(self.max_spatial_size, img_size) if self.max_spatial_size is not None else low
        num_holes = self.holes if self.max_holes is None else self.R.randint(self.holes, self.max_holes + 1)
        self.hole_coords = []
        for _ in range(num_holes):
            size = tuple(int(self.R.randint(low=low[i], high=high[i] + 1)) for i in range(len(img_size)))
            valid = get_valid_patch_size(img_size, size)
            self.hole_coords.append((slice(None),) + get_random_patch(img_size, valid, self.R))


class RandBlockDropoutd(RandCoarseDropoutd):
    """Dictionary version: same holes for all ``keys``; see :class:`RandBlockDropout`."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        old = self.dropper
        self.dropper = RandBlockDropout(
            holes=old.holes, spatial_size=old.spatial_size, dropout_holes=old.dropout_holes,
            fill_value=old.fill_value, max_holes=old.max_holes, max_spatial_size=old.max_spatial_size, prob=1.0,
        )
