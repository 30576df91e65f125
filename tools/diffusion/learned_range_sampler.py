"""Ancestral (DDPM) and DDIM sampling for a learned-range improved-DDPM model, as a MONAI ``Inferer``.

Why not ``monai.networks.schedulers.DDPMScheduler(variance_type="learned_range")``: in MONAI 1.6.1
(``monai/networks/schedulers/ddpm.py``, ``DDPMScheduler._get_variance``) the learned-range branch reads

    min_log = variance            # beta_tilde_t itself, not its log
    max_log = self.betas[timestep]  # beta_t itself, not its log
    frac = (predicted_variance + 1) / 2
    variance = frac * max_log + (1 - frac) * min_log

i.e. it interpolates the **variances linearly** (despite the variable names), and at t = 0 it uses
beta_tilde_0 = 0 (clamped to 1e-20 only for "fixed_small") instead of the t = 1 value. A model trained
with the improved-DDPM objective predicts the interpolation weight of the **log** variances,
log sigma^2 = f log beta_t + (1 - f) log beta_tilde_t, so MONAI's step would add the wrong amount of
noise (linear interpolation of two positive numbers is always >= the geometric one). MONAI's step also
uses ``alphas_cumprod[t - 1]`` as the previous value, which is wrong when fewer than T steps are taken.

This module does the correct step: it reuses the scheduler's ``betas``, respaces them to the chosen
timesteps (as improved-DDPM's ``SpacedDiffusion``), and interpolates log variances with the clipped
posterior log variance of the (respaced) chain. DDIM (Song et al. 2021) is the fast path: it uses only
the eps channel, with ``eta`` = 0 deterministic. All schedule math (respacing, posterior, DDIM step,
learned-range interpolation) is in :mod:`tools.diffusion.schedule`.
"""

from __future__ import annotations

import torch

from monai.inferers import Inferer
from monai.networks.schedulers import Scheduler
from monai.utils import convert_to_tensor, optional_import

from tools.diffusion.schedule import (
    ScheduleTerms,
    ddim_step,
    eps_from_x0,
    spaced_timesteps,
)

tqdm, has_tqdm = optional_import("tqdm", name="tqdm")

__all__ = ["SAMPLERS", "LearnedRangeSampler"]

#: the ``sampler`` values LearnedRangeSampler accepts
SAMPLERS = ("ddpm", "ddim")


