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

Two switches make the training step cheaper without changing the distance (both on in ``train.json``):

- ``channels_last=True`` runs the perceptual network in channels-last memory (weights and inputs): the same
  distance to float rounding (relative differences about 1e-7), and on the CPU about a fifth less time for its
  forward and backward, mostly because PyTorch's max pooling is vectorised over channels only in that layout;
- ``fused_head=True`` computes lpips' per-level head (unit-normalise both feature maps over channels, squared
  difference, the learned 1x1 weighting) as one autograd node with a hand-written backward, instead of the
  dozen nodes autograd records for it. The forward runs the same operations in the same order as lpips, so the
  distance is the same float; the gradient agrees to float rounding (where a feature vector is all zero,
  autograd's gradient of the norm is NaN and this one is the limit, 0).
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
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
        channels_last: run the perceptual network in channels-last memory (same distance to float rounding,
            faster on the CPU); False keeps PyTorch's default layout.
        fused_head: lpips' per-level normalise / squared difference / 1x1 weighting as one autograd node (the
            same distance, a cheaper backward); False calls ``lpips.LPIPS.forward`` as it is.
    """

    def __init__(self, net: str = "squeeze", pretrained_backbone: bool = True, reduction: str = "mean",
                 channels_last: bool = False, fused_head: bool = False) -> None:
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
        self.fused_head = bool(fused_head)
        if self.fused_head and not (self.lpips.lpips and self.lpips.spatial and self.lpips.version == "0.1"):
            raise ValueError("ROILPIPSLoss: fused_head needs lpips with linear layers, spatial=True, version 0.1")
        self.channels_last = bool(channels_last)
        if self.channels_last:
            self.lpips.to(memory_format=torch.channels_last)

    def train(self, mode: bool = True) -> "ROILPIPSLoss":  # the perceptual net always stays in eval mode
        super().train(mode)
        self.lpips.eval()
        return self

    def forward(self, pred: torch.Tensor, target: torch.Tensor, roi: torch.Tensor | None = None) -> torch.Tensor:
        """pred, target: (B, 1, H, W) in [-1, 1]; roi: (B, 1, H, W) in {0, 1} or None (whole image)."""
        if pred.shape[1] == 1:
            pred, target = pred.repeat(1, 3, 1, 1), target.repeat(1, 3, 1, 1)
        pred, target = pred.float(), target.float()
        if self.channels_last:
            pred = pred.contiguous(memory_format=torch.channels_last)
            target = target.contiguous(memory_format=torch.channels_last)
        dist = self._fused_distance(pred, target) if self.fused_head else self.lpips(pred, target)  # (B, 1, H, W)
        if roi is None:
            per_sample = dist.mean(dim=(1, 2, 3))
        else:
            w = roi.to(dist.dtype)
            per_sample = (dist * w).sum(dim=(1, 2, 3)) / w.sum(dim=(1, 2, 3)).clamp_min(1.0)
        return per_sample.mean() if self.reduction == "mean" else per_sample

    def _fused_distance(self, in0: torch.Tensor, in1: torch.Tensor) -> torch.Tensor:
        """``lpips.LPIPS(spatial=True).forward(in0, in1)`` with each level's head as one :class:`_LevelDistance` node."""
        lp = self.lpips
        outs0, outs1 = lp.net.forward(lp.scaling_layer(in0)), lp.net.forward(lp.scaling_layer(in1))
        val = 0
        for kk in range(lp.L):
            conv = lp.lins[kk].model[-1]  # NetLinLayer: [Dropout (identity in eval),] 1x1 Conv2d without bias
            level = _LevelDistance.apply(outs0[kk], outs1[kk], conv.weight)
            val = val + F.interpolate(level, size=in0.shape[2:], mode="bilinear", align_corners=False)
        return val


class _LevelDistance(torch.autograd.Function):
    """One lpips level: ``conv1x1((f0 / (|f0| + eps) - f1 / (|f1| + eps)) ** 2, w)``, |.| the norm over channels.

    Forward: lpips' ``normalize_tensor`` (eps 1e-10) and head in its order of operations. Backward, with
    ``u = f / d``, ``d = n + eps``, ``n = |f|`` and ``g_u`` the gradient at ``u``:
    ``df = g_u / d - f * sum_c(g_u * f) / (d ** 2 * n)`` (second term 0 where n = 0).
    """

    EPS = 1e-10

    @staticmethod
    def forward(ctx, f0: torch.Tensor, f1: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        n0 = torch.sqrt(torch.sum(f0 ** 2, dim=1, keepdim=True))
        n1 = torch.sqrt(torch.sum(f1 ** 2, dim=1, keepdim=True))
        diff = f0 / (n0 + _LevelDistance.EPS) - f1 / (n1 + _LevelDistance.EPS)
        ctx.save_for_backward(f0, f1, diff, n0, n1, weight)
        return F.conv2d(diff ** 2, weight)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        f0, f1, diff, n0, n1, weight = ctx.saved_tensors
        grad_u0 = 2.0 * diff * (weight.reshape(1, -1, 1, 1) * grad)

        def through_norm(grad_u: torch.Tensor, f: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
            d = n + _LevelDistance.EPS
            dot = torch.sum(grad_u * f, dim=1, keepdim=True)
            coef = torch.where(n > 0, dot / (d * d * n.clamp_min(torch.finfo(n.dtype).tiny)), torch.zeros_like(n))
            return grad_u / d - f * coef

        g0 = through_norm(grad_u0, f0, n0) if ctx.needs_input_grad[0] else None
        g1 = through_norm(-grad_u0, f1, n1) if ctx.needs_input_grad[1] else None
        gw = torch.sum(diff ** 2 * grad, dim=(0, 2, 3)).reshape(weight.shape) if ctx.needs_input_grad[2] else None
        return g0, g1, gw


def build_lpips_or_none(net: str = "squeeze", pretrained_backbone: bool = True, channels_last: bool = False,
                        fused_head: bool = False) -> ROILPIPSLoss | None:
    """For evaluation: the loss when it can be built without downloading, else None with a logged reason."""
    if pretrained_backbone and not backbone_weights_available(net):
        logger.warning("LPIPS skipped: torchvision weights '%s' not found (run `python tools/download_weights.py`).",
                       backbone_weights_path(net))
        return None
    return ROILPIPSLoss(net=net, pretrained_backbone=pretrained_backbone, reduction="none", channels_last=channels_last,
                        fused_head=fused_head)


__all__ = ["ROILPIPSLoss", "backbone_weights_path", "backbone_weights_available", "build_lpips_or_none", "BACKBONE_FILES"]
