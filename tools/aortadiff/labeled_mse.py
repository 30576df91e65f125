"""Semi-supervised mask loss: mean squared error over the labeled samples of a batch only.

Labeled and unlabeled samples are mixed in one batch with a per-sample flag ``labeled`` (B,) in {0, 1};
unlabeled samples contribute nothing (zero gradient) to this loss.
"""

from __future__ import annotations

import torch


def labeled_mse(pred: torch.Tensor, target: torch.Tensor, labeled: torch.Tensor,
                weight: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """MSE over labeled samples.

    Args:
        pred, target: (B, C, *spatial), e.g. predicted and ground-truth lumen SDF in [-1, 1].
        labeled: (B,) per-sample flag (1 labeled, 0 unlabeled).
        weight: optional (B, 1, *spatial) per-pixel weights (e.g. an ROI), normalised per sample.

    Returns:
        (loss, n_labeled): the mean over labeled samples of each sample's mean squared error (0 when none),
        and the number of labeled samples (a tensor) so callers can drop the term for all-unlabeled batches.
    """
    flag = labeled.reshape(-1).to(pred.dtype)
    if flag.numel() != pred.shape[0]:
        raise ValueError(f"labeled flag has {flag.numel()} entries for a batch of {pred.shape[0]}")
    err = (pred - target) ** 2
    dims = tuple(range(1, pred.ndim))
    if weight is None:
        per_sample = err.mean(dim=dims)
    else:
        w = weight.to(pred.dtype).expand_as(err)
        per_sample = (err * w).sum(dim=dims) / w.sum(dim=dims).clamp_min(1.0)
    n = flag.sum()
    # where(): unlabeled samples are excluded from the graph, not just multiplied by 0 (NaN-safe)
    per_sample = torch.where(flag > 0, per_sample, torch.zeros_like(per_sample))
    return per_sample.sum() / n.clamp_min(1.0), n
