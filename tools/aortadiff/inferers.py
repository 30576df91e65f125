"""Aorta-restricted generation: RePaint (Lugmayr et al., CVPR 2022) and a fast DDIM variant, as MONAI Inferers.

At every reverse step the region outside the aorta ROI is replaced by the NCCT noised to the current
noise level (the *known* region) and the inside comes from the model; the final image is
``x0 * roi + ncct * (1 - roi)``. RePaint's jump schedule resamples: after every ``jump_length``
denoising steps the sample is noised back ``jump_length`` steps, ``jump_n_sample - 1`` times.

Timesteps: ``num_inference_steps`` N indices i = N-1 .. 0 map to the training timesteps tau_i of
:func:`tools.diffusion.schedule.spaced_timesteps` (``round(i (T - 1) / (N - 1))``; N = T: every timestep;
N = 1: T - 1); index -1 is the clean image (``abar = 1``). Reverse steps use the DDPM posterior between
tau_a and tau_b (respaced), the fast variant the deterministic DDIM update (eta = 0); all of this
schedule math is in :mod:`tools.diffusion.schedule`.

Inputs of both inferers (``inferer(inputs, network)``): ``(B, 2, H, W)`` slices or ``(B, 2, H, W, D)``
volumes (axial slices along the last axis), channel 0 the NCCT windowed to [-1, 1], channel 1 the ROI
mask in {0, 1}. Output: ``(B, 4, ...)`` = synthetic CECT in [-1, 1] (mean over ``num_samples``), lumen
SDF from the mask head at the last model call (mean; +1 where the network has no mask head), the
per-pixel standard deviation of the image over ``num_samples`` (0 when ``num_samples == 1``) and the
lumen vote: the fraction of the samples whose SDF is < 0 (:mod:`tools.aortadiff.uncertainty`).
Volume slices without ROI are not sampled (image = NCCT, SDF = +1, std and vote 0).

Network calls: a batch of ``slice_batch_size`` slices goes through the network together with all its
``num_samples`` samples (network batch = slices x samples), so a volume costs
``ceil(ROI slices / slice_batch_size) x calls per schedule`` calls whatever ``num_samples`` is. Every call
but the last of a schedule asks the network for its image head only (``image_only=True``, for networks
with ``has_mask_head``): only the last call's SDF is used.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from monai.data import MetaTensor
from monai.inferers import Inferer
from tqdm.auto import tqdm

from tools.diffusion.schedule import (
    ddim_step,
    eps_from_x0,
    noise_to_level,
    q_jump,
    q_posterior_mean_variance,
    spaced_timesteps,
    x0_from_output,
)


#: output channels of the inferers: image, lumen SDF, image std, lumen vote
OUT_CHANNELS = 4


def repaint_schedule(num_steps: int, jump_length: int = 10, jump_n_sample: int = 2) -> list[int]:
    """RePaint's jump schedule over step indices (the original ``get_schedule_jump``).

    Returns the visited indices ``[num_steps - 1, ..., -1]``; a decrease between neighbours is one
    denoising call, an increase one forward (re-noising) step. Jumps start at indices
    ``0, L, 2L, ... < num_steps - L`` and each is taken ``jump_n_sample - 1`` times, so the number of
    denoising calls is ``num_steps + len(range(0, num_steps - L, L)) * (jump_n_sample - 1) * L``.
    """
    if num_steps < 1 or jump_length < 1 or jump_n_sample < 1:
        raise ValueError(f"num_steps, jump_length, jump_n_sample must be >= 1, got {num_steps}, {jump_length}, {jump_n_sample}")
    jumps = {j: jump_n_sample - 1 for j in range(0, num_steps - jump_length, jump_length)}
    t = num_steps
    ts: list[int] = []
    while t >= 1:
        t -= 1
        ts.append(t)
        if jumps.get(t, 0) > 0:
            jumps[t] -= 1
            for _ in range(jump_length):
                t += 1
                ts.append(t)
    ts.append(-1)
    return ts


def count_denoising_calls(schedule: Sequence[int]) -> int:
    """Number of network calls a schedule makes (number of decreasing neighbour pairs)."""
    return sum(1 for a, b in zip(schedule[:-1], schedule[1:]) if b < a)


class _AortaFusionSampler(Inferer):
    """Shared machinery: timestep respacing, known-region fusion, slicing of volumes, samples, progress."""

    def __init__(
        self,
        scheduler: Any,
        num_inference_steps: int = 50,
        num_samples: int = 1,
        image_size: int | Sequence[int] | None = None,
        slice_batch_size: int = 8,
        prediction_type: str | None = None,
        clip_sample: bool = True,
        seed: int | None = None,
        progress: bool = True,
    ) -> None:
        super().__init__()
        self.scheduler = scheduler
        self.T = int(scheduler.num_train_timesteps)
        self.num_inference_steps = int(num_inference_steps)
        self.timesteps = spaced_timesteps(self.T, self.num_inference_steps)  # (N,) ascending; checks N in [1, T]
        self.num_samples = int(num_samples)
        if self.num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        if isinstance(image_size, int):
            image_size = (image_size, image_size)
        self.image_size = tuple(image_size) if image_size is not None else None
        self.slice_batch_size = int(slice_batch_size)
        self.prediction_type = prediction_type
        self.clip_sample = clip_sample
        self.seed = seed
        self.progress = progress

    # ------------------------------------------------------------------ schedule
    def schedule(self) -> list[int]:
        raise NotImplementedError

    def train_timestep(self, index: int) -> int:
        """Training timestep tau of step index (0..N-1)."""
        return int(self.timesteps[index])

    def abar(self, index: int) -> float:
        """alphas_cumprod at step index; 1 for index -1 (clean)."""
        return 1.0 if index < 0 else float(self.scheduler.alphas_cumprod[self.train_timestep(index)])

    def noised_known(self, ncct: torch.Tensor, index: int, noise: torch.Tensor) -> torch.Tensor:
        """The known region at step ``index``: ``sqrt(abar) ncct + sqrt(1 - abar) noise`` (ncct at -1)."""
        return noise_to_level(ncct, noise, self.abar(index))

    def reverse_step(self, x: torch.Tensor, x0: torch.Tensor, a: int, b: int, g: torch.Generator | None) -> torch.Tensor:
        raise NotImplementedError

    # ------------------------------------------------------------------ one batch of 2D slices
    def _prediction_type(self, network: Callable) -> str:
        if self.prediction_type is not None:
            return self.prediction_type
        net = getattr(network, "module", network)
        return getattr(net, "prediction_type", getattr(self.scheduler, "prediction_type", "epsilon"))

    @torch.no_grad()
    def sample_slices(self, ncct: torch.Tensor, roi: torch.Tensor, network: Callable,
                      generator: torch.Generator | None = None, callback: Callable | None = None,
                      step_bar: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
        """One sample for a batch of 2D slices.

        Args:
            ncct: (B, 1, H, W) in [-1, 1]; roi: (B, 1, H, W) in {0, 1}.
            callback: called after every reverse step as ``callback(index, x, x_known, roi)``.

        Returns:
            image (B, 1, H, W) = ``x0 * roi + ncct * (1 - roi)`` and SDF (B, 1, H, W) (+1 without mask head).
        """
        ptype = self._prediction_type(network)
        acp = self.scheduler.alphas_cumprod
        roi = (roi > 0.5).to(ncct.dtype)
        sched = self.schedule()
        # only the last call's SDF is used: earlier calls skip the mask head where the network has one
        image_only = {"image_only": True} if getattr(getattr(network, "module", network), "has_mask_head", False) else {}

        def randn() -> torch.Tensor:
            return torch.randn(ncct.shape, generator=generator, device=ncct.device, dtype=ncct.dtype)

        x = roi * randn() + (1 - roi) * self.noised_known(ncct, sched[0], randn())
        sdf = torch.ones_like(ncct)
        for a, b in zip(sched[:-1], sched[1:]):
            if b < a:  # reverse (denoising) step a -> b
                t = torch.full((ncct.shape[0],), self.train_timestep(a), device=ncct.device, dtype=torch.long)
                out = network(torch.cat([x, ncct], dim=1), t, **({} if b < 0 else image_only)).float()
                x0 = x0_from_output(ptype, out[:, :1], x, t, acp)
                if self.clip_sample:
                    x0 = x0.clamp(-1.0, 1.0)
                if out.shape[1] > 1:
                    sdf = out[:, 1:2]
                x_unknown = x0 if b < 0 else self.reverse_step(x, x0, a, b, generator)
                x_known = ncct if b < 0 else self.noised_known(ncct, b, randn())
                x = roi * x_unknown + (1 - roi) * x_known
                if callback is not None:
                    callback(b, x, x_known, roi)
                if step_bar is not None:
                    step_bar.update(1)
            else:  # forward jump a -> b: q(x_b | x_a)
                x = q_jump(x, randn(), self.abar(a), self.abar(b))
        return x, sdf

    # ------------------------------------------------------------------ Inferer API
    def __call__(self, inputs: torch.Tensor, network: Callable, *args: Any, callback: Callable | None = None,
                 **kwargs: Any) -> torch.Tensor:
        if inputs.ndim not in (4, 5) or inputs.shape[1] != 2:
            raise ValueError(f"inputs must be (B, 2, H, W[, D]) = [NCCT in [-1,1], ROI], got {tuple(inputs.shape)}")
        if isinstance(inputs, MetaTensor):  # plain tensors inside the sampler: slicing a batch keeps no metadata
            inputs = inputs.as_tensor()
        inputs = torch.as_tensor(inputs).float()
        if inputs.ndim == 5:  # volume: batch of axial slices with ROI
            b, c, h, w, d = inputs.shape
            slices = inputs.permute(0, 4, 1, 2, 3).reshape(b * d, c, h, w)
            out = torch.empty((b * d, OUT_CHANNELS, h, w), dtype=inputs.dtype, device=inputs.device)
            out[:, 0] = slices[:, 0]
            out[:, 1] = 1.0
            out[:, 2:] = 0.0
            todo = torch.nonzero((slices[:, 1] > 0.5).flatten(1).any(1)).flatten()
            if len(todo):
                out[todo] = self._run_2d(slices[todo], network, callback)
            return out.reshape(b, d, OUT_CHANNELS, h, w).permute(0, 2, 3, 4, 1)
        return self._run_2d(inputs, network, callback)

    def _run_2d(self, inputs: torch.Tensor, network: Callable, callback: Callable | None) -> torch.Tensor:
        n, _, h, w = inputs.shape
        size = self.image_size or (h, w)
        ncct, roi = inputs[:, :1], inputs[:, 1:2]
        if (h, w) != tuple(size):
            ncct_in = F.interpolate(ncct, size=size, mode="bilinear", align_corners=False)
            roi_in = (F.interpolate(roi, size=size, mode="bilinear", align_corners=False) > 0.5).float()
        else:
            ncct_in, roi_in = ncct, (roi > 0.5).float()
        generator = None
        if self.seed is not None:
            generator = torch.Generator(device=inputs.device).manual_seed(int(self.seed))
        calls = count_denoising_calls(self.schedule())
        bs = max(1, self.slice_batch_size)
        result = torch.empty((n, OUT_CHANNELS, h, w), dtype=inputs.dtype, device=inputs.device)
        slice_bar = tqdm(total=n, desc="slices", unit="slice", disable=not self.progress)
        s = self.num_samples
        for start in range(0, n, bs):
            sl = slice(start, min(n, start + bs))
            m = sl.stop - sl.start
            step_bar = tqdm(total=calls, desc="steps", unit="step", leave=False, disable=not self.progress)
            # all samples of these slices in one network batch: (s * m, 1, H, W), sample-major
            img, sdf = self.sample_slices(ncct_in[sl].repeat(s, 1, 1, 1), roi_in[sl].repeat(s, 1, 1, 1), network,
                                          generator, callback, step_bar)
            step_bar.close()
            img, sdf = img.reshape(s, m, *img.shape[1:]), sdf.reshape(s, m, *sdf.shape[1:])
            mean = img.mean(0)
            std = img.std(0, unbiased=False) if s > 1 else torch.zeros_like(mean)
            vote = (sdf < 0).to(mean.dtype).mean(0)  # lumen vote of the samples
            block = torch.cat([mean, sdf.mean(0), std, vote], dim=1)
            if (h, w) != tuple(size):
                block = F.interpolate(block, size=(h, w), mode="bilinear", align_corners=False)
                # outside the ROI the fusion is exact on the input grid (no resampling blur)
                keep = roi[sl] > 0.5
                block[:, :1] = torch.where(keep, block[:, :1], ncct[sl])
                block[:, 2:] = torch.where(keep, block[:, 2:], torch.zeros_like(block[:, 2:]))
            result[sl] = block
            slice_bar.update(sl.stop - sl.start)
        slice_bar.close()
        return result


class AortaRePaintInferer(_AortaFusionSampler):
    """RePaint with DDPM posterior steps and the jump schedule (paper: T=1000, jump_length 10, jump_n_sample 2)."""

    def __init__(self, scheduler: Any, num_inference_steps: int = 1000, jump_length: int = 10, jump_n_sample: int = 2,
                 **kwargs: Any) -> None:
        super().__init__(scheduler, num_inference_steps=num_inference_steps, **kwargs)
        self.jump_length = int(jump_length)
        self.jump_n_sample = int(jump_n_sample)

    def schedule(self) -> list[int]:
        return repaint_schedule(self.num_inference_steps, self.jump_length, self.jump_n_sample)

    def reverse_step(self, x: torch.Tensor, x0: torch.Tensor, a: int, b: int,
                     g: torch.Generator | None) -> torch.Tensor:
        """Sample the (respaced) DDPM posterior q(x_b | x_a, x0). x, x0: (B, 1, H, W); a > b >= 0 step indices."""
        mean, var = q_posterior_mean_variance(x0, x, self.abar(a), self.abar(b))
        return mean + var.clamp_min(0).sqrt() * torch.randn(x.shape, generator=g, device=x.device, dtype=x.dtype)


class AortaDDIMInferer(_AortaFusionSampler):
    """Fast variant: deterministic DDIM steps (eta = 0, e.g. 25-50 steps) with the same aorta fusion, no jumps."""

    def schedule(self) -> list[int]:
        return list(range(self.num_inference_steps - 1, -2, -1))

    def reverse_step(self, x: torch.Tensor, x0: torch.Tensor, a: int, b: int,
                     g: torch.Generator | None) -> torch.Tensor:
        """Deterministic DDIM step from index a to b with the eps implied by x0. x, x0: (B, 1, H, W)."""
        t = torch.full((x.shape[0],), self.train_timestep(a), device=x.device, dtype=torch.long)
        eps = eps_from_x0(x0, x, t, self.scheduler.alphas_cumprod)
        return ddim_step(x0, eps, self.abar(a), self.abar(b))


#: the ``sampler`` values of inference.json, with the inferer each one selects
SAMPLERS = {"repaint": AortaRePaintInferer, "ddim": AortaDDIMInferer}
