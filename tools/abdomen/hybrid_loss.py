"""Improved-DDPM hybrid loss ``L_simple + lambda * L_vlb`` with a learned-range variance.

Nichol & Dhariwal, "Improved Denoising Diffusion Probabilistic Models" (ICML 2021), Sections 3.1-3.2,
as used by Zhuang et al., "Semantic Image Synthesis for Abdominal CT".

The network outputs ``2 * C`` channels: the predicted noise ``eps`` (first ``C``) and a variance
interpolation value ``v`` (last ``C``, nominally in [-1, 1]). The model's log variance is the
**log-space** interpolation

    log sigma_t^2 = f * log(beta_t) + (1 - f) * log(beta_tilde_t),    f = (v + 1) / 2,

with ``log(beta_tilde_0)`` (which is log 0) replaced by ``log(beta_tilde_1)`` ("clipped" posterior
log variance). The schedule terms (posterior, x0 from eps, the learned-range interpolation) are
:class:`tools.diffusion.schedule.ScheduleTerms`, shared with the sampler.

Why the loss is ``mse + vb_t`` and not ``mse + 0.001 * vb_t``:
``L_vlb = L_0 + L_1 + ... + L_{T-1}`` is a **sum** over the T timesteps. Training draws one ``t``
uniformly per sample, so ``T * L_t`` is the unbiased one-sample estimate of ``L_vlb``; with
``lambda = 0.001`` and ``T = 1000`` the per-sample term is ``lambda * T * L_t = L_t``. This is the
``vb *= num_timesteps / 1000`` ("rescaled") factor of the reference implementation. ``L_t`` is the KL
(for t > 0) or the decoder negative log likelihood (t = 0) in **bits**, averaged over pixels.
The mean of p(x_{t-1} | x_t) inside ``L_vlb`` is built from the **detached** eps prediction, so
``L_vlb`` only trains the variance channel while ``L_simple`` trains the mean.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from monai.networks.schedulers import Scheduler

from tools.diffusion.schedule import ScheduleTerms

__all__ = [
    "normal_kl",
    "discretized_gaussian_log_likelihood",
    "HybridDiffusionLoss",
]


def normal_kl(mean1: torch.Tensor, logvar1: torch.Tensor, mean2: torch.Tensor, logvar2: torch.Tensor) -> torch.Tensor:
    """KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2))) element-wise, in nats (broadcasting)."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def discretized_gaussian_log_likelihood(
    x: torch.Tensor, means: torch.Tensor, log_scales: torch.Tensor, num_bins: int = 256
) -> torch.Tensor:
    """Log likelihood (nats, element-wise) of data ``x`` in [-1, 1] discretised into ``num_bins`` levels.

    Each level is a bin of half-width ``1 / (num_bins - 1)``; the outermost bins extend to -inf / +inf.
    Uses the exact normal CDF (``torch.special.ndtr``) instead of the tanh approximation of the reference code.

    Args:
        x: target image (N, C, H, W) in [-1, 1].
        means: Gaussian means, same shape.
        log_scales: log standard deviations (0.5 * log variance), same shape.
        num_bins: number of intensity levels (256 for 8-bit images as in the paper).
    """
    half_bin = 1.0 / (num_bins - 1)
    centered = x - means
    inv_std = torch.exp(-log_scales)
    cdf_plus = torch.special.ndtr(inv_std * (centered + half_bin))
    cdf_min = torch.special.ndtr(inv_std * (centered - half_bin))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    log_delta = torch.log((cdf_plus - cdf_min).clamp(min=1e-12))
    edge = 1.0 - half_bin / 2  # 0.998 for 256 bins: the first and last bin
    return torch.where(x < -edge, log_cdf_plus, torch.where(x > edge, log_one_minus_cdf_min, log_delta))


