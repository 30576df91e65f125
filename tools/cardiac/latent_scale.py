"""Latent scale factor of a latent diffusion model: 1 / std of the training latents.

Rombach et al. scale the first-stage latents to unit variance before diffusion. The factor is computed
once over the **training set** (summed over all ranks when ``torch.distributed`` is initialised), kept in
a :class:`LatentScale` module so that ``CheckpointSaver`` stores it **in the diffusion checkpoint** next to
the network (``{"model": unet, "scale_factor": LatentScale}``), and read back with
:func:`load_scale_factor` to build the sampling ``LatentDiffusionInferer``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
import torch.distributed as dist
from ignite.engine import Engine, Events
from torch import nn

from tools.engines.checkpoint_io import load_checkpoint

__all__ = ["LatentScale", "compute_scale_factor", "LatentScaleHandler", "load_scale_factor"]


class LatentScale(nn.Module):
    """Holds the scale factor as a buffer (``state_dict() == {"scale_factor": tensor}``); 0 means unset."""

    def __init__(self, value: float = 0.0) -> None:
        super().__init__()
        self.register_buffer("scale_factor", torch.tensor(float(value), dtype=torch.float64))

    @property
    def value(self) -> float:
        return float(self.scale_factor)

    @property
    def is_set(self) -> bool:
        return self.value > 0.0

    def set(self, value: float) -> None:
        if not math.isfinite(value) or value <= 0:
            raise ValueError(f"latent scale factor must be a positive finite number, got {value}")
        self.scale_factor.fill_(float(value))


@torch.no_grad()
def compute_scale_factor(
    autoencoder: nn.Module,
    loader: Iterable,
    device: torch.device | str = "cpu",
    input_key: str = "joint",
    max_batches: int | None = None,
    encode: Callable[[nn.Module, torch.Tensor], torch.Tensor] | None = None,
) -> float:
    """1 / std of the autoencoder latents (``encode_stage_2_inputs``) over ``loader``.

    Sums, sums of squares and counts are accumulated in float64 and all-reduced over ranks when a
    process group is initialised, so every rank gets the same factor for the whole training set.

    Args:
        autoencoder: first-stage model with ``encode_stage_2_inputs(x) -> (B, C, *S_latent)``.
        loader: yields dicts with ``input_key`` -> ``(B, C_in, *S)`` tensors (the training set).
        max_batches: stop after this many batches (None: the whole loader).
    """
    was_training = autoencoder.training
    autoencoder.eval()
    stats = torch.zeros(3, dtype=torch.float64, device=device)  # sum, sum of squares, count
    for i, batch in enumerate(loader):
        if max_batches is not None and i >= max_batches:
            break
        x = batch[input_key] if isinstance(batch, dict) else batch
        x = torch.as_tensor(x).to(device)
        z = encode(autoencoder, x) if encode is not None else autoencoder.encode_stage_2_inputs(x)
        z = z.double()
        stats += torch.stack([z.sum(), z.pow(2).sum(), torch.tensor(z.numel(), dtype=torch.float64, device=device)])
    autoencoder.train(was_training)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(stats, op=dist.ReduceOp.SUM)
    total, total_sq, count = stats.tolist()
    if count == 0:
        raise ValueError("cannot compute the latent scale factor: the training loader yielded no batch")
    var = max(total_sq / count - (total / count) ** 2, 0.0)
    if var == 0.0:
        raise ValueError("cannot compute the latent scale factor: the training latents have zero variance")
    return 1.0 / math.sqrt(var)


class LatentScaleHandler:
    """Ignite handler: at ``Events.STARTED`` compute the scale factor once (unless already set, e.g. resumed
    from a checkpoint) and store it in ``latent_scale`` (saved by ``CheckpointSaver``). ``encoded``: the loader
    yields cached posteriors ``z_mu``, ``z_sigma`` (:class:`tools.cardiac.latent_cache.CachedLatents`)."""

    def __init__(
        self,
        autoencoder: nn.Module,
        loader: Iterable,
        latent_scale: LatentScale,
        device: torch.device | str = "cpu",
        input_key: str = "joint",
        max_batches: int | None = None,
        encoded: bool = False,
    ) -> None:
        self.encoded = bool(encoded)
        self.autoencoder = autoencoder
        self.loader = loader
        self.latent_scale = latent_scale
        self.device = device
        self.input_key = input_key
        self.max_batches = max_batches

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine: Engine) -> None:
        if self.latent_scale.is_set:
            return
        if self.encoded:  # cached posteriors (tools.cardiac.latent_cache): the latent is drawn, not encoded
            from tools.cardiac.latent_prepare_batch import sample_cached

            batches = ({"z": sample_cached(b, self.device)} for b in self.loader)
            value = compute_scale_factor(self.autoencoder, batches, self.device, "z", self.max_batches,
                                         encode=lambda _, z: z)
        else:
            value = compute_scale_factor(self.autoencoder, self.loader, self.device, self.input_key, self.max_batches)
        self.latent_scale.set(value)
        engine.logger.info(f"latent scale factor (1 / std of the training latents): {value:.6f}")


def load_scale_factor(checkpoint: str | Path, key: str = "scale_factor") -> float:
    """Scale factor stored in a diffusion checkpoint under ``key`` (a :class:`LatentScale` state dict)."""
    path = Path(checkpoint)
    entry = load_checkpoint(path, key, hint="train the LDM stage first: train_ldm.json saves the scale factor")
    value = float(entry["scale_factor"] if isinstance(entry, dict) else entry)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"checkpoint '{path}', key '{key}': scale factor {value} is not a positive number")
    return value
