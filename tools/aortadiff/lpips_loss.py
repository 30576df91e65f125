"""LPIPS perceptual loss restricted to a region of interest (AortaDiff's image loss on the x0 prediction).

Built once on the lpips package (``squeeze`` by default, ``alex``/``vgg`` selectable). The ImageNet
backbone weights are torchvision's, read from torchvision's cache ``torch.hub.get_dir()/checkpoints``
(``$TORCH_HOME/hub/checkpoints``); they are placed there by ``python tools/download_weights.py``.
This module never downloads: when the file is absent it raises ``FileNotFoundError`` naming the file,
unless ``pretrained_backbone=False`` (tests only), which builds lpips with a random backbone
(``pnet_rand=True``) and logs a loud warning. lpips' own linear-layer weights ship inside the package.

Inputs are single-channel CT slices windowed to [-1, 1], (B, 1, H, W); they are repeated to 3 channels.
The ROI restriction averages lpips' spatial distance map (``spatial=True``, upsampled to the input size)
inside the ROI mask of each sample.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import torch
from torch import nn

logger = logging.getLogger(__name__)

# torchvision file names of the backbones lpips loads (torchvision 0.29 model URLs)
BACKBONE_FILES = {
    "squeeze": "squeezenet1_1-b8a52dc0.pth",
    "alex": "alexnet-owt-7be5be79.pth",
    "vgg": "vgg16-397923af.pth",
}


def backbone_weights_path(net: str = "squeeze") -> Path:
    """Where torchvision (and so lpips) looks for the ImageNet weights of ``net``."""
    if net not in BACKBONE_FILES:
        raise ValueError(f"lpips net must be one of {sorted(BACKBONE_FILES)}, got {net!r}")
    return Path(torch.hub.get_dir()) / "checkpoints" / BACKBONE_FILES[net]


def backbone_weights_available(net: str = "squeeze") -> bool:
    return backbone_weights_path(net).is_file()


class ROILPIPSLoss(nn.Module):
    """LPIPS distance inside an ROI, (B, 1, H, W) in [-1, 1] -> per-sample (B,) or mean scalar.

    Args:
        net: lpips trunk, "squeeze" | "alex" | "vgg".
        pretrained_backbone: True needs the torchvision ImageNet weights in the hub cache (never downloaded);
            False builds a random backbone (tests only, logs a warning).
        reduction: "mean" (scalar) or "none" (per sample).
    """

    def __init__(self, net: str = "squeeze", pretrained_backbone: bool = True, reduction: str = "mean") -> None:
        super().__init__()
        import lpips  # lazy: heavy import

        if reduction not in ("mean", "none"):
            raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
        self.reduction = reduction
        path = backbone_weights_path(net)
        if pretrained_backbone:
            if not path.is_file():
                raise FileNotFoundError(
                    f"LPIPS '{net}' needs torchvision's ImageNet weights at '{path}' (file '{path.name}' not found). "
                    f"Run `python tools/download_weights.py` to place them there (or copy the file by hand), "
                    f"or set `lpips_pretrained_backbone: false` for a random backbone (tests only)."
                )
        else:
            logger.warning(
                "!!! LPIPS built with a RANDOM '%s' backbone (lpips_pretrained_backbone=false): the perceptual loss "
                "is NOT the published LPIPS. Use this for tests only. !!!", net)
        # lpips calls torchvision with pretrained=not pnet_rand; the file is in the hub cache when pretrained,
        # so torchvision loads it without network access.
        with warnings.catch_warnings():  # torchvision's 'pretrained is deprecated' warnings from inside lpips
            warnings.simplefilter("ignore", UserWarning)
            self.lpips = lpips.LPIPS(net=net, spatial=True, pnet_rand=not pretrained_backbone, verbose=False)
        self.lpips.eval()
        for p in self.lpips.parameters():
            p.requires_grad_(False)

    def train(self, mode: bool = True) -> "ROILPIPSLoss":  # the perceptual net always stays in eval mode
        super().train(mode)
        self.lpips.eval()
        return self

    def forward(self, pred: torch.Tensor, target: torch.Tensor, roi: torch.Tensor | None = None) -> torch.Tensor:
        """pred, target: (B, 1, H, W) in [-1, 1]; roi: (B, 1, H, W) in {0, 1} or None (whole image)."""
        if pred.shape[1] == 1:
            pred, target = pred.repeat(1, 3, 1, 1), target.repeat(1, 3, 1, 1)
        dist = self.lpips(pred.float(), target.float())  # (B, 1, H, W)
        if roi is None:
            per_sample = dist.mean(dim=(1, 2, 3))
        else:
            w = roi.to(dist.dtype)
            per_sample = (dist * w).sum(dim=(1, 2, 3)) / w.sum(dim=(1, 2, 3)).clamp_min(1.0)
        return per_sample.mean() if self.reduction == "mean" else per_sample


def build_lpips_or_none(net: str = "squeeze", pretrained_backbone: bool = True) -> ROILPIPSLoss | None:
    """For evaluation: the loss when it can be built without downloading, else None with a logged reason."""
    if pretrained_backbone and not backbone_weights_available(net):
        logger.warning("LPIPS skipped: torchvision weights '%s' not found (run `python tools/download_weights.py`).",
                       backbone_weights_path(net))
        return None
    return ROILPIPSLoss(net=net, pretrained_backbone=pretrained_backbone, reduction="none")


__all__ = ["ROILPIPSLoss", "backbone_weights_path", "backbone_weights_available", "build_lpips_or_none", "BACKBONE_FILES"]
