"""Per-sample labeled flag for semi-supervised training (labeled triplets and unlabeled pairs in one batch)."""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform


class LabeledFlagd(MapTransform):
    """Add ``flag_key`` = 1.0 when the label ``keys`` (e.g. ``lumen``) are present, else 0.0, and fill a
    missing label with zeros shaped like ``ref_key`` so that labeled and unlabeled samples collate together.

    The loss must use the flag (see :func:`tools.aortadiff.labeled_mse.labeled_mse`): the zero placeholder is
    never a training target.
    """

    def __init__(self, keys: KeysCollection, ref_key: str, flag_key: str = "labeled") -> None:
        super().__init__(keys, allow_missing_keys=True)
        self.ref_key = ref_key
        self.flag_key = flag_key

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        present = all(k in d and d[k] is not None for k in self.keys)
        d[self.flag_key] = torch.tensor(1.0 if present else 0.0)
        if not present:
            ref = d[self.ref_key]
            for k in self.keys:
                if k not in d or d[k] is None:
                    zeros = torch.zeros_like(torch.as_tensor(ref))
                    d[k] = MetaTensor(zeros, meta=dict(ref.meta), affine=ref.affine,
                                      applied_operations=list(ref.applied_operations)) if isinstance(ref, MetaTensor) else zeros
        return d
