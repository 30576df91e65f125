"""Kendall et al. (CVPR 2018) homoscedastic-uncertainty weighting of AortaDiff's two task losses.

    L = 0.5 exp(-s1) L_img + 0.5 s1 + 0.5 exp(-s2) L_mask + 0.5 s2

with learnable log-variances ``s1`` (image) and ``s2`` (mask) that go into the optimiser together with
the network. ``learnable=False`` switches to fixed weights: ``L = w_img L_img + w_mask L_mask``.
When a batch holds no labeled sample (``mask_valid=False``) the whole mask term, ``0.5 s2`` included,
is left out, so ``s2`` is not pushed towards -inf by batches without a lumen label.
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
        """loss_img, loss_mask: scalar tensors. Returns the scalar total loss."""
        use_mask = loss_mask is not None and bool(mask_valid)
        if not self.learnable:
            total = self.fixed_weights[0] * loss_img
            return total + self.fixed_weights[1] * loss_mask if use_mask else total
        s1, s2 = self.log_vars[0], self.log_vars[1]
        total = 0.5 * torch.exp(-s1) * loss_img + 0.5 * s1
        if use_mask:
            total = total + 0.5 * torch.exp(-s2) * loss_mask + 0.5 * s2
        return total

    def weights(self) -> dict[str, float]:
        """Current effective weights and log-variances, for logging."""
        if not self.learnable:
            return {"w_img": float(self.fixed_weights[0]), "w_mask": float(self.fixed_weights[1])}
        s = self.log_vars.detach().float()
        return {"s1": float(s[0]), "s2": float(s[1]),
                "w_img": float(0.5 * torch.exp(-s[0])), "w_mask": float(0.5 * torch.exp(-s[1]))}