class LearnedRangeSampler(Inferer):
    """Sample x_0 from noise given a conditioning tensor: ``sampler(condition, network) -> image``.

    The network is called as ``network(torch.cat([x_t, condition], 1), timesteps)`` and returns
    (N, 2C, H, W): eps (first C channels) and the variance value v (last C channels).

    Args:
        scheduler: MONAI scheduler of the training forward process (e.g. ``DDPMScheduler`` linear 1e-4..0.02).
        sampler: "ddpm" (ancestral, learned-range variance) or "ddim".
        num_inference_steps: number of steps in [1, T] (None: all T; DDIM: e.g. 50); one step starts at t = T - 1.
        image_channels: C, channels of the generated image.
        eta: DDIM stochasticity (0 = deterministic). Ignored for "ddpm".
        clip_denoised: clamp the predicted x_0 to [-1, 1] at each step.
        progress: show a tqdm bar over the steps.
        amp: bf16 autocast for the network call when running on CUDA.
        seed: when given (and no generator is passed), every call draws its noise from a generator seeded
            with it, so repeated evaluations of the same inputs are comparable.
    """

    def __init__(
        self,
        scheduler: Scheduler,
        sampler: str = "ddpm",
        num_inference_steps: int | None = None,
        image_channels: int = 1,
        eta: float = 0.0,
        clip_denoised: bool = True,
        progress: bool = True,
        amp: bool = False,
        seed: int | None = None,
    ) -> None:
        super().__init__()
        if sampler not in SAMPLERS:
            raise ValueError(f"sampler must be 'ddpm' or 'ddim', got {sampler!r}.")
        self.num_train_timesteps = int(scheduler.num_train_timesteps)
        self.base_alphas_cumprod = ScheduleTerms.from_scheduler(scheduler).alphas_cumprod
        self.sampler = sampler
        self.image_channels = image_channels
        self.eta = float(eta)
        self.clip_denoised = clip_denoised
        self.progress = progress
        self.amp = amp
        self.seed = seed
        self.set_timesteps(self.num_train_timesteps if num_inference_steps is None else num_inference_steps)

    def set_timesteps(self, num_inference_steps: int) -> None:
        """Choose the timesteps and build the respaced chain's terms (``self.terms``, index i <-> ``timesteps[i]``).

        One step visits t = T - 1 (pure noise); see :func:`tools.diffusion.schedule.spaced_timesteps`.
        """
        self.timesteps = spaced_timesteps(self.num_train_timesteps, int(num_inference_steps))
        self.terms = ScheduleTerms.respaced(self.base_alphas_cumprod, self.timesteps)

    def step_log_variance(self, var_values: torch.Tensor, index: int) -> torch.Tensor:
        """Model log variance at chain index ``index``: f log beta_i + (1 - f) log beta_tilde_i (clipped)."""
        t = torch.full((var_values.shape[0],), index, dtype=torch.long, device=var_values.device)
        return self.terms.learned_range_log_variance(var_values, t)

    def step(
        self,
        model_output: torch.Tensor,
        index: int,
        sample: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One reverse step from chain index ``index`` (timestep ``timesteps[index]``) to ``index - 1``.

        Args:
            model_output: (N, 2C, H, W) network output at x_t.
            index: position in ``self.timesteps`` (ascending), counted down from ``len - 1`` to 0.
            sample: x_t (N, C, H, W).
        Returns:
            (x_prev, predicted x_0).
        """
        c = self.image_channels
        eps, var_values = model_output[:, :c].double(), model_output[:, c:].double()
        x_t = sample.double()
        t = torch.full((x_t.shape[0],), index, dtype=torch.long, device=x_t.device)
        pred_x0 = self.terms.predict_xstart(x_t, t, eps)
        if self.clip_denoised:
            pred_x0 = pred_x0.clamp(-1.0, 1.0)
        noise = torch.randn(x_t.shape, generator=generator, device=x_t.device, dtype=x_t.dtype) if index > 0 else None
        if self.sampler == "ddpm":
            out, _ = self.terms.q_posterior(pred_x0, x_t, t)
            if noise is not None:
                out = out + torch.exp(0.5 * self.step_log_variance(var_values, index)) * noise
        else:
            eps = eps_from_x0(pred_x0, x_t, t, self.terms.alphas_cumprod)  # eps consistent with the clipped x_0
            abar, abar_prev = self.terms.alphas_cumprod[index], self.terms.alphas_cumprod_prev[index]
            out = ddim_step(pred_x0, eps, abar, abar_prev, eta=self.eta, noise=noise)
        return out.to(sample.dtype), pred_x0.to(sample.dtype)

    @torch.no_grad()
    def __call__(  # type: ignore[override]
        self,
        inputs: torch.Tensor,
        network: torch.nn.Module,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Generate images for a conditioning batch.

        Args:
            inputs: conditioning (N, K, H, W), e.g. the one-hot label map.
            network: eps / variance network (see class docstring).
            noise: optional x_T (N, C, H, W); drawn from N(0, I) with ``generator`` otherwise.
        Returns:
            x_0 (N, C, H, W) in the model's range [-1, 1].
        """
        condition = convert_to_tensor(inputs, track_meta=False).float()
        if generator is None and self.seed is not None:
            generator = torch.Generator(device=condition.device).manual_seed(int(self.seed))
        shape = (condition.shape[0], self.image_channels, *condition.shape[2:])
        x = noise if noise is not None else torch.randn(shape, generator=generator, device=condition.device)
        x = x.to(condition.device, torch.float32)
        indices = list(range(len(self.timesteps) - 1, -1, -1))
        if self.progress and has_tqdm:
            indices = tqdm(indices, desc=f"{self.sampler} steps", leave=False)
        use_amp = self.amp and condition.device.type == "cuda"
        for i in indices:
            t = self.timesteps[i].to(condition.device).expand(shape[0])
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_amp):
                out = network(torch.cat([x, condition], dim=1), t)
            x, _ = self.step(out.float(), i, x, generator=generator)
        return x
