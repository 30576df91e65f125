"""AortaDiff's training loss on the two-head output, as a ``SupervisedTrainer`` ``loss_function(pred, target)``.

The stock MONAI iteration (``DiffusionTargetPrepareBatch`` + ``DiffusionInferer(mode="concat")``) draws
eps, then t ~ U{0..T-1}, noises the CECT slice ``x_0`` to ``x_t`` and calls the network on ``cat(x_t, NCCT)``.
This module turns that output into the paper's loss:

    L_img  = image_mse_weight * MSE(image head, target of prediction_type)
             + lpips_weight * LPIPS_roi(clamp(x0_hat, -1.5, 1.5), x_0)
    L_mask = MSE(SDF head, lumen SDF) over the labeled samples of the batch
    L      = Kendall(L_img, L_mask)    (0.5 e^-s1 L_img + 0.5 s1 + 0.5 e^-s2 L_mask + 0.5 s2)

with ``x0_hat`` the clean-image estimate from the image head at ``x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps``.
A batch without a labeled sample drops the whole mask term (``0.5 s2`` included; decided on the device, no host
sync). The synthesis-only CDM baseline (``use_mask_head=False``) has the image term only. The parts of the last
call are kept as detached one-element tensors in ``self.last_term_tensors`` (no host sync) and read as floats
from ``self.last_terms``; :class:`tools.engines.loss_terms.LossTermsHandler` puts the tensors into the trainer
output, and the logging handlers turn them into floats at their ``log_interval`` only.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tools.aortadiff.kendall import KendallUncertaintyWeighting
from tools.aortadiff.labeled_mse import labeled_mse
from tools.aortadiff.lpips_loss import ROILPIPSLoss
from tools.diffusion.schedule import check_prediction_type, q_sample, training_target, x0_from_output

__all__ = ["AortaDiffLoss", "TERM_NAMES"]

# what ``last_terms`` may hold (s1, s2 only with learnable Kendall weights; loss_mask, n_labeled only with the mask head)
TERM_NAMES = ("loss_img", "loss_mse", "loss_lpips", "loss_mask", "n_labeled", "s1", "s2", "w_img", "w_mask")


class AortaDiffLoss(nn.Module):
    """Image term (MSE + ROI-LPIPS on x0_hat), labeled-only SDF term and Kendall weighting of the two.

    Called as ``loss(pred, target)`` by ``SupervisedTrainer``:

    - ``pred``: network output (B, C + M, H, W): C image-head channels (eps, x0 or v after ``prediction_type``),
      then M SDF-head channels (none with ``use_mask_head=False``).
    - ``target``: the dict of :class:`tools.engines.diffusion_batch.DiffusionTargetPrepareBatch`: ``x_start``
      (B, C, H, W) CECT in [-1, 1], ``noise`` (B, C, H, W), ``timesteps`` (B,), and the batch entries ``roi``
      (B, 1, H, W) in {0, 1}, ``lumen_sdf`` (B, M, H, W) in [-1, 1] (zeros when unlabeled), ``labeled`` (B,) in {0, 1}.

    Returns the scalar total loss. The loss is computed in float32 with autocast off, whatever the trainer's AMP.

    Args:
        scheduler: the MONAI noise scheduler of the inferer (its ``alphas_cumprod`` define x_t).
        loss_weighting: Kendall weighting of (L_img, L_mask); its s1, s2 belong in the trainer's optimiser.
        prediction_type: "epsilon" | "sample" | "v_prediction" (AortaDiff: "sample", the image head predicts x0).
        lpips_loss: ROI LPIPS, built once; None (or ``lpips_weight`` 0) for no perceptual term.
        lpips_weight: weight of the ROI LPIPS in L_img.
        image_mse_weight: weight of the image-head MSE in L_img.
        use_mask_head: False for the synthesis-only CDM baseline (image term only).
        x0_clamp: x0_hat is clamped to [-x0_clamp, x0_clamp] before LPIPS.
        roi_key, sdf_key, labeled_key: names of those entries in ``target``.
    """

    def __init__(self, scheduler: Any, loss_weighting: KendallUncertaintyWeighting, prediction_type: str = "sample",
                 lpips_loss: ROILPIPSLoss | None = None, lpips_weight: float = 1.0, image_mse_weight: float = 1.0,
                 use_mask_head: bool = True, x0_clamp: float = 1.5, roi_key: str = "roi", sdf_key: str = "lumen_sdf",
                 labeled_key: str = "labeled") -> None:
        super().__init__()
        check_prediction_type(prediction_type)
        self.register_buffer("alphas_cumprod", torch.as_tensor(scheduler.alphas_cumprod, dtype=torch.float32).clone(),
                             persistent=False)
        self.loss_weighting = loss_weighting
        self.prediction_type = prediction_type
        self.lpips_loss = lpips_loss
        self.lpips_weight = float(lpips_weight) if lpips_loss is not None else 0.0
        self.image_mse_weight = float(image_mse_weight)
        self.use_mask_head = bool(use_mask_head)
        self.x0_clamp = float(x0_clamp)
        self.keys = {"roi": roi_key, "sdf": sdf_key, "labeled": labeled_key}
        self.last_term_tensors: dict[str, torch.Tensor] = {}

    @property
    def last_terms(self) -> dict[str, float]:
        """The parts of the last call as floats (a host sync per term on a GPU; logging reads the tensors)."""
        return {k: float(v) for k, v in self.last_term_tensors.items()}

    def image_loss(self, image_out: torch.Tensor, target: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict]:
        """L_img from the image-head output (B, C, H, W); returns (L_img, its parts as detached tensors)."""
        x0, noise, t = target["x_start"].float(), target["noise"].float(), target["timesteps"].long()
        loss_mse = F.mse_loss(image_out, training_target(self.prediction_type, x0, noise, t, self.alphas_cumprod))
        loss_img = self.image_mse_weight * loss_mse
        loss_lpips = torch.zeros((), device=image_out.device)
        if self.lpips_loss is not None and self.lpips_weight > 0:
            x_t = q_sample(x0, noise, t, self.alphas_cumprod)
            x0_hat = x0_from_output(self.prediction_type, image_out, x_t, t, self.alphas_cumprod)
            x0_hat = x0_hat.clamp(-self.x0_clamp, self.x0_clamp)
            loss_lpips = self.lpips_loss(x0_hat, x0, target[self.keys["roi"]].float())
            loss_img = loss_img + self.lpips_weight * loss_lpips
        return loss_img, {"loss_mse": loss_mse.detach(), "loss_lpips": loss_lpips.detach()}

    def forward(self, pred: torch.Tensor, target: dict[str, torch.Tensor]) -> torch.Tensor:
        """pred (B, C + M, H, W), target dict as in the class docstring -> scalar total loss."""
        with torch.autocast(device_type=pred.device.type, enabled=False):
            pred = pred.float()
            c = target["x_start"].shape[1]
            loss_img, parts = self.image_loss(pred[:, :c], target)
            terms: dict[str, Any] = {"loss_img": loss_img.detach(), **parts}
            if self.use_mask_head:
                if pred.shape[1] <= c:
                    raise ValueError(f"AortaDiffLoss: use_mask_head=True needs SDF channels after the {c} image "
                                     f"channel(s) of the output, got {pred.shape[1]} channel(s)")
                labeled = target[self.keys["labeled"]].reshape(-1)
                loss_mask, n_labeled = labeled_mse(pred[:, c:], target[self.keys["sdf"]].float(), labeled)
                loss = self.loss_weighting(loss_img, loss_mask, mask_valid=n_labeled > 0)
                terms.update(loss_mask=loss_mask.detach(), n_labeled=n_labeled)
            else:
                loss = self.loss_weighting(loss_img, None)
        self.last_term_tensors = {**terms, **self.loss_weighting.weight_tensors()}
        return loss
