"""Batch preparation for conditional diffusion in MONAI engines: training and sampling.

Training (:class:`DiffusionTargetPrepareBatch`) follows MONAI's ``DiffusionPrepareBatch`` (noise, then
timesteps, drawn in that order) with the conditioning concatenated to the noisy image by MONAI's
``DiffusionInferer(mode="concat")``; the loss target is a dict, because a diffusion loss that is more
than ``MSE(eps_hat, eps)`` needs the clean image, the noise, the timesteps and, for some methods, other
batch entries (an ROI, a signed distance field, a labeled flag). Sampling (:class:`ConditionPrepareBatch`)
hands the conditioning to a sampler ``Inferer`` as its input.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from monai.engines import DiffusionPrepareBatch
from monai.utils import convert_to_tensor

__all__ = ["DiffusionTargetPrepareBatch", "ConditionPrepareBatch"]


class DiffusionTargetPrepareBatch(DiffusionPrepareBatch):
    """``DiffusionPrepareBatch`` whose loss target is ``{"x_start", "noise", "timesteps", *target_keys}``.

    Returns ``(images, target, (), kwargs)`` for ``SupervisedTrainer``: ``images`` (N, C, *spatial) are the
    clean images x_0 (``batch[image_key]``); ``kwargs`` holds ``noise``, ``timesteps``, ``condition``
    (``batch[condition_name]``, (N, K, *spatial)) and ``mode="concat"`` for MONAI's ``DiffusionInferer``,
    which noises the images and calls the network on ``cat([x_t, condition], 1)``.

    Args:
        num_train_timesteps: T of the forward process (t is drawn uniformly from 0..T-1).
        condition_name: batch key of the conditioning tensor.
        image_key: batch key of the clean image.
        target_keys: further batch keys copied into the target dict (as float tensors on ``device``).
    """

    def __init__(self, num_train_timesteps: int, condition_name: str = "label", image_key: str = "image",
                 target_keys: Sequence[str] = ()) -> None:
        super().__init__(num_train_timesteps=num_train_timesteps, condition_name=condition_name)
        self.image_key = image_key
        self.target_keys = tuple(target_keys)

    def __call__(
        self,
        batchdata: dict[str, torch.Tensor],
        device: str | torch.device | None = None,
        non_blocking: bool = False,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor], tuple, dict]:
        needed = (self.image_key, self.condition_name, *self.target_keys)
        if not isinstance(batchdata, Mapping) or any(k not in batchdata for k in needed):
            found = list(batchdata) if isinstance(batchdata, Mapping) else type(batchdata).__name__
            raise ValueError(f"{type(self).__name__} expects a dict batch with keys {list(needed)}, got {found}.")

        def get(key: str) -> torch.Tensor:
            value = convert_to_tensor(batchdata[key], track_meta=False)
            return value.to(device, non_blocking=non_blocking, **kwargs)

        images = get(self.image_key)
        condition = get(self.condition_name)
        noise = self.get_noise(images).to(device, non_blocking=non_blocking, **kwargs)
        timesteps = self.get_timesteps(images).to(device, non_blocking=non_blocking, **kwargs)
        target = {"x_start": images, "noise": noise, "timesteps": timesteps}
        target.update({k: get(k).float() for k in self.target_keys})
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
