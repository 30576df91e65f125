"""Synthetic (image, label) slice pairs from a trained mask-to-CT diffusion model, for segmenter augmentation.

The label maps of real training slices condition the sampler; each synthetic slice is paired with the
organ ids of its conditioning map (the body class becomes background, as for the segmenter). The pairs are
cached in one ``.pt`` file: an existing file is reused (never overwritten) unless ``overwrite``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from tools.abdomen.labels import BODY_ID
from tools.engines.checkpoint_io import load_checkpoint, load_network

__all__ = ["SyntheticSlicePairs"]

logger = logging.getLogger(__name__)


class SyntheticSlicePairs:
    """Generate (or load) synthetic slice pairs.

    Args:
        network: the diffusion network; its weights come from ``checkpoint`` (``"model"`` entry).
        checkpoint: trained diffusion checkpoint (e.g. ``models/model.pt``).
        sampler: ``sampler(onehot (N, K, S, S), network) -> (N, 1, S, S)`` in [-1, 1].
        dataloader: batches with one-hot ``label`` (N, K, S, S) (the conditioning label maps).
        path: cache file of the pairs.
        device: torch device.
        overwrite: regenerate even when ``path`` exists.
    """

    def __init__(self, network, checkpoint: str, sampler, dataloader, path: str, device="cpu", overwrite: bool = False):
        self.network = network
        self.checkpoint = checkpoint
        self.sampler = sampler
        self.dataloader = dataloader
        self.path = Path(path)
        self.device = torch.device(device)
        self.overwrite = overwrite

    def generate(self) -> list[dict[str, torch.Tensor]]:
        """List of ``{"image": (1, S, S) float in [-1, 1], "label": (1, S, S) long organ ids 0..15}``."""
        if self.path.is_file() and not self.overwrite:
            logger.info("synthetic slices: reusing %s", self.path)
            return load_checkpoint(self.path)
        load_network(
            self.network, self.checkpoint, self.device,
            hint="key 'synthetic_checkpoint'; train the diffusion model first with configs/train.json",
        )
        pairs: list[dict[str, torch.Tensor]] = []
        for batch in self.dataloader:
            onehot = batch["label"].to(self.device).float()
            image = self.sampler(onehot, self.network).float().clamp(-1, 1).cpu()
            lab = onehot.argmax(1, keepdim=True).cpu()
            lab = torch.where(lab == BODY_ID, torch.zeros_like(lab), lab)
            pairs.extend({"image": image[i], "label": lab[i]} for i in range(image.shape[0]))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(pairs, self.path)
        logger.info("synthetic slices: %d pairs written to %s", len(pairs), self.path)
        return pairs
