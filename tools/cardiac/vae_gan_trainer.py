"""Training of the joint image-label autoencoder with the optional patch-adversarial term (Hu et al., stage 1).

:class:`VAEGANTrainer` is MONAI's ``AdversarialTrainer`` (one generator step, then one discriminator step
with its own optimizer, per iteration) adapted to :class:`~tools.cardiac.joint_vae.JointAutoencoderKL`:

* the autoencoder returns ``(reconstruction, z_mu, z_sigma)``: the generator inferer gives
  ``AdversarialTrainer`` the reconstruction and keeps the posterior in ``engine.state.output``
  (``"z_mu"``, ``"z_sigma"``), where the reconstruction loss (:class:`~tools.cardiac.joint_vae_loss.JointVAELoss`,
  L1 + KL + Dice-CE) reads it;
* the discriminator (e.g. MONAI ``PatchDiscriminator``) sees the image channel only, the first
  ``image_channels`` channels of the reconstruction and of the real joint tensor;
* warm-up: up to iteration ``adv_start_iteration``, and in every iteration when no discriminator is given
  (``adv_weight`` 0, the default), only the autoencoder is trained: no adversarial term, no discriminator
  forward pass, no discriminator update;
* ``monai.engines.IterationEvents`` fire as in ``SupervisedTrainer`` (``FORWARD_COMPLETED``,
  ``LOSS_COMPLETED`` with ``output["loss"]`` = reconstruction + adversarial term, ``BACKWARD_COMPLETED``,
  ``MODEL_COMPLETED``, which decollates the output), besides ``AdversarialIterationEvents``, so that the
  bundle's handlers (``LossTermsHandler``, ``StatsHandler``, progress bar) see every iteration alike.

Under ``torch.distributed`` the bundle wraps both networks in ``DistributedDataParallel``
(``multi_gpu_train.json``), which averages the discriminator's gradients over the ranks as well.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import nullcontext
from typing import Any

import torch
from monai.engines import AdversarialTrainer
from monai.engines.utils import IterationEvents
from monai.inferers import Inferer, SimpleInferer
from monai.utils import AdversarialIterationEvents, AdversarialKeys
from monai.utils.enums import CommonKeys as Keys
from torch import nn
from torch.optim import Optimizer

__all__ = ["VAEGANTrainer", "checkpoint_objects", "Z_MU", "Z_SIGMA"]

#: posterior of the current iteration in ``engine.state.output``, shape ``(B, latent_channels, *latent_size)``
Z_MU, Z_SIGMA = "z_mu", "z_sigma"


class VAEGANTrainer(AdversarialTrainer):
    """``AdversarialTrainer`` for the joint VAE: posterior kept for the KL term, image-only discriminator, warm-up.

    Args:
        device, max_epochs, train_data_loader: as in ``AdversarialTrainer``.
        g_network: the joint autoencoder, ``joint (B, 1 + K, *S) -> (reconstruction, z_mu, z_sigma)``.
        g_optimizer: the autoencoder's optimizer.
        recon_loss_function: ``((reconstruction, z_mu, z_sigma), target) -> loss``, e.g. ``JointVAELoss``.
        d_network: the discriminator; ``None`` trains the autoencoder alone (no adversarial term).
        d_optimizer: the discriminator's optimizer (required with ``d_network``).
        g_loss_function: ``d_network(fakes) -> weighted adversarial term of the autoencoder loss``
            (required with ``d_network``), e.g. :class:`~tools.cardiac.joint_vae_loss.PatchGeneratorLoss`.
        d_loss_function: ``(d_network(reals), d_network(fakes)) -> discriminator loss`` (required with
            ``d_network``), e.g. :class:`~tools.cardiac.joint_vae_loss.PatchDiscriminatorLoss`.
        adv_start_iteration: warm-up length in iterations (>= 0); the adversarial term and the
            discriminator updates start at iteration ``adv_start_iteration + 1``.
        image_channels: leading channels of the joint tensor that the discriminator sees.
        g_inferer: runs the autoencoder (default ``SimpleInferer``); must return the 3-tuple above.
        d_inferer: runs the discriminator on the image channels (default ``SimpleInferer``).
        kwargs: the other ``AdversarialTrainer`` arguments (``prepare_batch``, ``train_handlers``, ``amp``,
            ``amp_kwargs``, ``decollate``, ...).
    """

    def __init__(
        self,
        device: torch.device | str,
        max_epochs: int,
        train_data_loader: Iterable,
        g_network: nn.Module,
        g_optimizer: Optimizer,
        recon_loss_function: Callable,
        d_network: nn.Module | None = None,
        d_optimizer: Optimizer | None = None,
        g_loss_function: Callable | None = None,
        d_loss_function: Callable | None = None,
        adv_start_iteration: int = 0,
        image_channels: int = 1,
        g_inferer: Inferer | None = None,
        d_inferer: Inferer | None = None,
        **kwargs: Any,
    ) -> None:
        if d_network is not None:
            missing = [n for n, v in (("d_optimizer", d_optimizer), ("g_loss_function", g_loss_function),
                                      ("d_loss_function", d_loss_function)) if v is None]
            if missing:
                raise ValueError(f"VAEGANTrainer: a discriminator needs {', '.join(missing)} (got None)")
        if adv_start_iteration < 0:
            raise ValueError(f"VAEGANTrainer: adv_start_iteration must be >= 0, got {adv_start_iteration}")
        super().__init__(
            device=device,
            max_epochs=max_epochs,
            train_data_loader=train_data_loader,
            g_network=g_network,
            g_optimizer=g_optimizer,
            g_loss_function=g_loss_function,
            recon_loss_function=self._reconstruction_loss,
            d_network=d_network,
            d_optimizer=d_optimizer,
            d_loss_function=d_loss_function,
            g_inferer=self._generate,
            d_inferer=self._discriminate,
            **kwargs,
        )
        self.vae_loss = recon_loss_function
        self.vae_inferer = SimpleInferer() if g_inferer is None else g_inferer
        self.disc_inferer = SimpleInferer() if d_inferer is None else d_inferer
        self.adv_start_iteration = int(adv_start_iteration)
        self.image_channels = int(image_channels)
        # the generator half of every iteration also fires the SupervisedTrainer events
        self.add_event_handler(AdversarialIterationEvents.GENERATOR_FORWARD_COMPLETED,
                               lambda e: e.fire_event(IterationEvents.FORWARD_COMPLETED))
        self.add_event_handler(AdversarialIterationEvents.GENERATOR_LOSS_COMPLETED, self._loss_completed)
        self.add_event_handler(AdversarialIterationEvents.GENERATOR_BACKWARD_COMPLETED,
                               lambda e: e.fire_event(IterationEvents.BACKWARD_COMPLETED))

    @property
    def network(self) -> nn.Module:
        """The autoencoder (``SupervisedTrainer``'s name for the trained network)."""
        return self.state.g_network

    def adversarial(self, iteration: int) -> bool:
        """Whether iteration ``iteration`` (1-based) trains with the discriminator."""
        return self.state.d_network is not None and iteration > self.adv_start_iteration

    # ---- pieces handed to AdversarialTrainer
    def _generate(self, inputs: torch.Tensor, network: nn.Module, *args: Any, **kwargs: Any) -> torch.Tensor:
        """Reconstruction ``(B, 1 + K, *S)``; the posterior goes to ``state.output`` for the KL term."""
        recon, z_mu, z_sigma = self.vae_inferer(inputs, network, *args, **kwargs)
        self.state.output[Z_MU], self.state.output[Z_SIGMA] = z_mu, z_sigma
        return recon

    def _reconstruction_loss(self, recon: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        out = self.state.output
        return self.vae_loss((recon, out[Z_MU], out[Z_SIGMA]), targets)

    def _discriminate(self, joint: torch.Tensor, network: nn.Module, *args: Any, **kwargs: Any) -> Any:
        """Discriminator output on the image channels ``joint[:, :image_channels]``."""
        return self.disc_inferer(joint[:, : self.image_channels].float().contiguous(), network, *args, **kwargs)

    def _loss_completed(self, engine: VAEGANTrainer) -> None:
        out = engine.state.output
        out[Keys.LOSS] = out[AdversarialKeys.RECONSTRUCTION_LOSS]
        if AdversarialKeys.GENERATOR_LOSS in out:
            out[Keys.LOSS] = out[Keys.LOSS] + out[AdversarialKeys.GENERATOR_LOSS]
        engine.fire_event(IterationEvents.LOSS_COMPLETED)

    # ---- one iteration
    def _iteration(self, engine: VAEGANTrainer, batchdata: dict[str, torch.Tensor]) -> dict:
        if self.adversarial(engine.state.iteration):
            super()._iteration(engine, batchdata)
        else:
            self._autoencoder_iteration(engine, batchdata)
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output

    def _autoencoder_iteration(self, engine: VAEGANTrainer, batchdata: dict[str, torch.Tensor]) -> None:
        """The generator step of ``AdversarialTrainer`` without the adversarial term (warm-up, ``adv_weight`` 0)."""
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        batch = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking, **engine.to_kwargs)
        inputs, targets = batch[0], batch[1]
        args, kwargs = (batch[2], batch[3]) if len(batch) == 4 else ((), {})
        engine.state.output = out = {Keys.IMAGE: inputs, Keys.LABEL: targets}
        scaler = engine.state.g_scaler if engine.amp else None
        engine.state.g_network.train()
        engine.state.g_optimizer.zero_grad(set_to_none=engine.optim_set_to_none)
        with torch.autocast("cuda", **engine.amp_kwargs) if scaler is not None else nullcontext():
            out[Keys.PRED] = engine.g_inferer(inputs, engine.state.g_network, *args, **kwargs)
            engine.fire_event(AdversarialIterationEvents.GENERATOR_FORWARD_COMPLETED)
            out[AdversarialKeys.RECONSTRUCTION_LOSS] = engine.state.recon_loss_function(out[Keys.PRED], targets).mean()
            engine.fire_event(AdversarialIterationEvents.RECONSTRUCTION_LOSS_COMPLETED)
            self._loss_completed(engine)
        if scaler is not None:
            scaler.scale(out[Keys.LOSS]).backward()
            engine.fire_event(AdversarialIterationEvents.GENERATOR_BACKWARD_COMPLETED)
            scaler.step(engine.state.g_optimizer)
            scaler.update()
        else:
            out[Keys.LOSS].backward()
            engine.fire_event(AdversarialIterationEvents.GENERATOR_BACKWARD_COMPLETED)
            engine.state.g_optimizer.step()
        engine.fire_event(AdversarialIterationEvents.GENERATOR_MODEL_COMPLETED)


def checkpoint_objects(
    model: nn.Module, optimizer: Optimizer, discriminator: nn.Module | None = None, d_optimizer: Optimizer | None = None
) -> dict[str, Any]:
    """``CheckpointSaver`` ``save_dict`` of stage 1: ``model`` and ``optimizer``, plus ``discriminator`` and
    ``d_optimizer`` under their own keys when the adversarial term is on."""
    objects: dict[str, Any] = {"model": model, "optimizer": optimizer}
    if discriminator is not None:
        objects["discriminator"] = discriminator
        objects["d_optimizer"] = d_optimizer
    return objects
