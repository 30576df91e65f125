"""Diffusion U-Net conditioned on several categorical patient attributes (beyond Hu et al.; their next step).

MONAI's ``DiffusionModelUNet`` adds one class embedding (``nn.Embedding(num_class_embeds, time_dim)``) to the
time embedding. Here that embedding is replaced by :class:`MultiClassEmbedding`: one embedding table per
attribute (default: sex 2, scan region 3, metal implant 2), **summed**, so each attribute is embedded on its
own. The wrapper takes the attributes as the ``context`` argument that MONAI's ``DiffusionInferer`` /
``LatentDiffusionInferer`` pass through (``(B, K)`` or ``(B, 1, K)`` integer codes), so training
(``DiffusionPrepareBatch(condition_name=...)``) and sampling (``conditioning=...``) stay stock MONAI.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.nets import DiffusionModelUNet
from torch import nn

__all__ = ["MultiClassEmbedding", "ClassConditionedDiffusionUNet"]


class MultiClassEmbedding(nn.Module):
    """Sum of per-attribute embeddings: ``(B, K)`` integer codes -> ``(B, dim)``."""

    def __init__(self, num_classes: Sequence[int], dim: int) -> None:
        super().__init__()
        self.num_classes = [int(n) for n in num_classes]
        self.tables = nn.ModuleList(nn.Embedding(n, dim) for n in self.num_classes)

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        codes = codes.reshape(codes.shape[0], -1).long()
        if codes.shape[1] != len(self.tables):
            raise ValueError(f"expected {len(self.tables)} condition codes per sample, got shape {tuple(codes.shape)}")
        for k, n in enumerate(self.num_classes):
            if codes[:, k].min() < 0 or codes[:, k].max() >= n:
                raise ValueError(f"condition {k} must be an integer code in [0, {n - 1}], got {codes[:, k].tolist()}")
        return sum(table(codes[:, k]) for k, table in enumerate(self.tables))


class ClassConditionedDiffusionUNet(nn.Module):
    """``DiffusionModelUNet`` whose class embedding is a :class:`MultiClassEmbedding`.

    Args:
        num_classes: number of categories per attribute, e.g. ``(2, 3, 2)`` for sex, scan region, implant.
        **unet_kwargs: ``DiffusionModelUNet`` arguments (``num_class_embeds`` is set here).

    ``forward(x, timesteps, context)``: ``context`` holds the ``(B, K)`` (or ``(B, 1, K)``) codes.
    """

    def __init__(self, num_classes: Sequence[int] = (2, 3, 2), **unet_kwargs) -> None:
        super().__init__()
        unet_kwargs.pop("num_class_embeds", None)
        self.unet = DiffusionModelUNet(num_class_embeds=max(int(n) for n in num_classes), **unet_kwargs)
        time_dim = self.unet.class_embedding.embedding_dim
        self.unet.class_embedding = MultiClassEmbedding(num_classes, time_dim)

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor | None = None,
                class_labels: torch.Tensor | None = None) -> torch.Tensor:
        codes = class_labels if class_labels is not None else context
        if codes is None:
            raise ValueError("ClassConditionedDiffusionUNet needs the condition codes (context / class_labels)")
        return self.unet(x, timesteps, class_labels=codes.to(x.device))
