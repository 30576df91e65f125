"""Patch-adversarial training of the joint image-label autoencoder (Hu et al., stage 1, optional term).

An ``iteration_update`` for MONAI's ``SupervisedTrainer`` that alternates, per iteration,

1. a **generator** (autoencoder) step: ``loss = loss_function(pred, target)
   + adv_weight * PatchAdversarialLoss(D(recon_image)[-1], target_is_real=True, for_discriminator=False)``
   (the discriminator's weights are frozen during this step), then
2. a **discriminator** step with its own optimizer: ``(L(D(real)[-1], real) + L(D(recon.detach())[-1], fake)) / 2``.

``L`` is MONAI's ``PatchAdversarialLoss`` (least squares by default), ``D`` a MONAI ``PatchDiscriminator``.
Before iteration ``start_iteration`` (warm-up) only the plain autoencoder loss is trained and D is not updated.

Why not MONAI's ``AdversarialTrainer``: it expects the generator to return one tensor (it calls
``.float()`` on it and feeds the whole target to D), whereas :class:`~tools.cardiac.joint_vae.JointAutoencoderKL`
returns ``(reconstruction, z_mu, z_sigma)`` whose KL term the reconstruction loss needs, and D should see the
image channel only. Keeping ``SupervisedTrainer`` also keeps the bundle's handlers, validation and checkpoint
wiring unchanged; the configs use this iteration only when ``adv_weight > 0``.

The generator step mirrors ``SupervisedTrainer._iteration`` (events, autocast + grad scaler when ``amp``);
gradient accumulation and ``compile`` are not supported here. Under ``torch.distributed`` the discriminator's
gradients are averaged over ranks by hand (D is not wrapped in DDP, which allows its two forward passes).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import nullcontext
from typing import Any

import torch
from monai.engines.utils import IterationEvents
from monai.losses import PatchAdversarialLoss
from monai.utils.enums import CommonKeys as Keys
from torch import nn
from torch.optim import Optimizer

__all__ = ["VAEAdversarialIteration", "checkpoint_objects"]

#: extra keys written to ``engine.state.output`` (besides image, label, pred, loss)
RECON_LOSS, GEN_ADV_LOSS, DISC_LOSS = "recon_loss", "adv_g_loss", "adv_d_loss"


def _logits(d_out: Any) -> torch.Tensor:
    """``PatchDiscriminator`` returns its intermediate features with the logits last."""
    return d_out[-1] if isinstance(d_out, (list, tuple)) else d_out


class VAEAdversarialIteration:
    """Alternating autoencoder / patch-discriminator iteration for ``SupervisedTrainer(iteration_update=...)``.

    Args:
        discriminator: e.g. ``monai.networks.nets.PatchDiscriminator(spatial_dims=3, in_channels=1, ...)``;
            moved to ``device``.
        d_optimizer: an optimizer of the discriminator's parameters, or a callable ``params -> optimizer``
            (a bundle component with ``"_mode_": "callable"``), called with ``discriminator.parameters()``.
        adv_weight: weight of the generator's adversarial term (> 0).
        adversarial_loss: defaults to ``PatchAdversarialLoss(criterion="least_squares")``.
        start_iteration: warm-up; the adversarial term and D updates start after this many iterations.
        image_channels: the first ``image_channels`` channels of the reconstruction / target are the image D sees.
        device: where the discriminator lives (the trainer's device).
    """

    def __init__(
        self,
        discriminator: nn.Module,
        d_optimizer: Optimizer | Callable[[Iterable[nn.Parameter]], Optimizer],
        adv_weight: float,
        adversarial_loss: Callable | None = None,
        start_iteration: int = 0,
        image_channels: int = 1,
        device: torch.device | str | None = None,
    ) -> None:
        if adv_weight <= 0:
            raise ValueError(f"adv_weight must be > 0 for adversarial training (0 disables it), got {adv_weight}")
        if start_iteration < 0:
            raise ValueError(f"adv_start_iteration must be >= 0, got {start_iteration}")
        self.discriminator = discriminator.to(device) if device is not None else discriminator
        self.d_optimizer = d_optimizer if isinstance(d_optimizer, Optimizer) else d_optimizer(
            self.discriminator.parameters()
        )
        self.adv_weight = float(adv_weight)
        self.adversarial_loss = adversarial_loss or PatchAdversarialLoss(criterion="least_squares")
        self.start_iteration = int(start_iteration)
        self.image_channels = int(image_channels)
        self.d_scaler: torch.amp.GradScaler | None = None

    def _image(self, x: Any) -> torch.Tensor:
        x = x[0] if isinstance(x, (tuple, list)) else x
        return x[:, : self.image_channels].float().contiguous()

    def _set_d_trainable(self, flag: bool) -> None:
        for p in self.discriminator.parameters():
            p.requires_grad_(flag)

    def _average_d_gradients(self) -> None:
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            return
        world = torch.distributed.get_world_size()
        if world < 2:
            return
        for p in self.discriminator.parameters():
            if p.grad is not None:
                torch.distributed.all_reduce(p.grad)
                p.grad /= world

    def __call__(self, engine: Any, batchdata: dict[str, torch.Tensor]) -> dict:
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        batch = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking, **engine.to_kwargs)
        if len(batch) == 2:
            inputs, targets = batch
            args: tuple = ()
            kwargs: dict = {}
        else:
            inputs, targets, args, kwargs = batch
        engine.state.output = out = {Keys.IMAGE: inputs, Keys.LABEL: targets}
        use_amp = bool(engine.amp and engine.scaler is not None)
        autocast = (lambda: torch.autocast("cuda", **engine.amp_kwargs)) if use_amp else nullcontext
        adversarial = engine.state.iteration > self.start_iteration

        # ---- generator (autoencoder) step, D frozen
        engine.network.train()
        self.discriminator.train()
        engine.optimizer.zero_grad(set_to_none=engine.optim_set_to_none)
        self._set_d_trainable(False)
        try:
            with autocast():
                out[Keys.PRED] = engine.inferer(inputs, engine.network, *args, **kwargs)
                engine.fire_event(IterationEvents.FORWARD_COMPLETED)
                recon_loss = engine.loss_function(out[Keys.PRED], targets).mean()
                loss = recon_loss
                if adversarial:
                    fake_logits = _logits(self.discriminator(self._image(out[Keys.PRED])))
                    g_adv = self.adversarial_loss(fake_logits.float(), target_is_real=True, for_discriminator=False)
                    loss = recon_loss + self.adv_weight * g_adv
                    out[GEN_ADV_LOSS] = g_adv.detach()
                out[RECON_LOSS] = recon_loss.detach()
                out[Keys.LOSS] = loss
                engine.fire_event(IterationEvents.LOSS_COMPLETED)
        finally:
            self._set_d_trainable(True)
        if use_amp:
            engine.scaler.scale(loss).backward()
            engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
            engine.scaler.step(engine.optimizer)
            engine.scaler.update()
        else:
            loss.backward()
            engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
            engine.optimizer.step()

        # ---- discriminator step: real images vs detached reconstructions
        if adversarial:
            self.d_optimizer.zero_grad(set_to_none=engine.optim_set_to_none)
            with autocast():
                real_logits = _logits(self.discriminator(self._image(targets).detach()))
                fake_logits = _logits(self.discriminator(self._image(out[Keys.PRED]).detach()))
                d_loss = 0.5 * (
                    self.adversarial_loss(real_logits.float(), target_is_real=True, for_discriminator=True)
                    + self.adversarial_loss(fake_logits.float(), target_is_real=False, for_discriminator=True)
                )
            if use_amp:
                if self.d_scaler is None:
                    self.d_scaler = torch.amp.GradScaler("cuda")
                self.d_scaler.scale(d_loss).backward()
                self.d_scaler.unscale_(self.d_optimizer)
                self._average_d_gradients()
                self.d_scaler.step(self.d_optimizer)
                self.d_scaler.update()
            else:
                d_loss.backward()
                self._average_d_gradients()
                self.d_optimizer.step()
            out[DISC_LOSS] = d_loss.detach()
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output  # decollated by the MODEL_COMPLETED handler when the trainer decollates


def checkpoint_objects(
    model: nn.Module, optimizer: Optimizer, adversarial: VAEAdversarialIteration | None = None
) -> dict[str, Any]:
    """``CheckpointSaver`` ``save_dict``: ``model``, ``optimizer`` and, when adversarial training is on,
    ``discriminator`` and ``d_optimizer`` under their own keys."""
    objects: dict[str, Any] = {"model": model, "optimizer": optimizer}
    if adversarial is not None:
        objects["discriminator"] = adversarial.discriminator
        objects["d_optimizer"] = adversarial.d_optimizer
    return objects
