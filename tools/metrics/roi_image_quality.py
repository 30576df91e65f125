"""Image quality inside a region of interest: PSNR and SSIM restricted to the aorta-centred ROI.

- ROI PSNR (dB): ``10 log10(data_range^2 / MSE_roi)`` with the MSE averaged over ROI pixels only.
- ROI SSIM: MONAI's SSIM map (``compute_ssim_and_cs``, Gaussian 11x11, sigma 1.5; "valid" convolution)
  averaged over the ROI pixels that are window centres of the map (the ROI cropped by the kernel radius).
Whole-slice PSNR/SSIM are MONAI's ``PSNRMetric`` / ``SSIMMetric``. Images (B, 1, H, W); roi (B, 1, H, W).
"""

from __future__ import annotations

import torch
from monai.metrics.regression import RegressionMetric
from monai.metrics.regression import compute_ssim_and_cs  # noqa: E402


def roi_psnr(pred: torch.Tensor, target: torch.Tensor, roi: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Per-sample ROI PSNR in dB, (B,); NaN for an empty ROI, inf for a perfect match."""
    w = (roi > 0.5).float()
    n = w.flatten(1).sum(1)
    mse = (((pred.float() - target.float()) ** 2) * w).flatten(1).sum(1) / n.clamp_min(1)
    psnr = 10.0 * torch.log10(data_range**2 / mse)
    return torch.where(n > 0, psnr, torch.full_like(psnr, float("nan")))


def roi_ssim(pred: torch.Tensor, target: torch.Tensor, roi: torch.Tensor, data_range: float = 1.0,
             kernel_size: int = 11, kernel_sigma: float = 1.5) -> torch.Tensor:
    """Per-sample SSIM averaged over the ROI, (B,); NaN for an empty ROI."""
    ssim_map, _ = compute_ssim_and_cs(pred.float(), target.float(), spatial_dims=2, kernel_size=[kernel_size] * 2,
                                      kernel_sigma=[kernel_sigma] * 2, data_range=data_range)
    r = kernel_size // 2
    w = (roi[..., r: roi.shape[-2] - r, r: roi.shape[-1] - r] > 0.5).float()
    n = w.flatten(1).sum(1)
    val = (ssim_map * w).flatten(1).sum(1) / n.clamp_min(1)
    return torch.where(n > 0, val, torch.full_like(val, float("nan")))


class ROIPSNRMetric(RegressionMetric):
    """Cumulative ROI PSNR for MONAI handlers: ``y_pred`` (B, 2, H, W) = [image, roi], ``y`` (B, 1, H, W)."""

    def __init__(self, data_range: float = 1.0, reduction: str = "mean", get_not_nans: bool = False) -> None:
        super().__init__(reduction=reduction, get_not_nans=get_not_nans)
        self.data_range = float(data_range)

    def _check_shape(self, y_pred: torch.Tensor, y: torch.Tensor) -> None:
        if y_pred.shape[1] != 2 or y.shape[1] != 1:
            raise ValueError(f"ROIPSNRMetric expects y_pred (B, 2, ...) = [image, roi] and y (B, 1, ...), "
                             f"got {tuple(y_pred.shape)} and {tuple(y.shape)}")

    def _compute_metric(self, y_pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return roi_psnr(y_pred[:, :1], y, y_pred[:, 1:2], self.data_range).reshape(-1, 1)