class HybridDiffusionLoss(nn.Module):
    """Per-sample hybrid loss ``mse(eps, eps_hat) + lambda * T * L_t`` (see module docstring).

    Called as ``loss(model_output, target)`` so it fits MONAI's ``SupervisedTrainer``:

    Args (forward):
        model_output: network output (N, 2C, H, W): eps prediction then variance value v.
        target: dict with ``"x_start"`` (N, C, H, W) clean image in [-1, 1], ``"noise"`` (N, C, H, W) and
            ``"timesteps"`` (N,) long, as produced by
            :class:`tools.engines.diffusion_batch.DiffusionTargetPrepareBatch`.

    Returns:
        (N,) per-sample loss (the trainer takes the mean). The last parts are kept in
        ``self.last_terms`` (``"mse"``, ``"vb"`` batch means, detached) for logging by a handler.

    Args:
        scheduler: MONAI scheduler whose ``betas`` / ``alphas_cumprod`` define the forward process.
        vlb_weight: lambda of the paper (0.001).
        num_bins: intensity levels of the discretised decoder at t = 0.
    """

    def __init__(self, scheduler: Scheduler, vlb_weight: float = 0.001, num_bins: int = 256) -> None:
        super().__init__()
        self.terms = ScheduleTerms.from_scheduler(scheduler)
        # lambda * T: the one-sample estimate of lambda * sum_t L_t (= 1.0 for lambda 0.001, T 1000)
        self.vlb_scale = float(vlb_weight) * self.terms.num_timesteps
        self.num_bins = num_bins
        self.last_terms: dict[str, float] = {}

    def vb_terms_bits(
        self,
        model_output: torch.Tensor,
        x_start: torch.Tensor,
        x_t: torch.Tensor,
        t: torch.Tensor,
        detach_mean: bool = True,
    ) -> torch.Tensor:
        """L_t in bits per pixel, shape (N,): KL(q(x_{t-1}|x_t,x_0) || p(x_{t-1}|x_t)) for t > 0, decoder NLL at t = 0."""
        c = x_start.shape[1]
        eps, var_values = model_output[:, :c], model_output[:, c:]
        if detach_mean:
            eps = eps.detach()
        model_logvar = self.terms.learned_range_log_variance(var_values, t)
        pred_xstart = self.terms.predict_xstart(x_t, t, eps)
        model_mean, _ = self.terms.q_posterior(pred_xstart, x_t, t)
        true_mean, true_logvar = self.terms.q_posterior(x_start, x_t, t)
        reduce_dims = tuple(range(1, x_start.ndim))
        kl = normal_kl(true_mean, true_logvar, model_mean, model_logvar).mean(dim=reduce_dims) / math.log(2.0)
        nll = -discretized_gaussian_log_likelihood(
            x_start, model_mean, 0.5 * model_logvar, num_bins=self.num_bins
        ).mean(dim=reduce_dims) / math.log(2.0)
        return torch.where(t == 0, nll, kl)

    def forward(self, model_output: torch.Tensor, target: dict[str, torch.Tensor]) -> torch.Tensor:
        x_start = target["x_start"].float()
        noise = target["noise"].float()
        t = target["timesteps"].long()
        model_output = model_output.float()  # loss in fp32 under bf16 autocast
        c = x_start.shape[1]
        if model_output.shape[1] != 2 * c:
            raise ValueError(
                f"HybridDiffusionLoss expects the network to output 2 x {c} channels (eps and variance value), "
                f"got model_output of shape {tuple(model_output.shape)}."
            )
        x_t = self.terms.q_sample(x_start, noise, t)
        reduce_dims = tuple(range(1, x_start.ndim))
        mse = ((model_output[:, :c] - noise) ** 2).mean(dim=reduce_dims)
        vb = self.vb_terms_bits(model_output, x_start, x_t, t, detach_mean=True)
        self.last_terms = {"mse": float(mse.detach().mean()), "vb": float(vb.detach().mean())}
        return mse + self.vlb_scale * vb
