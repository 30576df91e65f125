"""Mask-to-CT diffusion U-Nets with the three conditionings of Zhuang et al. (semantic abdominal CT synthesis).

All three networks share one calling convention so that the same trainer, inferer and sampler drive them:

    network(torch.cat([x_t, onehot], dim=1), timesteps) -> (N, 2C, H, W)   # eps and variance value v

with ``x_t`` (N, C, H, W) the noisy image and ``onehot`` (N, K, H, W) the one-hot label map
(K = 17: background, 15 AMOS organs, body). The conditioning decides how the label map enters:

- ``concat`` ("conditional DDPM"): the one-hot mask is concatenated to x_t at the input of a stock MONAI
  ``DiffusionModelUNet``.
- ``mask_guided`` ("mask-guided DDPM"): x_t alone enters the main U-Net; a second, U-Net-like encoder
  (:class:`GuideEncoder`) reads the one-hot mask. Its conv feature maps before each downsampling are
  concatenated (SPADE-like injection by concatenation) to the main U-Net's **encoder** features at the
  start of each resolution level (:attr:`MaskGuidedUNet.enc_inject`) **and** to its **decoder** features at
  the matching resolution (:attr:`MaskGuidedUNet.dec_inject`).
- ``edge_guided``: the one-hot mask is concatenated to x_t and the guide encoder reads the semantic edge
  map of the label map (:func:`semantic_edge_map`, computed here from the one-hot channels so training and
  inference need only the label map).

The ResNet blocks, attention, down- and up-sampling and the timestep embedding are MONAI's own
(``monai.networks.nets.diffusion_model_unet``); only the wiring that MONAI's U-Net cannot express (feature
concatenation from a second encoder into encoder and decoder) is written here.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from monai.networks.blocks import Convolution, SpatialAttentionBlock
from monai.networks.nets import DiffusionModelUNet
from monai.networks.nets.diffusion_model_unet import (
    DiffusionUnetDownsample,
    DiffusionUNetResnetBlock,
    WrappedUpsample,
    get_timestep_embedding,
    zero_module,
)
from monai.utils import ensure_tuple_rep

__all__ = ["CONDITIONINGS", "semantic_edge_map", "GuideConcat", "GuideEncoder", "MaskGuidedUNet", "build_semantic_unet"]

CONDITIONINGS = ("concat", "mask_guided", "edge_guided")


def semantic_edge_map(onehot: torch.Tensor) -> torch.Tensor:
    """Semantic edge map of a one-hot label map: 1 where the label differs from a 4-neighbour.

    Args:
        onehot: (N, K, H, W) one-hot (or soft) label map; the label is the channel argmax.
    Returns:
        (N, 1, H, W) float edge map in {0, 1}. Both sides of a boundary are marked.
    """
    labels = onehot.argmax(dim=1, keepdim=True).float()
    padded = F.pad(labels, (1, 1, 1, 1), mode="replicate")
    h, w = labels.shape[-2:]
    edge = torch.zeros_like(labels, dtype=torch.bool)
    for dy, dx in ((0, 1), (2, 1), (1, 0), (1, 2)):
        edge |= padded[..., dy : dy + h, dx : dx + w] != labels
    return edge.to(onehot.dtype)


class GuideConcat(nn.Module):
    """Concatenate guide features ``g`` to main-path features ``h`` along channels: ``cat([h, g], 1)``.

    A module (not an inline ``torch.cat``) so that each injection point is named and can be hooked.
    """

    def forward(self, h: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        return torch.cat([h, g], dim=1)


class GuideEncoder(nn.Module):
    """U-Net-like encoder for the conditioning map: per level two 3x3 conv-GN-SiLU layers, then a stride-2 conv.

    Args:
        spatial_dims: 2 for slices.
        in_channels: channels of the guide input (K for a one-hot mask, 1 for an edge map).
        channels: output channels per resolution level.
        norm_num_groups: GroupNorm groups.
    Returns (forward):
        list of feature maps, level i of shape (N, channels[i], H / 2^i, W / 2^i): the conv features
        **before** each downsampling.
    """

    def __init__(self, spatial_dims: int, in_channels: int, channels: Sequence[int], norm_num_groups: int) -> None:
        super().__init__()
        self.levels = nn.ModuleList()
        self.downs = nn.ModuleList()
        prev = in_channels
        for i, ch in enumerate(channels):
            self.levels.append(
                nn.Sequential(
                    Convolution(spatial_dims, prev, ch, kernel_size=3, conv_only=True),
                    nn.GroupNorm(norm_num_groups, ch),
                    nn.SiLU(),
                    Convolution(spatial_dims, ch, ch, kernel_size=3, conv_only=True),
                    nn.GroupNorm(norm_num_groups, ch),
                    nn.SiLU(),
                )
            )
            last = i == len(channels) - 1
            self.downs.append(
                nn.Identity() if last else Convolution(spatial_dims, ch, ch, strides=2, kernel_size=3, conv_only=True)
            )
            prev = ch

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for level, down in zip(self.levels, self.downs):
            x = level(x)
            feats.append(x)
            x = down(x)
        return feats


class MaskGuidedUNet(nn.Module):
    """Diffusion U-Net whose encoder and decoder receive a second encoder's features at every resolution.

    Args:
        spatial_dims: 2 (axial slices).
        image_channels: C, channels of x_t and of the eps / variance outputs (output has 2C channels).
        num_classes: K, channels of the one-hot label map appended to x_t in the input.
        guide: "mask" (guide encoder reads the one-hot mask; the main U-Net reads x_t only) or
            "edge" (main U-Net reads x_t and the mask; the guide encoder reads the semantic edge map).
        channels: main U-Net channels per level (multiples of ``norm_num_groups``).
        guide_channels: guide encoder channels per level (default: ``channels``).
        attention_levels: self-attention after the ResNet blocks of these levels.
        num_res_blocks: ResNet blocks per level (encoder; the decoder uses the same number).
        norm_num_groups: GroupNorm groups.
        num_head_channels: channels per attention head.
        use_flash_attention: PyTorch SDPA in attention blocks (needs CUDA in MONAI 1.6).
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        image_channels: int = 1,
        num_classes: int = 17,
        guide: str = "mask",
        channels: Sequence[int] = (64, 128, 256, 256),
        guide_channels: Sequence[int] | None = None,
        attention_levels: Sequence[bool] = (False, False, True, True),
        num_res_blocks: int = 2,
        norm_num_groups: int = 32,
        num_head_channels: int = 32,
        use_flash_attention: bool = False,
    ) -> None:
        super().__init__()
        if guide not in ("mask", "edge"):
            raise ValueError(f"guide must be 'mask' or 'edge', got {guide!r}.")
        if len(attention_levels) != len(channels):
            raise ValueError("attention_levels must have one entry per level of channels.")
        guide_channels = tuple(guide_channels) if guide_channels is not None else tuple(channels)
        if len(guide_channels) != len(channels):
            raise ValueError("guide_channels must have one entry per level of channels.")
        if any(c % norm_num_groups for c in (*channels, *guide_channels)):
            raise ValueError(f"channels and guide_channels must be multiples of norm_num_groups={norm_num_groups}.")
        self.image_channels = image_channels
        self.num_classes = num_classes
        self.guide = guide
        self.channels = tuple(channels)
        n_levels = len(channels)
        nrb = ensure_tuple_rep(num_res_blocks, n_levels)
        main_in = image_channels if guide == "mask" else image_channels + num_classes
        guide_in = num_classes if guide == "mask" else 1

        def resblock(cin: int, cout: int) -> DiffusionUNetResnetBlock:
            return DiffusionUNetResnetBlock(spatial_dims, cin, temb_dim, cout, norm_num_groups=norm_num_groups)

        def attention(ch: int) -> nn.Module:
            return SpatialAttentionBlock(
                spatial_dims,
                ch,
                num_head_channels=num_head_channels,
                norm_num_groups=norm_num_groups,
                use_flash_attention=use_flash_attention,
            )

        temb_dim = channels[0] * 4
        self.time_embed = nn.Sequential(nn.Linear(channels[0], temb_dim), nn.SiLU(), nn.Linear(temb_dim, temb_dim))
        self.guide_encoder = GuideEncoder(spatial_dims, guide_in, guide_channels, norm_num_groups)
        self.conv_in = Convolution(spatial_dims, main_in, channels[0], kernel_size=3, conv_only=True)

        # encoder: inject guide features, ResNet blocks (+ attention), downsample
        self.enc_inject = nn.ModuleList([GuideConcat() for _ in range(n_levels)])
        self.enc_blocks = nn.ModuleList()
        self.enc_attn = nn.ModuleList()
        self.downsamplers = nn.ModuleList()
        prev = channels[0]
        for i, ch in enumerate(channels):
            blocks, attns = nn.ModuleList(), nn.ModuleList()
            for j in range(nrb[i]):
                cin = prev + guide_channels[i] if j == 0 else ch
                blocks.append(resblock(cin, ch))
                attns.append(attention(ch) if attention_levels[i] else nn.Identity())
            self.enc_blocks.append(blocks)
            self.enc_attn.append(attns)
            last = i == n_levels - 1
            self.downsamplers.append(
                nn.Identity() if last else DiffusionUnetDownsample(spatial_dims, ch, use_conv=True, out_channels=ch)
            )
            prev = ch

        # middle
        self.mid_block1 = resblock(channels[-1], channels[-1])
        self.mid_attn = attention(channels[-1])
        self.mid_block2 = resblock(channels[-1], channels[-1])

        # decoder: per level (deepest first) inject guide features with the first skip, ResNet blocks, upsample
        self.dec_inject = nn.ModuleList([GuideConcat() for _ in range(n_levels)])
        self.dec_blocks = nn.ModuleList()
        self.dec_attn = nn.ModuleList()
        self.upsamplers = nn.ModuleList()
        prev = channels[-1]
        for i in reversed(range(n_levels)):
            ch = channels[i]
            blocks, attns = nn.ModuleList(), nn.ModuleList()
            for j in range(nrb[i]):
                cin = prev + ch + (guide_channels[i] if j == 0 else 0)
                blocks.append(resblock(cin, ch))
                attns.append(attention(ch) if attention_levels[i] else nn.Identity())
                prev = ch
            self.dec_blocks.append(blocks)
            self.dec_attn.append(attns)
            self.upsamplers.append(
                nn.Identity()
                if i == 0
                else WrappedUpsample(
                    spatial_dims=spatial_dims,
                    mode="nontrainable",
                    in_channels=ch,
                    out_channels=ch,
                    interp_mode="nearest",
                    scale_factor=2.0,
                    post_conv=Convolution(spatial_dims, ch, ch, kernel_size=3, conv_only=True),
                    align_corners=None,
                )
            )
        self.out = nn.Sequential(
            nn.GroupNorm(norm_num_groups, channels[0]),
            nn.SiLU(),
            zero_module(Convolution(spatial_dims, channels[0], 2 * image_channels, kernel_size=3, conv_only=True)),
        )

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """
        Args:
            x: (N, C + K, H, W): x_t followed by the one-hot label map; H, W divisible by 2^(levels-1).
            timesteps: (N,) diffusion timesteps.
            context: unused (kept for MONAI's ``DiffusionInferer`` calling convention).
        Returns:
            (N, 2C, H, W): eps prediction and variance interpolation value.
        """
        del context
        c = self.image_channels
        if x.shape[1] != c + self.num_classes:
            raise ValueError(
                f"MaskGuidedUNet expects {c} image + {self.num_classes} label channels, got input of shape {tuple(x.shape)}."
            )
        x_t, onehot = x[:, :c], x[:, c:]
        if self.guide == "mask":
            main_in, guide_in = x_t, onehot
        else:
            main_in, guide_in = x, semantic_edge_map(onehot)
        guides = self.guide_encoder(guide_in)
        emb = self.time_embed(get_timestep_embedding(timesteps, self.channels[0]).to(x.dtype))

        h = self.conv_in(main_in)
        skips = []
        for i in range(len(self.channels)):
            h = self.enc_inject[i](h, guides[i])
            for block, attn in zip(self.enc_blocks[i], self.enc_attn[i]):
                h = attn(block(h, emb)).contiguous()
                skips.append(h)
            h = self.downsamplers[i](h)

        h = self.mid_block2(self.mid_attn(self.mid_block1(h, emb)).contiguous(), emb)

        for k, i in enumerate(reversed(range(len(self.channels)))):
            for j, (block, attn) in enumerate(zip(self.dec_blocks[k], self.dec_attn[k])):
                h = torch.cat([h, skips.pop()], dim=1)
                if j == 0:
                    h = self.dec_inject[i](h, guides[i])
                h = attn(block(h, emb)).contiguous()
            h = self.upsamplers[k](h)
        return self.out(h)


