"""AortaDiff's uncertainty from N samples: per-voxel maps, per-case scores, a low-confidence flag and its study.

Per voxel (from :mod:`tools.aortadiff.inferers` with ``num_samples`` N > 1, decoded by
:class:`tools.aortadiff.decode.DecodeAortaDiffd`):

- ``std_hu``: standard deviation of the N synthetic CECTs, HU;
- ``lumen_vote``: fraction of the N samples whose lumen SDF is < 0 (inside the aorta; lumen and thrombus
  split the aorta, so the thrombus vote is ``1 - lumen_vote``);
- ``mask_entropy``: entropy in bits of those lumen / thrombus votes, :func:`binary_entropy` (0: all samples
  agree, 1: half and half); 0 outside the aorta. The per-class variance of the votes, ``p (1 - p)``, is the
  same for both classes and ranks voxels as the entropy does.

Per case (means inside the aorta): ``image_std_hu`` and ``mask_entropy`` (:data:`MEASURES`); the case's
``uncertainty_score`` is the one named by the config key ``uncertainty_measure``. A case is flagged
low-confidence when its score exceeds ``uncertainty_threshold``; :func:`threshold_at_false_alarm` sets that
threshold from cases that are not expected to fail (e.g. the validation cases) for a chosen false-alarm
rate, and :func:`flag_study` measures, on labeled cases, how many of the worst cases a threshold catches.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

__all__ = ["MEASURES", "binary_entropy", "threshold_at_false_alarm", "flag_study", "read_scores", "spearman"]

#: per-case score name -> what it is
MEASURES = {"mask_entropy": "mean entropy (bits) of the samples' lumen / thrombus votes inside the aorta",
            "image_std_hu": "mean per-voxel std (HU) of the samples' synthetic CECT inside the aorta"}


def binary_entropy(p: torch.Tensor) -> torch.Tensor:
    """Entropy in bits of a two-class vote with fraction ``p`` (0 at p in {0, 1}, 1 at p = 0.5)."""
    p = p.float().clamp(0.0, 1.0)
    q = 1.0 - p
    return -(torch.xlogy(p, p) + torch.xlogy(q, q)) / math.log(2.0)


def threshold_at_false_alarm(scores: Sequence[float], false_alarm_rate: float) -> float:
    """The threshold that flags (``score > threshold``) at most ``false_alarm_rate`` of ``scores``, cases taken
    as fine (e.g. the validation cases): the ``ceil((1 - rate) n)``-th smallest score."""
    s = np.sort(np.asarray([x for x in scores if x is not None and np.isfinite(x)], float))
    if s.size == 0:
        raise ValueError("threshold_at_false_alarm: no finite scores")
    if not 0.0 <= false_alarm_rate < 1.0:
        raise ValueError(f"false_alarm_rate must be in [0, 1), got {false_alarm_rate}")
    k = max(1, math.ceil((1.0 - false_alarm_rate) * s.size - 1e-9))
    return float(s[k - 1])


def spearman(scores: Sequence[float], errors: Sequence[float]) -> dict | None:
    """Spearman correlation (:func:`scipy.stats.spearmanr`) of score and error over the finite pairs (>= 3; None
    when fewer or when either is constant)."""
    from scipy.stats import spearmanr

    pairs = [(s, e) for s, e in zip(scores, errors) if s is not None and e is not None and np.isfinite(s) and np.isfinite(e)]
    if len(pairs) < 3:
        return None
    res = spearmanr([p[0] for p in pairs], [p[1] for p in pairs])
    if not np.isfinite(res.statistic):  # a constant score or error has no ranking
        return None
    return {"rho": float(res.statistic), "p": float(res.pvalue), "n": len(pairs)}


def flag_study(scores: Sequence[float], errors: Sequence[float], worst_fraction: float = 0.3,
               false_alarm_rate: float = 0.2, threshold: float | None = None) -> dict:
    """How many of the worst cases (the ``ceil(worst_fraction n)`` largest ``errors``) a flag catches.

    With ``threshold`` None the threshold is set on these cases at the fixed ``false_alarm_rate`` among the
    others (:func:`threshold_at_false_alarm` of their scores); else ``threshold`` is used as given and the
    false-alarm rate it gives is reported.
    """
    pairs = [(float(s), float(e)) for s, e in zip(scores, errors)
             if s is not None and e is not None and np.isfinite(s) and np.isfinite(e)]
    n = len(pairs)
    if n < 3:
        return {"n": n, "note": "needs >= 3 cases with a score and an error"}
    n_worst = max(1, math.ceil(worst_fraction * n - 1e-9))
    order = sorted(range(n), key=lambda i: -pairs[i][1])
    worst = set(order[:n_worst])
    others = [pairs[i][0] for i in range(n) if i not in worst]
    given = threshold is not None
    if not given:
        threshold = threshold_at_false_alarm(others, false_alarm_rate) if others else float("inf")
    flagged = {i for i in range(n) if pairs[i][0] > threshold}
    return {"n": n, "n_worst": n_worst, "threshold": float(threshold),
            "threshold_from": "given" if given else f"these cases, false-alarm rate {false_alarm_rate:g}",
            "caught": len(flagged & worst), "false_alarms": len(flagged - worst),
            "false_alarm_rate": len(flagged - worst) / max(1, n - n_worst)}


def read_scores(prediction_dir: str | Path, measure: str = "mask_entropy") -> dict[str, float]:
    """Per-case ``measure`` from the ``<case>/uncertainty.json`` files inference wrote into ``prediction_dir``."""
    if measure not in MEASURES:
        raise ValueError(f"uncertainty measure must be one of {sorted(MEASURES)}, got {measure!r}")
    out = {}
    for f in sorted(Path(prediction_dir).glob("*/uncertainty.json")):
        rec = json.loads(f.read_text())
        out[str(rec.get("case_id", f.parent.name))] = float(rec[measure])
    return out
