"""Lumen/thrombus label map from the aorta and lumen masks (for the segmentation-only baseline)."""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import MapTransform
from monai.utils import convert_to_numpy

LABELS = {0: "background", 1: "lumen", 2: "thrombus"}


class AortaLabelMapd(MapTransform):
    """``output_key`` = 1 where lumen, 2 where aorta and not lumen (thrombus), 0 elsewhere (uint8 -> float)."""

    def __init__(self, aorta_key: str = "aorta", lumen_key: str = "lumen", output_key: str = "label") -> None:
        super().__init__([aorta_key, lumen_key])
        self.aorta_key, self.lumen_key, self.output_key = aorta_key, lumen_key, output_key

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        aorta = convert_to_numpy(d[self.aorta_key]) > 0
        lumen = (convert_to_numpy(d[self.lumen_key]) > 0) & aorta
        lab = np.where(lumen, 1, np.where(aorta, 2, 0)).astype(np.float32)
        ref = d[self.aorta_key]
        d[self.output_key] = MetaTensor(torch.as_tensor(lab), meta=dict(ref.meta), affine=ref.affine) \
            if isinstance(ref, MetaTensor) else torch.as_tensor(lab)
        return d