def build_semantic_unet(
    conditioning: str = "mask_guided",
    image_channels: int = 1,
    num_classes: int = 17,
    channels: Sequence[int] = (64, 128, 256, 256),
    guide_channels: Sequence[int] | None = None,
    attention_levels: Sequence[bool] = (False, False, True, True),
    num_res_blocks: int = 2,
    norm_num_groups: int = 32,
    num_head_channels: int = 32,
    use_flash_attention: bool = False,
) -> nn.Module:
    """Build the network for one conditioning (``"concat"``, ``"mask_guided"`` or ``"edge_guided"``).

    ``concat`` is a stock MONAI ``DiffusionModelUNet`` with C + K input channels; the other two are
    :class:`MaskGuidedUNet`. All output 2C channels (eps and learned-range variance value).
    """
    if conditioning not in CONDITIONINGS:
        raise ValueError(f"conditioning must be one of {CONDITIONINGS}, got {conditioning!r}.")
    if conditioning == "concat":
        return DiffusionModelUNet(
            spatial_dims=2,
            in_channels=image_channels + num_classes,
            out_channels=2 * image_channels,
            num_res_blocks=num_res_blocks,
            channels=tuple(channels),
            attention_levels=tuple(attention_levels),
            norm_num_groups=norm_num_groups,
            num_head_channels=num_head_channels,
            use_flash_attention=use_flash_attention,
        )
    return MaskGuidedUNet(
        spatial_dims=2,
        image_channels=image_channels,
        num_classes=num_classes,
        guide="mask" if conditioning == "mask_guided" else "edge",
        channels=channels,
        guide_channels=guide_channels,
        attention_levels=attention_levels,
        num_res_blocks=num_res_blocks,
        norm_num_groups=norm_num_groups,
        num_head_channels=num_head_channels,
        use_flash_attention=use_flash_attention,
    )
