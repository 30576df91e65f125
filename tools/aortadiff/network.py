"""AortaDiff's two-head conditional diffusion U-Net (shared encoder-decoder, image head + lumen-SDF head).

Built on MONAI's :class:`~monai.networks.nets.DiffusionModelUNet`: the U-Net's final output block is
kept as the *image head* and a second block of the same form (GroupNorm, SiLU, 3x3 conv) is added on
the same decoder features as the *mask head*. The network input is the noisy CECT ``x_t``
concatenated with the conditioning NCCT slice along the channel axis.

Output: one tensor (B, 1 + mask_channels, H, W): channel 0 is the image-head output (interpreted
according to ``prediction_type``: eps, x0 or v; see :mod:`tools.diffusion.schedule`), channel 1 the
normalised lumen signed distance field (negative inside, in [-1, 1] via tanh when
``sdf_activation="tanh"``). With ``mask_head=False`` (the synthesis-only CDM baseline) the output has
the image channel only. A single tensor output keeps the net traceable and usable by MONAI inferers.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from monai.networks.blocks import Convolution
from monai.networks.nets import DiffusionModelUNet
from monai.networks.schedulers.ddpm import DDPMPredictionType
from torch import nn


class TwoHeadDiffusionUNet(nn.Module):
    """Conditional diffusion U-Net with an image head and a lumen-SDF head on a shared decoder.

    Args:
        spatial_dims: 2 for axial slices.
        image_channels: channels of x_t (CECT) and of the output image head.
        cond_channels: channels of the conditioning image (NCCT) concatenated to x_t.
        mask_channels: channels of the SDF head (1: lumen).
        channels, attention_levels, num_res_blocks, num_head_channels, norm_num_groups: as in DiffusionModelUNet.
        mask_head: False builds the image head only (synthesis-only baseline).
        prediction_type: "epsilon" | "sample" (x0) | "v_prediction"; stored so samplers can read it.
        sdf_activation: "tanh" (bounded SDF) or "none".
        use_flash_attention: PyTorch SDPA attention (MONAI's switch; CPU and CUDA).
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        image_channels: int = 1,
        cond_channels: int = 1,
        mask_channels: int = 1,
        channels: Sequence[int] = (64, 128, 256, 256),
        attention_levels: Sequence[bool] = (False, False, True, True),
        num_res_blocks: Sequence[int] | int = 2,
        num_head_channels: Sequence[int] | int = 32,
        norm_num_groups: int = 32,
        mask_head: bool = True,
        prediction_type: str = "sample",
        sdf_activation: str = "tanh",
        use_flash_attention: bool = False,
    ) -> None:
        super().__init__()
        if prediction_type not in DDPMPredictionType.__members__.values():
            types = [p.value for p in DDPMPredictionType]
            raise ValueError(f"prediction_type must be one of {types}, got {prediction_type!r}")
        if sdf_activation not in ("tanh", "none"):
            raise ValueError(f"sdf_activation must be 'tanh' or 'none', got {sdf_activation!r}")
        self.prediction_type = prediction_type
        self.image_channels = image_channels
        self.cond_channels = cond_channels
        self.has_mask_head = mask_head
        self.sdf_activation = sdf_activation
        self.unet = DiffusionModelUNet(
            spatial_dims=spatial_dims,
            in_channels=image_channels + cond_channels,
            out_channels=image_channels,
            channels=channels,
            attention_levels=attention_levels,
            num_res_blocks=num_res_blocks,
            num_head_channels=num_head_channels,
            norm_num_groups=norm_num_groups,
            use_flash_attention=use_flash_attention,
        )
        # the stock output block becomes the image head; the U-Net then returns decoder features
        self.image_head = self.unet.out
        self.unet.out = nn.Identity()
        self.mask_head: nn.Module | None = None
        if mask_head:
            # same form as the image head (GroupNorm, SiLU, 3x3 conv) but a non-zero-initialised conv,
            # so the SDF head receives gradient through the shared decoder from the first step
            self.mask_head = nn.Sequential(
                copy.deepcopy(self.image_head[0]),
                nn.SiLU(),
                Convolution(spatial_dims=spatial_dims, in_channels=channels[0], out_channels=mask_channels,
                            strides=1, kernel_size=3, padding=1, conv_only=True),
            )

    @property
    def out_channels(self) -> int:
        return self.image_channels + (self.mask_head[-1].conv.out_channels if self.mask_head is not None else 0)

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor | None = None,
                image_only: bool = False) -> torch.Tensor:
        """x: (B, image_channels + cond_channels, H, W) = cat(x_t, ncct); timesteps: (B,) long.

        ``context`` is unused (kept for MONAI's ``DiffusionInferer`` calling convention, which passes ``context=None``
        in ``mode="concat"``). ``image_only`` skips the mask head (samplers use the SDF of their last call only).
        Returns (B, image_channels [+ mask_channels], H, W).
        """
        del context
        features = self.unet(x, timesteps)
        image = self.image_head(features)
        if self.mask_head is None or image_only:
            return image
        sdf = self.mask_head(features)
        if self.sdf_activation == "tanh":
            sdf = torch.tanh(sdf)
        return torch.cat([image, sdf], dim=1)
