"""Conditional GAN baselines of the comparison (Pix2Pix, SPADE), trained by MONAI's ``AdversarialTrainer``.

``AdversarialTrainer`` calls ``g_inferer(inputs, G, *args, **kwargs)``, ``d_inferer(image, D, *args, **kwargs)``,
``recon_loss_function(fakes, targets)``, ``g_loss_function(fake_logits)`` and
``d_loss_function(real_logits, fake_logits)``. :class:`LabelToImagePrepareBatch` hands it the real slice as
``inputs`` (the discriminator's "reals"), ``(image, onehot)`` as ``targets`` and ``seg=onehot`` as keyword, so:

- the generator sees only the label map (:class:`LabelToImageInferer`: ``tanh(G(onehot))`` in [-1, 1]);
- the discriminator is conditional: it reads ``cat([image, onehot])`` (:class:`ConditionalDiscriminatorInferer`,
  MONAI's ``PatchDiscriminator`` returns every layer's features, the last one the patch logits);
- :class:`ConditionalGanGeneratorLoss` is the non-adversarial part of the generator loss: Pix2Pix's L1 to the
  real slice and SPADE's discriminator feature matching (weights from the config).

The same :class:`LabelToImageInferer` is the bundle's sampler at evaluation and inference
(``sampler(onehot, network) -> image``), so GANs and diffusion models go through one evaluation.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.inferers import Inferer
from monai.losses import PatchAdversarialLoss

__all__ = [
    "LabelToImagePrepareBatch",
    "LabelToImageInferer",
    "ConditionalDiscriminatorInferer",
    "GeneratorAdversarialLoss",
    "DiscriminatorAdversarialLoss",
    "ConditionalGanGeneratorLoss",
]


class LabelToImagePrepareBatch:
    """``(image, (image, onehot), (), {"seg": onehot})`` from a batch with ``image`` (N, C, H, W), ``label`` (N, K, H, W)."""

    def __init__(self, image_key: str = "image", label_key: str = "label") -> None:
        self.image_key, self.label_key = image_key, label_key

    def __call__(self, batchdata: dict, device=None, non_blocking: bool = False, **kwargs):
        image = batchdata[self.image_key].to(device=device, non_blocking=non_blocking).float()
        onehot = batchdata[self.label_key].to(device=device, non_blocking=non_blocking).float()
        return image, (image, onehot), (), {"seg": onehot}


def _first(output):
    """SPADENet returns a tuple ``(image,)`` (plus VAE terms); plain generators a tensor."""
    return output[0] if isinstance(output, (tuple, list)) else output


class LabelToImageInferer(Inferer):
    """Generator forward from the label map only: ``tanh(G(onehot))``, (N, K, H, W) -> (N, 1, H, W) in [-1, 1].

    As the trainer's ``g_inferer`` it is called ``(real_image, G, seg=onehot)`` and ignores the real image; as a
    bundle sampler it is called ``(onehot, G)``. Extra keyword arguments (a sampler's ``num_inference_steps``
    and the like in shared configs) are accepted and unused: a GAN paints in one forward pass.
    """

    def __init__(self, **unused) -> None:
        super().__init__()

    def __call__(self, inputs: torch.Tensor, network: nn.Module, *args, seg: torch.Tensor | None = None, **kwargs):
        return torch.tanh(_first(network(inputs if seg is None else seg)))


class ConditionalDiscriminatorInferer(Inferer):
    """Discriminator forward on ``cat([image, seg], 1)``: a list of feature maps, the last one the patch logits."""

    def __call__(self, inputs: torch.Tensor, network: nn.Module, *args, seg: torch.Tensor, **kwargs):
        return network(torch.cat([inputs, seg.to(inputs.dtype)], dim=1))


class GeneratorAdversarialLoss(nn.Module):
    """``g_loss_function(fake_logits)``: MONAI's ``PatchAdversarialLoss`` for the generator, times ``weight``."""

    def __init__(self, criterion: str = "least_squares", weight: float = 1.0) -> None:
        super().__init__()
        self.adv = PatchAdversarialLoss(criterion=criterion)
        self.weight = weight

    def forward(self, fake_logits: Sequence[torch.Tensor]) -> torch.Tensor:
        return self.weight * self.adv(fake_logits[-1], target_is_real=True, for_discriminator=False)


class DiscriminatorAdversarialLoss(nn.Module):
    """``d_loss_function(real_logits, fake_logits)``: mean of the real and fake terms of ``PatchAdversarialLoss``."""

    def __init__(self, criterion: str = "least_squares") -> None:
        super().__init__()
        self.adv = PatchAdversarialLoss(criterion=criterion)

    def forward(self, real_logits: Sequence[torch.Tensor], fake_logits: Sequence[torch.Tensor]) -> torch.Tensor:
        real = self.adv(real_logits[-1], target_is_real=True, for_discriminator=True)
        fake = self.adv(fake_logits[-1], target_is_real=False, for_discriminator=True)
        return 0.5 * (real + fake)


class ConditionalGanGeneratorLoss(nn.Module):
    """Non-adversarial generator terms: ``l1_weight * |fake - real|`` + ``feature_matching_weight * FM``.

    FM (SPADE / pix2pixHD) is the mean over the discriminator's intermediate layers of the L1 distance between its
    features of ``cat([fake, seg])`` and of ``cat([real, seg])`` (the real features carry no gradient).

    Args:
        discriminator: the ``PatchDiscriminator`` (needed only when ``feature_matching_weight`` > 0).
        l1_weight: Pix2Pix uses 100.
        feature_matching_weight: SPADE uses 10.
    Forward:
        ``fake`` (N, C, H, W) and ``targets = (real (N, C, H, W), onehot (N, K, H, W))`` -> scalar.
    """

    def __init__(self, discriminator: nn.Module | None = None, l1_weight: float = 0.0, feature_matching_weight: float = 0.0):
        super().__init__()
        if feature_matching_weight > 0 and discriminator is None:
            raise ValueError("ConditionalGanGeneratorLoss: feature_matching_weight > 0 needs the discriminator.")
        self.discriminator = [discriminator]  # a list, so the discriminator's weights are not this loss's parameters
        self.l1_weight = l1_weight
        self.feature_matching_weight = feature_matching_weight

    def forward(self, fake: torch.Tensor, targets: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        real, onehot = targets
        loss = fake.new_zeros(())
        if self.l1_weight:
            loss = loss + self.l1_weight * F.l1_loss(fake, real)
        if self.feature_matching_weight:
            d = self.discriminator[0]
            with torch.no_grad():
                real_feats = d(torch.cat([real, onehot], 1))[:-1]
            fake_feats = d(torch.cat([fake, onehot], 1))[:-1]
            fm = sum(F.l1_loss(f, r) for f, r in zip(fake_feats, real_feats)) / max(len(real_feats), 1)
            loss = loss + self.feature_matching_weight * fm
        return loss
