"""Latents of the frozen joint VAE, encoded once, for training the latent diffusion model.

Encoding every augmented batch costs the VAE encoder at every LDM iteration. :class:`CachedLatents` instead
passes the training set ``copies`` times through its (random) transforms, encodes each volume once with the
frozen autoencoder and keeps the posterior ``(z_mu, z_sigma)`` of every copy on the CPU; training then draws
``z = z_mu + z_sigma * eps`` per iteration (:class:`tools.cardiac.latent_prepare_batch.LatentDiffusionPrepareBatch`
with ``encoded=True``), as the per-batch encoding did, so an iteration costs only the diffusion network.

The cache is built at the first ``len()`` / item access (Ignite asks the loader's length when the trainer starts),
after loading the autoencoder weights itself from ``checkpoint`` (``weights_only``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset

from tools.engines.checkpoint_io import load_checkpoint

__all__ = ["CachedLatents", "encode_posteriors"]

logger = logging.getLogger(__name__)


@torch.no_grad()
def encode_posteriors(autoencoder: nn.Module, data: Sequence, copies: int = 1, input_key: str = "joint",
                      device: torch.device | str = "cpu") -> list[dict[str, torch.Tensor]]:
    """``[{"z_mu", "z_sigma"}]`` of ``copies`` passes over ``data`` (items: dicts with ``input_key`` -> (C, *S))."""
    if copies < 1:
        raise ValueError(f"latent cache: copies must be at least 1, got {copies}")
    autoencoder.eval()
    out = []
    for _ in range(copies):
        for i in range(len(data)):
            item = data[i]
            if input_key not in item:
                raise ValueError(f"latent cache: item {i} has no key '{input_key}' (found {sorted(item)})")
            x = torch.as_tensor(item[input_key]).unsqueeze(0).float().to(device)
            z_mu, z_sigma = autoencoder.encode(x)
            out.append({"z_mu": z_mu[0].float().cpu(), "z_sigma": z_sigma[0].float().cpu()})
    return out


class CachedLatents(Dataset):
    """Dataset of cached VAE posteriors: ``copies`` encodings of every item of ``source``.

    Args:
        autoencoder: the joint VAE (``encode(x) -> (z_mu, z_sigma)``), frozen.
        source: the training dataset (its transforms draw a new augmentation / z crop per access).
        copies: augmented copies encoded per training volume.
        checkpoint: autoencoder weights (``{"model": state_dict}`` or a plain state dict) loaded before encoding;
            None: use ``autoencoder`` as it is.
        input_key: item key of the autoencoder input.
        device: where the encoder runs.
    """

    def __init__(self, autoencoder: nn.Module, source: Sequence, copies: int = 4, checkpoint: str | Path | None = None,
                 input_key: str = "joint", device: torch.device | str = "cpu") -> None:
        self.autoencoder = autoencoder
        self.source = source
        self.copies = int(copies)
        self.checkpoint = checkpoint
        self.input_key = input_key
        self.device = device
        self._items: list[dict[str, torch.Tensor]] | None = None

    @property
    def items(self) -> list[dict[str, torch.Tensor]]:
        if self._items is None:
            if self.checkpoint is not None:
                state = load_checkpoint(self.checkpoint, "model", accept_state_dict=True,
                                        hint="train the autoencoder stage first")
                self.autoencoder.load_state_dict(state)
            t0 = time.time()
            self._items = encode_posteriors(self.autoencoder, self.source, self.copies, self.input_key, self.device)
            logger.info(f"latent cache: {len(self._items)} posteriors ({self.copies} x {len(self.source)} volumes) "
                        f"encoded in {time.time() - t0:.1f} s")
        return self._items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return self.items[index]
