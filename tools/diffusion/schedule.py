"""Diffusion output parameterisation: what the image head predicts (eps, x0 or v) and how to convert it.

With ``abar_t`` the cumulative product of (1 - beta) up to timestep t (``scheduler.alphas_cumprod[t]``),
the forward process is ``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps`` and

- ``"epsilon"``       the network predicts eps,
- ``"sample"``        the network predicts x0 (AortaDiff's image head),
- ``"v_prediction"``  the network predicts ``v = sqrt(abar_t) eps - sqrt(1 - abar_t) x0``.

The names match MONAI's ``DDPMPredictionType`` so one ``prediction_type`` key configures both the
scheduler and the training target.
"""

from __future__ import annotations

import torch

PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")


def _check(prediction_type: str) -> None:
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")


def _coeffs(alphas_cumprod: torch.Tensor, timesteps: torch.Tensor, ndim: int, ref: torch.Tensor):
    abar = alphas_cumprod.to(device=ref.device, dtype=torch.float32)[timesteps.to(ref.device).long()]
    abar = abar.reshape(-1, *([1] * (ndim - 1)))
    return abar.sqrt().to(ref.dtype), (1.0 - abar).sqrt().to(ref.dtype)


def q_sample(x0: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """Forward noising ``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps``. x0, noise: (B, C, *spatial); timesteps: (B,)."""
    a, s = _coeffs(alphas_cumprod, timesteps, x0.ndim, x0)
    return a * x0 + s * noise


def training_target(
    prediction_type: str, x0: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor, alphas_cumprod: torch.Tensor
) -> torch.Tensor:
    """Regression target of the image head. x0, noise: (B, C, *spatial); timesteps: (B,) long."""
    _check(prediction_type)
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "sample":
        return x0
    a, s = _coeffs(alphas_cumprod, timesteps, x0.ndim, x0)
    return a * noise - s * x0


def x0_from_output(
    prediction_type: str, output: torch.Tensor, x_t: torch.Tensor, timesteps: torch.Tensor, alphas_cumprod: torch.Tensor
) -> torch.Tensor:
    """Clean-image estimate x0 from the image-head output. Shapes (B, C, *spatial); timesteps (B,)."""
    _check(prediction_type)
    if prediction_type == "sample":
        return output
    a, s = _coeffs(alphas_cumprod, timesteps, x_t.ndim, x_t)
    if prediction_type == "epsilon":
        return (x_t - s * output) / a
    return a * x_t - s * output


def eps_from_x0(x0: torch.Tensor, x_t: torch.Tensor, timesteps: torch.Tensor, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """Noise implied by an x0 estimate at x_t: ``(x_t - sqrt(abar_t) x0) / sqrt(1 - abar_t)``."""
    a, s = _coeffs(alphas_cumprod, timesteps, x_t.ndim, x_t)
    return (x_t - a * x0) / s.clamp_min(1e-8)
