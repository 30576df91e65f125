"""Diffusion schedule math: every formula of the Gaussian forward process and its reverse steps, once.

Notation: ``abar_t`` is the cumulative product of (1 - beta_s) for s <= t (``scheduler.alphas_cumprod[t]``);
a step from noise level ``abar_t`` to a less noisy level ``abar_prev`` (the previous training timestep, or
the previous timestep of a respaced chain, or 1 for the clean image) has ``beta = 1 - abar_t / abar_prev``.

- respacing: :func:`spaced_timesteps` chooses N of the T training timesteps, :func:`respaced_betas`
  gives the betas of the chain that visits only those (improved DDPM's ``SpacedDiffusion``);
- forward noising: :func:`noise_to_level` ``sqrt(abar) x + sqrt(1 - abar) eps``, used by :func:`q_sample`
  (from x0 to timestep t) and :func:`q_jump` (from level ``abar_a`` to the noisier ``abar_b``: the same
  formula with the ratio ``abar_b / abar_a``);
- output parameterisation: what the image head predicts (``prediction_type``),

  - ``"epsilon"``       the network predicts eps,
  - ``"sample"``        the network predicts x0 (AortaDiff's image head),
  - ``"v_prediction"``  the network predicts ``v = sqrt(abar_t) eps - sqrt(1 - abar_t) x0``,

  with :func:`training_target`, :func:`x0_from_output` and :func:`eps_from_x0`. The names match MONAI's
  ``DDPMPredictionType`` so one ``prediction_type`` key configures both the scheduler and the target;
- the DDPM posterior q(x_prev | x_t, x0): :func:`posterior_coefficients`, :func:`q_posterior_mean_variance`;
- the DDIM step (Song et al. 2021): :func:`ddim_step`;
- :class:`ScheduleTerms`: the float64 per-timestep tables of a MONAI scheduler's betas (or of a respaced
  chain), with the clipped posterior log variance and the learned-range (log-space) variance interpolation
  of improved DDPM.

Alpha-bar arguments may be Python floats (taken as float64) or tensors broadcastable to the images
(e.g. (B, 1, ..., 1)). Coefficients are computed in the wider of the alpha-bars' and the images' dtype
and applied in the images' dtype: float64 images give float64 results.
"""

from __future__ import annotations

import torch

from monai.networks.schedulers import Scheduler
from monai.networks.schedulers.ddpm import DDPMPredictionType

PREDICTION_TYPES = tuple(p.value for p in DDPMPredictionType)  # ("epsilon", "sample", "v_prediction")

__all__ = [
    "PREDICTION_TYPES",
    "check_prediction_type",
    "spaced_timesteps",
    "step_beta",
    "respaced_betas",
    "noise_to_level",
    "q_sample",
    "q_jump",
    "training_target",
    "x0_from_output",
    "eps_from_x0",
    "posterior_coefficients",
    "q_posterior_mean_variance",
    "ddim_step",
    "ScheduleTerms",
]

AlphaBar = float | torch.Tensor


def check_prediction_type(prediction_type: str) -> None:
    """Raise ``ValueError`` unless ``prediction_type`` is one of MONAI's ``DDPMPredictionType`` values."""
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")


def _level(abar: AlphaBar, ref: torch.Tensor) -> torch.Tensor:
    """An alpha-bar as a tensor on ``ref``'s device, in the wider of its dtype and ``ref``'s (floats: float64)."""
    if not isinstance(abar, torch.Tensor):
        abar = torch.tensor(float(abar), dtype=torch.float64)
    return abar.to(device=ref.device, dtype=torch.promote_types(abar.dtype, ref.dtype))


