"""Joint image-label variational autoencoder (Hu et al., cardiac CT latent diffusion, stage 1).

A CT volume and its one-hot label map are encoded **together** into one 3-channel latent:

* two one-layer encoders (a 3x3x3 convolution each) map the image (1 channel) and the one-hot label
  (``num_classes`` channels, background included) to the same ``channels[0]`` feature maps;
* their outputs are **summed** (not concatenated) and the sum goes through the rest of MONAI's
  ``AutoencoderKL`` encoder to the latent mean / log-variance (``latent_channels`` = 3 by default);
* MONAI's ``AutoencoderKL`` decoder maps a latent to ``1 + num_classes`` channels: the image
  (channel 0, same intensity scale as the input) and the label logits (channels 1..).

The network takes and returns the *joint* tensor ``(B, 1 + num_classes, H, W, D)`` = image channel
followed by the one-hot label, so that MONAI's ``SupervisedTrainer`` and ``LatentDiffusionInferer``
(``encode_stage_2_inputs`` / ``decode_stage_2_outputs``) work with it unchanged. Gradient
checkpointing is MONAI's ``use_checkpoint``; bf16 is the trainer's autocast.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.blocks import Convolution
from monai.networks.nets import AutoencoderKL
from torch import nn

__all__ = ["JointAutoencoderKL", "reconstruct_from_mean"]


class JointAutoencoderKL(nn.Module):
    """Image + label KL autoencoder with summed one-layer encoders.

    Args:
        spatial_dims: 2 or 3.
        num_classes: label classes including background (9 for the eight cardiac structures).
        channels: AutoencoderKL level channels; ``channels[0]`` is the width of both one-layer encoders.
        latent_channels: latent channels (3 in the paper).
        num_res_blocks, attention_levels, norm_num_groups, with_encoder_nonlocal_attn,
        with_decoder_nonlocal_attn, use_flash_attention: passed to ``AutoencoderKL``.
        use_checkpoint: gradient (activation) checkpointing of encoder and decoder.

    Shapes: input/output joint tensor ``(B, 1 + num_classes, *S)``; latent
    ``(B, latent_channels, *S / 2 ** (len(channels) - 1))``.
    """

    def __init__(
        self,
        spatial_dims: int = 3,
        num_classes: int = 9,
        channels: Sequence[int] = (32, 64, 64),
        latent_channels: int = 3,
        num_res_blocks: Sequence[int] | int = 1,
        attention_levels: Sequence[bool] | None = None,
        norm_num_groups: int = 16,
        with_encoder_nonlocal_attn: bool = False,
        with_decoder_nonlocal_attn: bool = False,
        use_checkpoint: bool = False,
        use_flash_attention: bool = False,
    ) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes must count the background and at least one structure, got {num_classes}")
        channels = tuple(channels)
        if attention_levels is None:
            attention_levels = (False,) * len(channels)
        self.num_classes = num_classes
        self.latent_channels = latent_channels
        self.autoencoder = AutoencoderKL(
            spatial_dims=spatial_dims,
            in_channels=channels[0],
            out_channels=1 + num_classes,
            num_res_blocks=num_res_blocks,
            channels=channels,
            attention_levels=tuple(attention_levels),
            latent_channels=latent_channels,
            norm_num_groups=norm_num_groups,
            with_encoder_nonlocal_attn=with_encoder_nonlocal_attn,
            with_decoder_nonlocal_attn=with_decoder_nonlocal_attn,
            use_checkpoint=use_checkpoint,
            use_flash_attention=use_flash_attention,
        )
        # The AutoencoderKL encoder's own first convolution is replaced by the two one-layer encoders.
        self.autoencoder.encoder.blocks[0] = nn.Identity()
        conv = dict(spatial_dims=spatial_dims, out_channels=channels[0], strides=1, kernel_size=3, padding=1,
                    conv_only=True)
        self.image_encoder = Convolution(in_channels=1, **conv)
        self.label_encoder = Convolution(in_channels=num_classes, **conv)

    # ------------------------------------------------------------------ helpers
    def split(self, joint: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, 1 + K, *S)`` -> image ``(B, 1, *S)`` and label part ``(B, K, *S)``."""
        if joint.shape[1] != 1 + self.num_classes:
            raise ValueError(
                f"joint input must have 1 image + {self.num_classes} one-hot label channels, got shape {tuple(joint.shape)}"
            )
        return joint[:, :1], joint[:, 1:]

    def embed(self, image: torch.Tensor, label_onehot: torch.Tensor) -> torch.Tensor:
        """Sum of the two one-layer encoders: ``(B, channels[0], *S)``."""
        return self.image_encoder(image) + self.label_encoder(label_onehot)

    # ------------------------------------------------------------------ AutoencoderKL interface
    def encode(self, joint: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Joint tensor -> latent mean and sigma, each ``(B, latent_channels, *S_latent)``."""
        image, label = self.split(joint)
        return self.autoencoder.encode(self.embed(image, label))

    def sampling(self, z_mu: torch.Tensor, z_sigma: torch.Tensor) -> torch.Tensor:
        return self.autoencoder.sampling(z_mu, z_sigma)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latent -> joint output ``(B, 1 + K, *S)``: image then label logits."""
        return self.autoencoder.decode(z)

    def decode_pair(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Latent -> (image ``(B, 1, *S)``, label logits ``(B, K, *S)``)."""
        out = self.decode(z)
        return out[:, :1], out[:, 1:]

    def forward(self, joint: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns (reconstruction ``(B, 1 + K, *S)``: image + label logits, z_mu, z_sigma)."""
        z_mu, z_sigma = self.encode(joint)
        z = self.sampling(z_mu, z_sigma)
        return self.decode(z), z_mu, z_sigma

    def encode_stage_2_inputs(self, joint: torch.Tensor) -> torch.Tensor:
        """Latent sample used by the diffusion stage (MONAI LatentDiffusionInferer interface)."""
        z_mu, z_sigma = self.encode(joint)
        return self.sampling(z_mu, z_sigma)

    def decode_stage_2_outputs(self, z: torch.Tensor) -> torch.Tensor:
        """Latent -> joint output (image channel + label logits)."""
        return self.decode(z)


def reconstruct_from_mean(inputs: torch.Tensor, network: nn.Module) -> torch.Tensor:
    """Deterministic reconstruction ``decode(z_mu)`` (validation inferer; unwraps DistributedDataParallel)."""
    net = network.module if hasattr(network, "module") else network
    return net.decode(net.encode(inputs)[0])
