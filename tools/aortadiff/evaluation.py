"""AortaDiff evaluation over a datalist split: reads inference outputs, writes metrics tables, summary and plots.

Per axial slice with aorta (and per case), comparing ``output/<case_id>/`` (from the inference pipeline) with
the datalist's ``cect``, ``aorta`` and (when present) ``lumen``:

- PSNR and SSIM (MONAI ``PSNRMetric`` / ``SSIMMetric``) on the HU window ``[a_min, a_max]`` mapped to [0, 1],
  whole slice and inside the aorta ROI (aorta dilated by ``roi_margin`` pixels; :mod:`tools.metrics.roi_image_quality`);
- LPIPS inside the ROI when the torchvision backbone weights are present (else skipped, reason logged);
- Dice of lumen and of thrombus (thrombus = aorta - lumen), per slice and per case (3D;
  :func:`tools.metrics.overlap.mask_dice`: 0 for a false-positive slice, NaN when both masks are empty);
- lumen max (Feret) and minor-axis diameters in mm, diameter MAE, thrombus area error in %
  (:mod:`tools.aortadiff.clinical_metrics`);
- with ``uncertainty.json`` from inference (``num_samples`` > 1; :mod:`tools.aortadiff.uncertainty`): per
  case both scores (``image_std_hu``, ``mask_entropy``) and ``uncertainty_score`` (the one named by
  ``uncertainty_measure``); Spearman correlation of each score with the case's errors (1 - Dice of lumen and
  of thrombus, diameter MAE); the cases flagged by ``uncertainty_threshold`` (and, per error, how many of
  the worst ``uncertainty_worst_fraction`` cases it catches); and the same catch count with the threshold
  set on these cases at the fixed false-alarm rate ``uncertainty_false_alarm_rate`` among the others.

Files in ``output_dir``: ``metrics_per_slice.csv``, ``metrics_per_case.csv``, ``metrics_summary.json``,
``bland_altman_diameters.png``, ``dice_boxplot.png`` and ``samples_<case_id>.png`` (NCCT | synthetic CECT |
real CECT | predicted lumen/thrombus).

Baselines score what they make: ``image_metrics=False`` (the segmentation-only U-Net: no image) skips
PSNR, SSIM, LPIPS and the sample figures; ``segmentation_metrics=False`` (the synthesis-only CDM: no
lumen) skips Dice, diameters and thrombus area. Skipped metrics are left out of the tables and are
``None`` in the summary.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from monai.metrics import PSNRMetric, SSIMMetric

from tools.data.datalist import load_datalist
from tools.aortadiff.transforms import AortaROId
from tools.data.transforms import hu_to_unit
from tools.aortadiff.plots import bland_altman_png, dice_boxplot_png
from tools.aortadiff.writer import FILE_NAMES, preview_png
from tools.aortadiff.lpips_loss import build_lpips_or_none
from tools.aortadiff.uncertainty import MEASURES, flag_study, spearman
from tools.aortadiff.clinical_metrics import area_mm2, lumen_diameters_mm, thrombus_area_error_percent
from tools.engines.output_guard import refuse_overwrite
from tools.metrics.overlap import mask_dice
from tools.metrics.roi_image_quality import roi_psnr, roi_ssim

logger = logging.getLogger(__name__)

IMAGE_METRICS = ("psnr", "ssim", "psnr_roi", "ssim_roi", "lpips_roi")
SEGMENTATION_METRICS = ("dice_lumen", "dice_thrombus", "diam_max_mae_mm", "diam_minor_mae_mm", "thrombus_area_err_pct")
OUTPUT_FILES = ("metrics_per_slice.csv", "metrics_per_case.csv", "metrics_summary.json",
                "bland_altman_diameters.png", "dice_boxplot.png")


def _nanmean(values: list[float]) -> float:
    v = np.asarray([x for x in values if x is not None], float)
    v = v[np.isfinite(v)]
    return float(v.mean()) if v.size else float("nan")


def _load(path: Path, what: str) -> tuple[np.ndarray, nib.Nifti1Image]:
    if not path.is_file():
        raise FileNotFoundError(f"{what} '{path}' does not exist (run inference first: python -m monai.bundle run "
                                "evaluate --config_file \"['.../inference.json','.../evaluate.json']\")")
    img = nib.load(str(path))
    return np.asarray(img.dataobj), img


class AortaDiffEvaluation:
    """Compute and save the AortaDiff evaluation (see module docstring). ``run()`` returns the summary dict."""

    def __init__(self, datalist: str, prediction_dir: str, output_dir: str, split: str = "test",
                 a_min: float = -200.0, a_max: float = 600.0, roi_margin: int = 5, lpips_net: str = "squeeze",
                 lpips_pretrained_backbone: bool = True, uncertainty_threshold: float | None = None,
                 overwrite: bool = False, image_metrics: bool = True, segmentation_metrics: bool = True,
                 uncertainty_measure: str = "mask_entropy", uncertainty_false_alarm_rate: float = 0.2,
                 uncertainty_worst_fraction: float = 0.3) -> None:
        self.datalist, self.split = datalist, split
        self.prediction_dir, self.output_dir = Path(prediction_dir), Path(output_dir)
        self.a_min, self.a_max = float(a_min), float(a_max)
        self.roi_margin = int(roi_margin)
        self.lpips_net, self.lpips_pretrained = lpips_net, bool(lpips_pretrained_backbone)
        self.threshold = None if uncertainty_threshold is None else float(uncertainty_threshold)
        if uncertainty_measure not in MEASURES:
            raise ValueError(f"uncertainty_measure must be one of {sorted(MEASURES)}, got {uncertainty_measure!r}")
        self.measure = uncertainty_measure
        self.false_alarm_rate, self.worst_fraction = float(uncertainty_false_alarm_rate), float(uncertainty_worst_fraction)
        self.overwrite = overwrite
        self.image_metrics, self.segmentation_metrics = bool(image_metrics), bool(segmentation_metrics)

    # ------------------------------------------------------------------ one case
    def _case(self, entry: dict, lpips: Any) -> tuple[list[dict], dict]:
        cid = Path(str(entry["case_id"])).name
        pdir = self.prediction_dir / cid
        cect, ref = _load(Path(entry["cect"]), "reference CECT")
        aorta = _load(Path(entry["aorta"]), "aorta mask")[0] > 0
        lumen_gt = _load(Path(entry["lumen"]), "lumen mask")[0] > 0 \
            if entry.get("lumen") and self.segmentation_metrics else None
        syn = _load(pdir / FILE_NAMES["synthetic_cect"], "synthetic CECT")[0].astype(np.float32)
        lumen_p = _load(pdir / FILE_NAMES["lumen"], "predicted lumen")[0] > 0
        thr_p = _load(pdir / FILE_NAMES["thrombus"], "predicted thrombus")[0] > 0
        if syn.shape != cect.shape or aorta.shape != cect.shape or lumen_p.shape != cect.shape:
            raise ValueError(f"case {cid}: prediction shape {syn.shape} / lumen {lumen_p.shape} differs from "
                             f"reference '{entry['cect']}' {cect.shape} / aorta {aorta.shape}")
        spacing = tuple(float(s) for s in ref.header.get_zooms()[:2])
        roi = AortaROId("a", margin=self.roi_margin)({"a": aorta[None].astype(np.float32)})["roi"][0] > 0
        ks = np.nonzero(aorta.any((0, 1)))[0]
        unc_file = pdir / "uncertainty.json"
        unc = json.loads(unc_file.read_text()) if unc_file.is_file() else {}
        scores = {m: unc.get(m) for m in MEASURES} if unc else {}
        if unc and scores.get("image_std_hu") is None:  # written before the mask scores existed
            scores["image_std_hu"] = unc.get("uncertainty_score")

        def stack(vol: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(np.ascontiguousarray(np.moveaxis(vol[..., ks], -1, 0)[:, None])).float()

        thr_gt = aorta & ~lumen_gt if lumen_gt is not None else None
        image_rows: list[dict] = [{} for _ in ks]
        if self.image_metrics:
            p_w = stack(hu_to_unit(syn, self.a_min, self.a_max))
            g_w = stack(hu_to_unit(cect.astype(np.float32), self.a_min, self.a_max))
            r_t = stack(roi.astype(np.float32))
            values = {"psnr": PSNRMetric(max_val=1.0, reduction="none")(p_w, g_w).flatten().tolist(),
                      "ssim": SSIMMetric(spatial_dims=2, data_range=1.0, reduction="none")(p_w, g_w).flatten().tolist(),
                      "psnr_roi": roi_psnr(p_w, g_w, r_t, 1.0).tolist(), "ssim_roi": roi_ssim(p_w, g_w, r_t, 1.0).tolist(),
                      "lpips_roi": lpips(p_w * 2 - 1, g_w * 2 - 1, r_t).tolist() if lpips is not None
                      else [float("nan")] * len(ks)}
            image_rows = [{m: v[i] for m, v in values.items()} for i in range(len(ks))]
            ncct = _load(Path(entry["ncct"]), "NCCT")[0].astype(np.float32)
            preview_png(ncct, syn, lumen_p, thr_p, self.output_dir / f"samples_{cid}.png", (self.a_min, self.a_max),
                        real_cect_hu=cect.astype(np.float32),
                        ref_masks=(lumen_gt, thr_gt) if lumen_gt is not None else None)
        rows = []
        for i, k in enumerate(ks):
            row = {"case_id": cid, "slice": int(k), **image_rows[i]}
            if lumen_gt is not None:
                dp, dg = lumen_diameters_mm(lumen_p[..., k], spacing), lumen_diameters_mm(lumen_gt[..., k], spacing)
                row.update(dice_lumen=mask_dice(lumen_p[..., k], lumen_gt[..., k]),
                           dice_thrombus=mask_dice(thr_p[..., k], thr_gt[..., k]),
                           diam_max_pred_mm=dp[0], diam_max_ref_mm=dg[0], diam_minor_pred_mm=dp[1],
                           diam_minor_ref_mm=dg[1],
                           diam_max_abs_err_mm=abs(dp[0] - dg[0]) if lumen_gt[..., k].any() else float("nan"),
                           diam_minor_abs_err_mm=abs(dp[1] - dg[1]) if lumen_gt[..., k].any() else float("nan"),
                           thrombus_area_pred_mm2=area_mm2(thr_p[..., k], spacing),
                           thrombus_area_ref_mm2=area_mm2(thr_gt[..., k], spacing),
                           thrombus_area_err_pct=thrombus_area_error_percent(thr_p[..., k], thr_gt[..., k], spacing))
            rows.append(row)
        case = {"case_id": cid, "labeled": lumen_gt is not None, "n_slices": len(ks),
                **{m: _nanmean([r[m] for r in rows]) for m in IMAGE_METRICS if self.image_metrics},
                "uncertainty_score": scores.get(self.measure), **{f"unc_{m}": v for m, v in scores.items()}}
        if lumen_gt is not None:
            case.update(dice_lumen=mask_dice(lumen_p, lumen_gt), dice_thrombus=mask_dice(thr_p, thr_gt),
                        diam_max_mae_mm=_nanmean([r["diam_max_abs_err_mm"] for r in rows]),
                        diam_minor_mae_mm=_nanmean([r["diam_minor_abs_err_mm"] for r in rows]),
                        thrombus_area_err_pct=_nanmean([r["thrombus_area_err_pct"] for r in rows]))
        return rows, case

    # ------------------------------------------------------------------ all cases
    def run(self) -> dict:
        targets = [self.output_dir / f for f in OUTPUT_FILES]
        refuse_overwrite(targets, self.overwrite)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        entries = load_datalist(self.datalist, self.split, required_keys=("ncct", "cect", "aorta"))
        if not self.image_metrics:
            lpips, lpips_status = None, "skipped: image_metrics is false (the model makes no image)"
        elif self.lpips_pretrained:
            lpips = build_lpips_or_none(self.lpips_net, True)
            lpips_status = f"computed ({self.lpips_net}, ImageNet backbone)" if lpips is not None else \
                "skipped: torchvision backbone weights not found (run `python tools/download_weights.py`)"
        else:
            lpips = None
            lpips_status = "skipped: lpips_pretrained_backbone is false (a random backbone is no perceptual metric)"
            logger.warning("LPIPS %s", lpips_status)
        slices, cases = [], []
        for e in entries:
            rows, case = self._case(e, lpips)
            slices += rows
            cases.append(case)
        self._write_csv(self.output_dir / "metrics_per_slice.csv", slices)
        self._write_csv(self.output_dir / "metrics_per_case.csv", cases)
        summary = self._summary(cases, lpips_status)
        (self.output_dir / "metrics_summary.json").write_text(json.dumps(summary, indent=1))
        bland_altman_png([r.get("diam_max_pred_mm", np.nan) for r in slices if r.get("diam_max_ref_mm", 0) > 0],
                         [r.get("diam_max_ref_mm", np.nan) for r in slices if r.get("diam_max_ref_mm", 0) > 0],
                         self.output_dir / "bland_altman_diameters.png")
        dice_boxplot_png({"lumen": [r.get("dice_lumen", np.nan) for r in slices],
                          "thrombus": [r.get("dice_thrombus", np.nan) for r in slices]},
                         self.output_dir / "dice_boxplot.png")
        logger.info("AortaDiff evaluation of %d cases written to %s: %s", len(cases), self.output_dir,
                    {k: v for k, v in summary["mean"].items()})
        return summary

    def _summary(self, cases: list[dict], lpips_status: str) -> dict:
        mean = {k: _nanmean([c.get(k) for c in cases]) for k in IMAGE_METRICS + SEGMENTATION_METRICS}
        scored = [c for c in cases if c.get("uncertainty_score") is not None and c.get("labeled")]
        unc: dict[str, Any] = {"measure": self.measure, "threshold": self.threshold, "n_cases_with_score": len(scored),
                               "false_alarm_rate": self.false_alarm_rate, "worst_fraction": self.worst_fraction}
        errors = {"dice_lumen_error": [1 - c["dice_lumen"] for c in scored],
                  "dice_thrombus_error": [1 - c["dice_thrombus"] for c in scored],
                  "diam_max_mae_mm": [c["diam_max_mae_mm"] for c in scored]}
        if len(scored) >= 3:
            for name, vals in errors.items():
                res = spearman([c["uncertainty_score"] for c in scored], vals)
                if res is not None:
                    unc[f"spearman_{name}"] = res
                for m in MEASURES:
                    res = spearman([c.get(f"unc_{m}") for c in scored], vals)
                    if res is not None:
                        unc.setdefault("spearman_by_measure", {}).setdefault(m, {})[name] = res
                unc.setdefault("flag_at_false_alarm_rate", {})[name] = flag_study(
                    [c["uncertainty_score"] for c in scored], vals, self.worst_fraction, self.false_alarm_rate)
                if self.threshold is not None:
                    unc.setdefault("flag_at_threshold", {})[name] = flag_study(
                        [c["uncertainty_score"] for c in scored], vals, self.worst_fraction, threshold=self.threshold)
        else:
            unc["spearman"] = (f"not computed: needs >= 3 labeled cases with an uncertainty score, have {len(scored)} "
                               "(scores come from inference with --num_samples > 1)")
        if self.threshold is not None:
            unc["flagged_cases"] = [c["case_id"] for c in cases if c.get("uncertainty_score") is not None
                                    and c["uncertainty_score"] > self.threshold]
        return {"split": self.split, "n_cases": len(cases), "window_hu": [self.a_min, self.a_max],
                "lpips": lpips_status, "mean": {k: (None if math.isnan(v) else v) for k, v in mean.items()},
                "uncertainty": unc}

    @staticmethod
    def _write_csv(path: Path, rows: list[dict]) -> None:
        cols: list[str] = []
        for r in rows:
            cols += [k for k in r if k not in cols]
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=cols)
            w.writeheader()
            w.writerows(rows)
