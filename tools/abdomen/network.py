"""Mask-to-CT diffusion U-Nets of Zhuang et al. (semantic abdominal CT synthesis) and the SDM baseline.

All networks share one calling convention so that the same trainer, inferer and sampler drive them:

    network(torch.cat([x_t, onehot], dim=1), timesteps) -> (N, 2C, H, W)   # eps and variance value v

with ``x_t`` (N, C, H, W) the noisy image and ``onehot`` (N, K, H, W) the one-hot label map
(K = 17: background, 15 AMOS organs, body). The conditioning decides how the label map enters:

- ``concat`` ("conditional DDPM"): the label map is concatenated to x_t at the input, as ONE channel (the
  class id scaled to [-1, 1], :func:`label_index_channel`; ``mask_encoding="onehot"``: the K one-hot channels).
- ``mask_guided`` ("mask-guided DDPM"): x_t alone enters the main U-Net; a second, U-Net-like encoder
  (:class:`GuideEncoder`) reads the one-hot mask. Its conv feature maps before each downsampling are
  concatenated (SPADE-like injection by concatenation) to the main U-Net's **encoder** features at the
  start of each resolution level (:attr:`MaskGuidedUNet.enc_inject`) **and** to its **decoder** features at
  the matching resolution (:attr:`MaskGuidedUNet.dec_inject`).
- ``edge_guided``: the label map is concatenated to x_t (encoded as for ``concat``) and the guide encoder
  reads the semantic edge map of the label map (:func:`semantic_edge_map`, computed here from the one-hot
  channels so training and inference need only the label map).
- ``sdm`` (baseline, Wang et al.'s semantic diffusion model): MONAI's ``SPADEDiffusionModelUNet``, the label
  map enters every ResNet block through SPADE normalisation (:class:`SPADEDiffusionUNetAdapter`).

The three conditionings of the paper are one class (:class:`MaskGuidedUNet`) with the same main U-Net (same
levels, widths and ResNet blocks); they differ only in what the input convolution reads and whether a guide
encoder exists. The ResNet blocks, attention, down- and up-sampling and the timestep embedding are MONAI's own
(``monai.networks.nets.diffusion_model_unet``); only the wiring that MONAI's U-Net cannot express (feature
concatenation from a second encoder into encoder and decoder) is written here.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from monai.networks.blocks import Convolution, SpatialAttentionBlock
from monai.networks.nets import SPADEDiffusionModelUNet
from monai.networks.nets.diffusion_model_unet import (
    DiffusionUnetDownsample,
    DiffusionUNetResnetBlock,
    WrappedUpsample,
    get_timestep_embedding,
    zero_module,
)
from monai.utils import ensure_tuple_rep

__all__ = [
    "CONDITIONINGS",
    "MASK_ENCODINGS",
    "semantic_edge_map",
    "label_index_channel",
    "GuideConcat",
    "GuideEncoder",
    "MaskGuidedUNet",
    "SPADEDiffusionUNetAdapter",
    "build_semantic_unet",
]

CONDITIONINGS = ("concat", "mask_guided", "edge_guided", "sdm")
MASK_ENCODINGS = ("index", "onehot")


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


def label_index_channel(onehot: torch.Tensor) -> torch.Tensor:
    """The label map as one channel: class id ``k`` of K classes -> ``2 k / (K - 1) - 1`` in [-1, 1].

    Args:
        onehot: (N, K, H, W) one-hot label map.
    Returns:
        (N, 1, H, W) float.
    """
    k = onehot.shape[1]
    return onehot.argmax(dim=1, keepdim=True).to(onehot.dtype) * (2.0 / max(k - 1, 1)) - 1.0


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
        guide: "mask" (guide encoder reads the one-hot mask; the main U-Net reads x_t only),
            "edge" (main U-Net reads x_t and the mask; the guide encoder reads the semantic edge map) or
            "none" (no guide encoder; main U-Net reads x_t and the mask: the ``concat`` conditioning).
        mask_encoding: how the mask enters the main U-Net's input with ``guide`` "edge" / "none": "index"
            (one channel, :func:`label_index_channel`) or "onehot" (K channels).
        channels: main U-Net channels per level (multiples of ``norm_num_groups``).
        guide_channels: guide encoder channels per level (default: ``channels``).
        attention_levels: self-attention after the ResNet blocks of these levels.
        num_res_blocks: ResNet blocks per level (encoder; the decoder uses the same number).
        norm_num_groups: GroupNorm groups.
        num_head_channels: channels per attention head.
        use_flash_attention: PyTorch SDPA in attention blocks (MONAI's switch; CPU and CUDA).
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        image_channels: int = 1,
        num_classes: int = 17,
        guide: str = "mask",
        mask_encoding: str = "index",
        channels: Sequence[int] = (64, 128, 256, 256),
        guide_channels: Sequence[int] | None = None,
        attention_levels: Sequence[bool] = (False, False, True, True),
        num_res_blocks: int = 2,
        norm_num_groups: int = 32,
        num_head_channels: int = 32,
        use_flash_attention: bool = False,
    ) -> None:
        super().__init__()
        if guide not in ("mask", "edge", "none"):
            raise ValueError(f"guide must be 'mask', 'edge' or 'none', got {guide!r}.")
        if mask_encoding not in MASK_ENCODINGS:
            raise ValueError(f"mask_encoding must be one of {MASK_ENCODINGS}, got {mask_encoding!r}.")
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
        self.mask_encoding = mask_encoding
        self.channels = tuple(channels)
        n_levels = len(channels)
        nrb = ensure_tuple_rep(num_res_blocks, n_levels)
        mask_in = 0 if guide == "mask" else (1 if mask_encoding == "index" else num_classes)
        main_in = image_channels + mask_in
        guide_in = num_classes if guide == "mask" else 1
        if guide == "none":  # no injected features anywhere
            guide_channels = (0,) * n_levels

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
        self.guide_encoder = (
            GuideEncoder(spatial_dims, guide_in, guide_channels, norm_num_groups) if guide != "none" else None
        )
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
        mask = label_index_channel(onehot) if self.mask_encoding == "index" else onehot
        if self.guide == "mask":
            main_in, guides = x_t, self.guide_encoder(onehot)
        else:
            main_in = torch.cat([x_t, mask], dim=1)
            guides = self.guide_encoder(semantic_edge_map(onehot)) if self.guide_encoder is not None else None
        emb = self.time_embed(get_timestep_embedding(timesteps, self.channels[0]).to(x.dtype))

        h = self.conv_in(main_in)
        skips = []
        for i in range(len(self.channels)):
            if guides is not None:
                h = self.enc_inject[i](h, guides[i])
            for block, attn in zip(self.enc_blocks[i], self.enc_attn[i]):
                h = attn(block(h, emb)).contiguous()
                skips.append(h)
            h = self.downsamplers[i](h)

        h = self.mid_block2(self.mid_attn(self.mid_block1(h, emb)).contiguous(), emb)

        for k, i in enumerate(reversed(range(len(self.channels)))):
            for j, (block, attn) in enumerate(zip(self.dec_blocks[k], self.dec_attn[k])):
                h = torch.cat([h, skips.pop()], dim=1)
                if j == 0 and guides is not None:
                    h = self.dec_inject[i](h, guides[i])
                h = attn(block(h, emb)).contiguous()
            h = self.upsamplers[k](h)
        return self.out(h)


class SPADEDiffusionUNetAdapter(nn.Module):
    """MONAI's ``SPADEDiffusionModelUNet`` (SDM) behind this module's calling convention.

    ``forward(cat([x_t, onehot], 1), t)`` calls ``unet(x_t, t, seg=onehot)``: the one-hot map conditions every
    ResNet block through SPADE normalisation. Output (N, 2C, H, W) as for the other networks.
    """

    def __init__(self, unet: SPADEDiffusionModelUNet, image_channels: int, num_classes: int) -> None:
        super().__init__()
        self.unet = unet
        self.image_channels = image_channels
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        c = self.image_channels
        if x.shape[1] != c + self.num_classes:
            raise ValueError(
                f"SDM expects {c} image + {self.num_classes} label channels, got input of shape {tuple(x.shape)}."
            )
        return self.unet(x[:, :c], timesteps, seg=x[:, c:], context=context)


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
    mask_encoding: str = "index",
) -> nn.Module:
    """Build the network for one conditioning (``"concat"``, ``"mask_guided"``, ``"edge_guided"`` or ``"sdm"``).

    The paper's three are :class:`MaskGuidedUNet` with one main U-Net (equal depth and width); ``sdm`` is MONAI's
    ``SPADEDiffusionModelUNet`` with the same levels, widths and ResNet blocks per level (its decoder, as MONAI's
    U-Net, has one block more per level). All output 2C channels (eps and learned-range variance value).
    """
    if conditioning not in CONDITIONINGS:
        raise ValueError(f"conditioning must be one of {CONDITIONINGS}, got {conditioning!r}.")
    if conditioning == "sdm":
        unet = SPADEDiffusionModelUNet(
            spatial_dims=2,
            in_channels=image_channels,
            out_channels=2 * image_channels,
            label_nc=num_classes,
            num_res_blocks=num_res_blocks,
            channels=tuple(channels),
            attention_levels=tuple(attention_levels),
            norm_num_groups=norm_num_groups,
            num_head_channels=num_head_channels,
            spade_intermediate_channels=channels[0],
            use_flash_attention=use_flash_attention,
        )
        return SPADEDiffusionUNetAdapter(unet, image_channels, num_classes)
    return MaskGuidedUNet(
        spatial_dims=2,
        image_channels=image_channels,
        num_classes=num_classes,
        guide={"concat": "none", "mask_guided": "mask", "edge_guided": "edge"}[conditioning],
        mask_encoding=mask_encoding,
        channels=channels,
        guide_channels=guide_channels,
        attention_levels=attention_levels,
        num_res_blocks=num_res_blocks,
        norm_num_groups=norm_num_groups,
        num_head_channels=num_head_channels,
        use_flash_attention=use_flash_attention,
    )
