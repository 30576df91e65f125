"""Kendall et al. (CVPR 2018) homoscedastic-uncertainty weighting of AortaDiff's two task losses.

    L = 0.5 exp(-s1) L_img + 0.5 s1 + 0.5 exp(-s2) L_mask + 0.5 s2

with learnable log-variances ``s1`` (image) and ``s2`` (mask) that go into the optimiser together with
the network. ``learnable=False`` switches to fixed weights: ``L = w_img L_img + w_mask L_mask``.
When a batch holds no labeled sample (``mask_valid=False``) the whole mask term, ``0.5 s2`` included,
is left out, so ``s2`` is not pushed towards -inf by batches without a lumen label. ``mask_valid`` may be a
tensor (e.g. ``n_labeled > 0``): the term is then dropped by ``torch.where`` on the device, with no host sync,
and the value and gradients are the same as with a Python bool.
"""

from __future__ import annotations

import torch
from torch import nn


class KendallUncertaintyWeighting(nn.Module):
    """Combine the image and mask losses (scalars) into one training loss.

    Args:
        learnable: learn s1, s2 (Kendall) or use ``fixed_weights``.
        fixed_weights: (w_img, w_mask) when not learnable.
        init_log_vars: initial (s1, s2).
    """

    def __init__(self, learnable: bool = True, fixed_weights: tuple[float, float] = (1.0, 1.0),
                 init_log_vars: tuple[float, float] = (0.0, 0.0)) -> None:
        super().__init__()
        self.learnable = bool(learnable)
        init = torch.tensor([float(v) for v in init_log_vars], dtype=torch.float32)
        if self.learnable:
            self.log_vars = nn.Parameter(init)
        else:
            self.register_buffer("log_vars", init)
        self.register_buffer("fixed_weights", torch.tensor([float(w) for w in fixed_weights], dtype=torch.float32))

    def forward(self, loss_img: torch.Tensor, loss_mask: torch.Tensor | None = None,
                mask_valid: bool | torch.Tensor = True) -> torch.Tensor:
        """loss_img, loss_mask: scalar tensors; mask_valid: bool or a bool tensor. Returns the scalar total loss."""
        image = self._image_term(loss_img)
        if loss_mask is None or (not torch.is_tensor(mask_valid) and not mask_valid):
            return image
        total = self._add_mask_term(image, loss_mask)
        if torch.is_tensor(mask_valid):
            return torch.where(mask_valid.reshape(()), total, image)
        return total

    def _image_term(self, loss_img: torch.Tensor) -> torch.Tensor:
        if not self.learnable:
            return self.fixed_weights[0] * loss_img
        return 0.5 * torch.exp(-self.log_vars[0]) * loss_img + 0.5 * self.log_vars[0]

    def _add_mask_term(self, total: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
        if not self.learnable:
            return total + self.fixed_weights[1] * loss_mask
        return total + 0.5 * torch.exp(-self.log_vars[1]) * loss_mask + 0.5 * self.log_vars[1]

    def weights(self) -> dict[str, float]:
        """Current effective weights and log-variances, for logging (floats: a host sync on a GPU)."""
        return {k: float(v) for k, v in self.weight_tensors().items()}

    def weight_tensors(self) -> dict[str, torch.Tensor]:
        """:meth:`weights` as detached one-element tensors (copies: later optimiser steps do not change them)."""
        if not self.learnable:
            w = self.fixed_weights.detach().clone()
            return {"w_img": w[0], "w_mask": w[1]}
        s = self.log_vars.detach().float().clone()
        return {"s1": s[0], "s2": s[1], "w_img": 0.5 * torch.exp(-s[0]), "w_mask": 0.5 * torch.exp(-s[1])}
