"""Per-organ Dice of segmenters on the same real slices: the effect of training with synthetic slices."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from monai.metrics import DiceMetric

from tools.abdomen.labels import CLASS_NAMES, ORGAN_IDS
from tools.engines.checkpoint_io import load_network
from tools.engines.output_guard import refuse_overwrite

__all__ = ["nanmean_over_slices", "add_segmenter_dice", "organ_dice", "compare_segmenters"]

logger = logging.getLogger(__name__)


def nanmean_over_slices(values: np.ndarray) -> np.ndarray:
    """Column means over slices ignoring NaN (organ absent from a slice); NaN where a column is all NaN."""
    counts = np.isfinite(values).sum(0)
    sums = np.where(np.isfinite(values), values, 0.0).sum(0)
    return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


@torch.no_grad()
def add_segmenter_dice(metric: DiceMetric, network: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> None:
    """Add the per-slice Dice of ``network``'s argmax on ``images`` (N, 1, S, S) against the organ ids
    ``labels`` (N, 1, S, S) to ``metric`` (a ``DiceMetric`` on one-hot maps of the network's channels)."""
    logits = network(images.float())
    n = logits.shape[1]
    pred = F.one_hot(logits.argmax(1), n).permute(0, 3, 1, 2).float()
    tgt = F.one_hot(labels.long()[:, 0].clamp(0, n - 1), n).permute(0, 3, 1, 2).float()
    metric(y_pred=pred, y=tgt)


def organ_dice(metric: DiceMetric) -> dict[str, float]:
    """``{"mean": ..., <organ name>: ...}`` from the per-slice values in ``metric`` (then reset).

    An organ's Dice is its mean over the slices where it is present; an organ absent from every slice is
    NaN and left out of ``"mean"``.
    """
    per = nanmean_over_slices(metric.aggregate().cpu().numpy())  # organs absent from every slice stay NaN
    metric.reset()
    scores = {CLASS_NAMES[i]: float(per[i - 1]) for i in ORGAN_IDS}
    finite = [v for v in scores.values() if np.isfinite(v)]
    return {"mean": float(np.mean(finite)) if finite else float("nan"), **scores}


@torch.no_grad()
def compare_segmenters(
    network: torch.nn.Module,
    checkpoints: Mapping[str, str],
    dataloader,
    output_file: str,
    device: str | torch.device = "cpu",
    baseline: str = "real",
    overwrite: bool = False,
) -> dict:
    """Dice per organ of each checkpoint of ``network`` on ``dataloader`` and the change against ``baseline``.

    Args:
        network: segmenter architecture (1 -> 16 channels), weights loaded from each checkpoint's ``"model"``.
        checkpoints: name -> checkpoint path, e.g. ``{"real": segmenter.pt, "real+synthetic": segmenter_augmented.pt}``;
            absent files are skipped with a logged reason.
        dataloader: real slices, ``image`` (N, 1, S, S) and ``label`` (N, 1, S, S) organ ids 0..15.
        output_file: JSON report ``{"dice": {name: {organ: dice}}, "delta_vs_<baseline>": {...}}``.
    """
    refuse_overwrite([output_file], overwrite)
    device = torch.device(device)
    report: dict = {"dice": {}, "skipped": {}}
    for name, path in checkpoints.items():
        if not path or not Path(path).is_file():
            report["skipped"][name] = f"checkpoint '{path}' is absent"
            logger.warning("segmenter comparison: %s skipped, checkpoint '%s' is absent", name, path)
            continue
        load_network(network, path, device)
        metric = DiceMetric(include_background=False, reduction="none", ignore_empty=True)
        for batch in dataloader:
            add_segmenter_dice(metric, network, batch["image"].to(device), batch["label"].to(device))
        report["dice"][name] = organ_dice(metric)
    if baseline in report["dice"]:
        base = report["dice"][baseline]
        for name, scores in report["dice"].items():
            if name != baseline:
                report[f"delta_vs_{baseline}"] = report.get(f"delta_vs_{baseline}", {})
                report[f"delta_vs_{baseline}"][name] = {k: scores[k] - base[k] for k in scores}
    Path(output_file).parent.mkdir(parents=True, exist_ok=True)
    Path(output_file).write_text(json.dumps(report, indent=2))
    for name, scores in report["dice"].items():
        logger.info("segmenter comparison: %s mean Dice %.4f", name, scores["mean"])
    return report