def _gather(values: torch.Tensor, timesteps: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """``values[timesteps]`` on ``ref``'s device, shaped (B, 1, ..., 1) to broadcast over ``ref`` (dtype kept)."""
    out = values.to(ref.device)[timesteps.to(ref.device).long()]
    return out.reshape(-1, *([1] * (ref.ndim - 1)))


def _sqrt_pair(abar: AlphaBar, ref: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(sqrt(abar), sqrt(1 - abar))`` computed in the wider dtype, returned in ``ref``'s dtype."""
    a = _level(abar, ref)
    return a.sqrt().to(ref.dtype), (1.0 - a).sqrt().to(ref.dtype)


def _coeffs(
    alphas_cumprod: torch.Tensor, timesteps: torch.Tensor, ndim: int, ref: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(sqrt(abar_t), sqrt(1 - abar_t))`` at ``timesteps`` (B,), shaped (B, 1, ..., 1) for an ``ndim`` tensor."""
    return _sqrt_pair(_gather(alphas_cumprod, timesteps, ref).reshape(-1, *([1] * (ndim - 1))), ref)


# ---------------------------------------------------------------------------------------------- respacing
def spaced_timesteps(num_train_timesteps: int, num_inference_steps: int) -> torch.Tensor:
    """The N training timesteps a sampler with ``num_inference_steps`` = N visits, ascending, (N,) long.

    N = 1: ``[T - 1]`` (the one step starts from pure noise). N >= 2: ``t_i = round(i (T - 1) / (N - 1))``
    for i = 0..N-1 (exact rational arithmetic, halves to even), so 0 and T - 1 are always included and
    N = T visits every timestep.

    Raises:
        ValueError: if N is not in [1, T].
    """
    total, n = int(num_train_timesteps), int(num_inference_steps)
    if not 1 <= n <= total:
        raise ValueError(
            f"num_inference_steps must be in [1, {total}] (num_train_timesteps), got {num_inference_steps}."
        )
    if n == 1:
        return torch.tensor([total - 1], dtype=torch.long)
    steps = []
    for i in range(n):
        q, r = divmod(i * (total - 1), n - 1)
        if 2 * r > n - 1 or (2 * r == n - 1 and q % 2 == 1):
            q += 1
        steps.append(q)
    return torch.tensor(steps, dtype=torch.long)


def step_beta(abar_t: torch.Tensor, abar_prev: torch.Tensor) -> torch.Tensor:
    """beta of the step between two noise levels: ``1 - abar_t / abar_prev`` (element-wise)."""
    return 1.0 - abar_t / abar_prev


def respaced_betas(alphas_cumprod: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """Betas (N,) of the chain that visits only ``timesteps`` (N,) ascending: ``1 - abar_{t_i} / abar_{t_{i-1}}``.

    ``abar_{t_{-1}} = 1``, so the cumulative product of ``1 - beta`` reproduces ``alphas_cumprod[timesteps]``.
    Computed in ``alphas_cumprod``'s dtype (T,).
    """
    abar = alphas_cumprod[timesteps.to(alphas_cumprod.device).long()]
    abar_prev = torch.cat([abar.new_ones(1), abar[:-1]])
    return step_beta(abar, abar_prev)


# -------------------------------------------------------------------------------------- forward noising
def noise_to_level(x: torch.Tensor, noise: torch.Tensor, abar: AlphaBar) -> torch.Tensor:
    """``sqrt(abar) x + sqrt(1 - abar) noise``. x, noise: (B, C, *spatial); abar a float or broadcastable tensor."""
    a, s = _sqrt_pair(abar, x)
    return a * x + s * noise


def q_sample(
    x0: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor, alphas_cumprod: torch.Tensor
) -> torch.Tensor:
    """Forward noising ``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps``.

    x0, noise: (B, C, *spatial); timesteps: (B,); alphas_cumprod: (T,).
    """
    return noise_to_level(x0, noise, _gather(alphas_cumprod, timesteps, x0))


def q_jump(x_a: torch.Tensor, noise: torch.Tensor, abar_a: AlphaBar, abar_b: AlphaBar) -> torch.Tensor:
    """Sample q(x_b | x_a) from level ``abar_a`` to the noisier ``abar_b`` (<= abar_a): ratio ``abar_b / abar_a``."""
    return noise_to_level(x_a, noise, _level(abar_b, x_a) / _level(abar_a, x_a))


# ------------------------------------------------------------------------------ output parameterisation
def training_target(
    prediction_type: str, x0: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor, alphas_cumprod: torch.Tensor
) -> torch.Tensor:
    """Regression target of the image head: eps, x0 or ``v = sqrt(abar_t) eps - sqrt(1 - abar_t) x0``.

    x0, noise: (B, C, *spatial); timesteps: (B,) long; alphas_cumprod: (T,).
    """
    check_prediction_type(prediction_type)
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "sample":
        return x0
    a, s = _coeffs(alphas_cumprod, timesteps, x0.ndim, x0)
    return a * noise - s * x0


def x0_from_output(
    prediction_type: str, output: torch.Tensor, x_t: torch.Tensor, timesteps: torch.Tensor, alphas_cumprod: torch.Tensor
) -> torch.Tensor:
    """Clean-image estimate x0 from the image-head output at x_t.

    eps: ``(x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)``; v: ``sqrt(abar_t) x_t - sqrt(1 - abar_t) v``.
    output, x_t: (B, C, *spatial); timesteps: (B,); alphas_cumprod: (T,).
    """
    check_prediction_type(prediction_type)
    if prediction_type == "sample":
        return output
    a, s = _coeffs(alphas_cumprod, timesteps, x_t.ndim, x_t)
    if prediction_type == "epsilon":
        return (x_t - s * output) / a
    return a * x_t - s * output


def eps_from_x0(
    x0: torch.Tensor, x_t: torch.Tensor, timesteps: torch.Tensor, alphas_cumprod: torch.Tensor
) -> torch.Tensor:
    """Noise implied by an x0 estimate at x_t: ``(x_t - sqrt(abar_t) x0) / sqrt(1 - abar_t)``. Shapes as above."""
    a, s = _coeffs(alphas_cumprod, timesteps, x_t.ndim, x_t)
    return (x_t - a * x0) / s.clamp_min(1e-8)


# ----------------------------------------------------------------------------------------- DDPM posterior
def posterior_coefficients(
    abar_t: torch.Tensor, abar_prev: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Coefficients of q(x_prev | x_t, x0) = N(c_x0 x0 + c_xt x_t, beta_tilde), element-wise over the levels.

    With ``beta = 1 - abar_t / abar_prev``:
    ``c_x0 = sqrt(abar_prev) beta / (1 - abar_t)``, ``c_xt = sqrt(abar_t / abar_prev) (1 - abar_prev) / (1 - abar_t)``,
    ``beta_tilde = (1 - abar_prev) / (1 - abar_t) beta`` (0 when ``abar_prev`` = 1).

    Returns:
        (c_x0, c_xt, beta_tilde), each shaped and typed like the broadcast of ``abar_t`` and ``abar_prev``.
    """
    beta = step_beta(abar_t, abar_prev)
    c_x0 = abar_prev.sqrt() * beta / (1.0 - abar_t)
    c_xt = (abar_t / abar_prev).sqrt() * (1.0 - abar_prev) / (1.0 - abar_t)
    variance = (1.0 - abar_prev) / (1.0 - abar_t) * beta
    return c_x0, c_xt, variance


def q_posterior_mean_variance(
    x0: torch.Tensor, x_t: torch.Tensor, abar_t: AlphaBar, abar_prev: AlphaBar
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean (B, C, *spatial) and variance (broadcastable) of q(x_prev | x_t, x0), both in x_t's dtype.

    x0, x_t: (B, C, *spatial); abar_t, abar_prev: floats or tensors broadcastable to x_t, abar_t < abar_prev.
    """
    c_x0, c_xt, variance = posterior_coefficients(_level(abar_t, x_t), _level(abar_prev, x_t))
    mean = c_x0.to(x_t.dtype) * x0 + c_xt.to(x_t.dtype) * x_t
    return mean, variance.to(x_t.dtype)


# ---------------------------------------------------------------------------------------------- DDIM step
def ddim_step(
    x0: torch.Tensor,
    eps: torch.Tensor,
    abar_t: AlphaBar,
    abar_prev: AlphaBar,
    eta: float = 0.0,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """DDIM update ``x_prev = sqrt(abar_prev) x0 + sqrt(1 - abar_prev - sigma^2) eps + sigma z``.

    ``sigma^2 = eta^2 beta_tilde`` (the DDPM posterior variance between the two levels); eta = 0 is
    deterministic, and ``noise`` z (same shape as x0) is only used when eta > 0.

    Args:
        x0: clean-image estimate (B, C, *spatial); eps: noise estimate at x_t (same shape).
        abar_t, abar_prev: levels of the current and the target step (floats or broadcastable tensors).
    Returns:
        x_prev in x0's dtype.
    """
    a_t, a_prev = _level(abar_t, x0), _level(abar_prev, x0)
    sigma2 = float(eta) ** 2 * posterior_coefficients(a_t, a_prev)[2] if eta > 0 else torch.zeros_like(a_prev)
    out = a_prev.sqrt().to(x0.dtype) * x0 + (1.0 - a_prev - sigma2).clamp_min(0).sqrt().to(x0.dtype) * eps
    if noise is not None and eta > 0:
        out = out + sigma2.sqrt().to(x0.dtype) * noise
    return out


# ------------------------------------------------------------------------------------ per-timestep tables
class ScheduleTerms:
    """Float64 tables (T,) of a forward process given by its betas, for posterior and learned-range terms.

    Build from a MONAI scheduler with :meth:`from_scheduler` (its ``betas``, e.g. ``DDPMScheduler``'s linear
    1e-4..0.02), or for a respaced chain with :meth:`respaced`. Index i of every table is step i of the
    chain; the level before step 0 is the clean image (``alphas_cumprod_prev[0] = 1``).

    Args:
        betas: (T,) noise variances beta_t.
    """

    def __init__(self, betas: torch.Tensor) -> None:
        betas = torch.as_tensor(betas).detach().double().cpu()
        self.num_timesteps = int(betas.shape[0])
        self.betas = betas
        self.log_betas = torch.log(betas)
        self.alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
        self.alphas_cumprod_prev = torch.cat([torch.ones(1, dtype=torch.float64), self.alphas_cumprod[:-1]])
        self.posterior_variance = posterior_coefficients(self.alphas_cumprod, self.alphas_cumprod_prev)[2]
        # log beta_tilde with the t = 0 value (log 0) replaced by the t = 1 value; a one-step chain has no
        # t = 1 and never adds noise at its last step, its beta stands in
        first = self.posterior_variance[1:2] if self.num_timesteps > 1 else betas[:1]
        self.posterior_log_variance_clipped = torch.log(torch.cat([first, self.posterior_variance[1:]]))

    @classmethod
    def from_scheduler(cls, scheduler: Scheduler) -> "ScheduleTerms":
        """Terms of a MONAI scheduler's forward process (its ``betas``; ``alphas_cumprod`` is their cumprod)."""
        return cls(scheduler.betas)

    @classmethod
    def respaced(cls, alphas_cumprod: torch.Tensor, timesteps: torch.Tensor) -> "ScheduleTerms":
        """Terms of the chain visiting only ``timesteps`` (N,) ascending of a process with ``alphas_cumprod`` (T,)."""
        return cls(respaced_betas(torch.as_tensor(alphas_cumprod).detach().double().cpu(), timesteps))

    def q_sample(self, x_start: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps (see :func:`q_sample`). Shapes (B, C, *spatial), t (B,)."""
        return q_sample(x_start, noise, t, self.alphas_cumprod)

    def predict_xstart(self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """x_0 from an eps prediction (see :func:`x0_from_output`). Shapes (B, C, *spatial), t (B,)."""
        return x0_from_output("epsilon", eps, x_t, t, self.alphas_cumprod)

    def q_posterior(
        self, x_start: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and clipped log variance of q(x_{t-1} | x_t, x_0), both (B, C, *spatial) in x_t's dtype; t (B,)."""
        abar_t = _gather(self.alphas_cumprod, t, x_t)
        abar_prev = _gather(self.alphas_cumprod_prev, t, x_t)
        mean, _ = q_posterior_mean_variance(x_start, x_t, abar_t, abar_prev)
        logvar = _gather(self.posterior_log_variance_clipped, t, x_t).to(x_t.dtype)
        return mean, logvar.expand_as(x_t)

    def learned_range_log_variance(self, var_values: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Improved-DDPM model log variance ``f log(beta_t) + (1 - f) log(beta_tilde_t clipped)``, f = (v + 1) / 2.

        var_values: the variance channel v (B, C, *spatial), nominally in [-1, 1]; t: (B,). Interpolates
        **log** variances; returns (B, C, *spatial) in var_values' dtype.
        """
        min_log = _gather(self.posterior_log_variance_clipped, t, var_values).to(var_values.dtype)
        max_log = _gather(self.log_betas, t, var_values).to(var_values.dtype)
        frac = (var_values + 1.0) / 2.0
        return frac * max_log + (1.0 - frac) * min_log
