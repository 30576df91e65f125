"""Batch preparation for mask-conditioned diffusion: training with the hybrid loss, and sampling."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from monai.engines import DiffusionPrepareBatch
from monai.utils import convert_to_tensor


class HybridPrepareBatch(DiffusionPrepareBatch):
    """MONAI ``DiffusionPrepareBatch`` whose target carries what the hybrid loss needs.

    Returns ``(images, target, (), kwargs)`` for ``SupervisedTrainer``:
    ``images`` (N, C, H, W) are the clean images x_0; ``target`` is the dict
    ``{"x_start": images, "noise": noise, "timesteps": t}`` consumed by
    :class:`tools.diffusion.hybrid_loss.HybridDiffusionLoss`; ``kwargs`` holds ``noise``, ``timesteps``,
    ``condition`` (batch[condition_name]) and ``mode="concat"`` for MONAI's ``DiffusionInferer``, which adds the
    noise and calls the network on ``cat([x_t, condition], 1)``.

    Args:
        num_train_timesteps: T of the forward process (t is drawn uniformly from 0..T-1).
        condition_name: batch key of the conditioning tensor (one-hot label map, (N, K, H, W)).
        image_key: batch key of the clean image.
    """

    def __init__(self, num_train_timesteps: int, condition_name: str = "label", image_key: str = "image") -> None:
        super().__init__(num_train_timesteps=num_train_timesteps, condition_name=condition_name)
        self.image_key = image_key

    def __call__(
        self,
        batchdata: dict[str, torch.Tensor],
        device: str | torch.device | None = None,
        non_blocking: bool = False,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor], tuple, dict]:
        if not isinstance(batchdata, Mapping) or self.image_key not in batchdata or self.condition_name not in batchdata:
            raise ValueError(
                f"HybridPrepareBatch expects a dict batch with keys '{self.image_key}' and '{self.condition_name}', "
                f"got {list(batchdata) if isinstance(batchdata, Mapping) else type(batchdata)}."
            )
        images = convert_to_tensor(batchdata[self.image_key], track_meta=False).to(device, non_blocking=non_blocking, **kwargs)
        condition = convert_to_tensor(batchdata[self.condition_name], track_meta=False).to(device, non_blocking=non_blocking, **kwargs)
        noise = self.get_noise(images).to(device, non_blocking=non_blocking, **kwargs)
        timesteps = self.get_timesteps(images).to(device, non_blocking=non_blocking, **kwargs)
        target = {"x_start": images, "noise": noise, "timesteps": timesteps}
        infer_kwargs = {"noise": noise, "timesteps": timesteps, "condition": condition.to(images.dtype), "mode": "concat"}
        return images, target, (), infer_kwargs


class ConditionPrepareBatch:
    """Batch preparation for sampling: the conditioning map is the network input, the real image the target.

    Returns ``(batch[condition_key], batch[target_key])`` for MONAI's ``SupervisedEvaluator`` whose inferer is a
    sampler (``sampler(condition, network) -> image``). With ``target_key=None`` (inference without a real
    image) the conditioning is returned as the target as well, so post-transforms still see its metadata.
    """

    def __init__(self, condition_key: str = "label", target_key: str | None = "image") -> None:
        self.condition_key = condition_key
        self.target_key = target_key

    def __call__(
        self,
        batchdata: dict[str, torch.Tensor],
        device: str | torch.device | None = None,
        non_blocking: bool = False,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        keys = [self.condition_key] + ([self.target_key] if self.target_key else [])
        missing = [k for k in keys if k not in batchdata]
        if missing:
            raise ValueError(f"ConditionPrepareBatch: batch lacks key(s) {missing}; found {list(batchdata)}.")
        cond = batchdata[self.condition_key].to(device, non_blocking=non_blocking, **kwargs)
        if self.target_key is None:
            return cond, cond
        return cond, batchdata[self.target_key].to(device, non_blocking=non_blocking, **kwargs)
