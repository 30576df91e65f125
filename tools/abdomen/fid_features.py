"""Feature network for FID of CT slices (MONAI ``FIDMetric`` compares feature statistics).

The weights are never downloaded here: ``python tools/download_weights.py`` places the torchvision
ImageNet file in ``torch.hub.get_dir()/checkpoints`` (entry ``inception_v3`` of
``tools/feature_weights.yml``). When the file is absent, :func:`load_fid_feature_network` returns
``None`` and a reason, and the caller skips FID and logs that reason.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from tools.engines.checkpoint_io import load_checkpoint

__all__ = ["FID_NETWORKS", "load_fid_feature_network", "SliceFeatureExtractor"]

# name -> (torchvision builder name, weight file in the torch hub checkpoint folder, input size, feature dim)
FID_NETWORKS: dict[str, tuple[str, str, int, int]] = {
    "inception_v3": ("inception_v3", "inception_v3_google-0cc3c7bd.pth", 299, 2048),
    "resnet50": ("resnet50", "resnet50-0676ba61.pth", 224, 2048),
}
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


class SliceFeatureExtractor(nn.Module):
    """Pooled ImageNet features of 1-channel slices in [-1, 1]: (N, 1, H, W) -> (N, D).

    The slice is mapped to [0, 1], repeated to 3 channels, resized to the backbone's input size and
    normalised with the ImageNet statistics.
    """

    def __init__(self, backbone: nn.Module, input_size: int) -> None:
        super().__init__()
        self.backbone = backbone.eval()
        self.input_size = input_size
        self.register_buffer("mean", torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1))

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = ((x.float().clamp(-1, 1) + 1) / 2).repeat(1, 3, 1, 1)
        x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False)
        return self.backbone((x - self.mean) / self.std).flatten(1)


def load_fid_feature_network(
    name: str = "inception_v3", device: str | torch.device = "cpu", hub_dir: str | None = None
) -> tuple[SliceFeatureExtractor | None, str]:
    """Build the FID feature network from local torchvision weights.

    Returns:
        (extractor, "") when the weights are present, else (None, reason) naming the missing file and the
        command that fetches it.
    """
    import torchvision

    if name not in FID_NETWORKS:
        return None, f"unknown FID feature network {name!r}; choose one of {sorted(FID_NETWORKS)}"
    builder, filename, size, _ = FID_NETWORKS[name]
    ckpt = Path(hub_dir or torch.hub.get_dir()) / "checkpoints" / filename
    if not ckpt.is_file():
        return None, (
            f"FID skipped: weights '{ckpt}' for {name} are absent; fetch them with "
            "`python tools/download_weights.py --features all` (nothing is downloaded at run time)"
        )
    if builder == "inception_v3":
        net = torchvision.models.inception_v3(weights=None, aux_logits=True, init_weights=False)
    else:
        net = getattr(torchvision.models, builder)(weights=None)
    net.load_state_dict(load_checkpoint(ckpt))  # torchvision's file is a plain state dict (no "model" key)
    net.fc = nn.Identity()
    return SliceFeatureExtractor(net, size).to(device), ""
