"""Decode the aorta inferers' 3-channel output into AortaDiff's products (a MONAI dictionary transform).

Input ``pred``: (3 or 4, H, W[, D]) = synthetic CECT in [-1, 1], lumen SDF, per-pixel image std (window
units)[, lumen vote of the samples] (see :mod:`tools.aortadiff.inferers`). Outputs (same grid, channel first):

- ``synthetic_cect``: HU; inside the ROI the generated image mapped back from the window, outside it the
  input NCCT in HU (``ncct_key``) exactly, i.e. ``x0 * roi + ncct * (1 - roi)`` in HU.
- ``lumen``: ``(sdf < 0) & aorta``; ``thrombus``: ``aorta & ~lumen`` (uint8).
- ``pred``: label map 0 background, 1 lumen, 2 thrombus (what MONAI Label shows).
- ``std_hu``: image standard deviation in HU (0 for one sample); ``uncertainty_score``: its mean inside
  the aorta (HU); ``image_unit``: the fused image in [-1, 1] (for metrics).
- ``lumen_vote`` (fraction of samples voting lumen, inside the aorta; the lumen mask itself without a vote
  channel) and ``mask_entropy`` (bits, :func:`tools.aortadiff.uncertainty.binary_entropy` of the vote,
  0 outside the aorta); ``mask_uncertainty_score``: the entropy's mean inside the aorta.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import torch
from monai.transforms import MapTransform

from tools.aortadiff.uncertainty import binary_entropy
from tools.data.transforms import like, unit_to_hu


class DecodeAortaDiffd(MapTransform):
    """Split ``pred_key`` into synthetic CECT (HU), lumen, thrombus, label map and std map.

    Args:
        a_min, a_max: the HU window the model works in ([-1, 1] <-> [a_min, a_max]).
        ncct_key: the input NCCT in HU (before windowing); aorta_key, roi_key: masks.
        prefix: prepended to the output names (e.g. "pred_" in validation, where ``lumen`` is the ground truth).
    """

    def __init__(self, pred_key: str = "pred", aorta_key: str = "aorta", roi_key: str = "roi",
                 ncct_key: str = "ncct_hu", a_min: float = -200.0, a_max: float = 600.0, prefix: str = "") -> None:
        super().__init__([pred_key])
        self.prefix = prefix
        self.pred_key, self.aorta_key, self.roi_key, self.ncct_key = pred_key, aorta_key, roi_key, ncct_key
        self.a_min, self.a_max = float(a_min), float(a_max)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        pred = d[self.pred_key]
        p = torch.as_tensor(pred).float()
        aorta = torch.as_tensor(d[self.aorta_key]).to(p.device) > 0
        roi = torch.as_tensor(d[self.roi_key]).to(p.device) > 0.5
        ref = d[self.ncct_key] if self.ncct_key in d else d[self.aorta_key]
        hu = unit_to_hu((p[:1] + 1.0) / 2.0, self.a_min, self.a_max)
        if self.ncct_key in d:
            hu = torch.where(roi, hu, torch.as_tensor(d[self.ncct_key]).to(p.device).float())
        lumen = (p[1:2] < 0) & aorta
        thrombus = aorta & ~lumen
        label = lumen.to(torch.uint8) + 2 * thrombus.to(torch.uint8)
        std_hu = p[2:3] * (self.a_max - self.a_min) / 2.0
        d[self.prefix + "synthetic_cect"] = like(ref, hu)
        d[self.prefix + "lumen"] = like(ref, lumen.to(torch.uint8))
        d[self.prefix + "thrombus"] = like(ref, thrombus.to(torch.uint8))
        d[self.prefix + "std_hu"] = like(ref, std_hu)
        d[self.prefix + "image_unit"] = like(ref, p[:1].clone())
        d[self.pred_key] = like(ref, label)
        d[self.prefix + "uncertainty_score"] = float(std_hu[aorta].mean()) if aorta.any() else float(std_hu.mean())
        vote = (p[3:4] if p.shape[0] > 3 else lumen.float()) * aorta
        entropy = binary_entropy(vote) * aorta
        d[self.prefix + "lumen_vote"] = like(ref, vote)
        d[self.prefix + "mask_entropy"] = like(ref, entropy)
        d[self.prefix + "mask_uncertainty_score"] = float(entropy[aorta].mean()) if aorta.any() else 0.0
        return d


class DecodeSegLabeld(MapTransform):
    """The segmentation-only baseline's label map (1, H, W[, D]) in {0, 1, 2} -> the same products as AortaDiff's.

    ``lumen`` = label 1 inside the aorta, ``thrombus`` = aorta & ~lumen, ``pred`` their label map: the rule
    :class:`DecodeAortaDiffd` applies to the SDF head, so both models are scored alike. The baseline makes no
    image: ``synthetic_cect`` is the input NCCT in HU (``ncct_key``).
    """

    def __init__(self, pred_key: str = "pred", aorta_key: str = "aorta", ncct_key: str = "ncct_hu") -> None:
        super().__init__([pred_key])
        self.pred_key, self.aorta_key, self.ncct_key = pred_key, aorta_key, ncct_key

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        ref = d[self.ncct_key]
        label = torch.as_tensor(d[self.pred_key])
        aorta = torch.as_tensor(d[self.aorta_key]).to(label.device) > 0
        lumen = (label.round() == 1) & aorta
        thrombus = aorta & ~lumen
        d["synthetic_cect"] = like(ref, torch.as_tensor(ref).float().clone())
        d["lumen"] = like(ref, lumen.to(torch.uint8))
        d["thrombus"] = like(ref, thrombus.to(torch.uint8))
        d[self.pred_key] = like(ref, lumen.to(torch.uint8) + 2 * thrombus.to(torch.uint8))
        return d
