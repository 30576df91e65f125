"""Training loss of the joint image-label autoencoder (Hu et al., stage 1).

``loss = w_img * L1(image) + w_kl * KL(q(z|x) || N(0, I)) + w_seg * DiceCE(label logits, one-hot label)
        [+ w_perc * perceptual(image)]``

The prediction is the autoencoder's ``(reconstruction, z_mu, z_sigma)``; the target is the joint tensor
``(B, 1 + K, *S)`` (image channel, then the one-hot label). The optional perceptual term is a module built
once by the caller (e.g. MONAI ``PerceptualLoss``, which needs pretrained weights, so it is off by
default). The last value of every term is kept in ``self.last_terms`` for logging handlers.

The optional patch-adversarial term (trained by :class:`~tools.cardiac.vae_gan_trainer.VAEGANTrainer`) has
its two losses here as well: :class:`PatchGeneratorLoss` (added to the autoencoder loss) and
:class:`PatchDiscriminatorLoss` (the discriminator's own loss).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.losses import DiceCELoss
from torch import nn

__all__ = ["JointVAELoss", "PatchDiscriminatorLoss", "PatchGeneratorLoss", "kl_divergence"]


def kl_divergence(z_mu: torch.Tensor, z_sigma: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, sigma^2) || N(0, 1)) summed over latent voxels and channels, averaged over the batch."""
    kl = 0.5 * (z_mu.pow(2) + z_sigma.pow(2) - torch.log(z_sigma.pow(2).clamp_min(1e-12)) - 1.0)
    return kl.flatten(1).sum(1).mean()


class JointVAELoss(nn.Module):
    """Image L1 + KL + label Dice-CE (+ optional perceptual) for :class:`JointAutoencoderKL`.

    Args:
        image_weight: weight of the L1 image reconstruction term.
        kl_weight: weight of the KL term (1e-6 as in MONAI's LDM tutorials).
        seg_weight: weight of the Dice + cross-entropy term on the label logits.
        perceptual_loss: optional module ``(pred_image, target_image) -> scalar``; built once.
        perceptual_weight: weight of the perceptual term (ignored without ``perceptual_loss``).
    """

    def __init__(
        self,
        image_weight: float = 1.0,
        kl_weight: float = 1e-6,
        seg_weight: float = 1.0,
        perceptual_loss: nn.Module | None = None,
        perceptual_weight: float = 0.0,
    ) -> None:
        super().__init__()
        self.image_weight = image_weight
        self.kl_weight = kl_weight
        self.seg_weight = seg_weight
        self.perceptual_loss = perceptual_loss
        self.perceptual_weight = perceptual_weight
        self.dice_ce = DiceCELoss(softmax=True, to_onehot_y=False)
        self.last_terms: dict[str, float] = {}

    def forward(self, pred: tuple[torch.Tensor, torch.Tensor, torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        recon, z_mu, z_sigma = pred
        if recon.shape != target.shape:
            raise ValueError(f"reconstruction shape {tuple(recon.shape)} != target shape {tuple(target.shape)}")
        recon = recon.float()
        l1 = torch.nn.functional.l1_loss(recon[:, :1], target[:, :1])
        kl = kl_divergence(z_mu.float(), z_sigma.float())
        seg = self.dice_ce(recon[:, 1:], target[:, 1:])
        loss = self.image_weight * l1 + self.kl_weight * kl + self.seg_weight * seg
        terms = {"l1": l1, "kl": kl, "dice_ce": seg}
        if self.perceptual_loss is not None and self.perceptual_weight > 0:
            perc = self.perceptual_loss(recon[:, :1], target[:, :1])
            loss = loss + self.perceptual_weight * perc
            terms["perceptual"] = perc
        self.last_terms = {k: float(v.detach()) for k, v in terms.items()}
        return loss


def _logits(d_out: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
    """MONAI's ``PatchDiscriminator`` returns its intermediate features with the patch logits last."""
    return d_out[-1] if isinstance(d_out, (list, tuple)) else d_out


class PatchGeneratorLoss(nn.Module):
    """Adversarial term of the autoencoder loss: ``weight * L(D(reconstructed image), real)``.

    Args:
        adversarial_loss: MONAI ``PatchAdversarialLoss`` (least squares in the bundle).
        weight: ``adv_weight`` (> 0).

    The input is the discriminator's output on the reconstructed image (its last element, the patch
    logits ``(B, 1, *patches)``, is scored); the result is a scalar.
    """

    def __init__(self, adversarial_loss: nn.Module, weight: float) -> None:
        super().__init__()
        if weight <= 0:
            raise ValueError(f"adv_weight must be > 0 for the adversarial term (0 disables it), got {weight}")
        self.adversarial_loss = adversarial_loss
        self.weight = float(weight)

    def forward(self, fake_out: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
        logits = _logits(fake_out).float()
        return self.weight * self.adversarial_loss(logits, target_is_real=True, for_discriminator=False)


class PatchDiscriminatorLoss(nn.Module):
    """Discriminator loss ``(L(D(real image), real) + L(D(reconstructed image), fake)) / 2``.

    Args:
        adversarial_loss: MONAI ``PatchAdversarialLoss`` (least squares in the bundle).
    """

    def __init__(self, adversarial_loss: nn.Module) -> None:
        super().__init__()
        self.adversarial_loss = adversarial_loss

    def forward(self, real_out: torch.Tensor | Sequence[torch.Tensor],
                fake_out: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
        real = self.adversarial_loss(_logits(real_out).float(), target_is_real=True, for_discriminator=True)
        fake = self.adversarial_loss(_logits(fake_out).float(), target_is_real=False, for_discriminator=True)
        return 0.5 * (real + fake)
