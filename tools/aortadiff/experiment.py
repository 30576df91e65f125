"""AortaDiff's comparison rerun on phantoms: ``python -m tools.experiments aortadiff [options]``.

One command generates the phantoms (training cases and at least 10 labeled held-out test cases, harder
kinds included: thin thrombus, calcified wall, low contrast), trains every model of :data:`MODELS` with
the same number of iterations at the same batch size, evaluates every row of :data:`ROWS` on the same
held-out cases through the bundle's own ``inference.json`` + ``evaluate.json``, and writes
``docs/results/aortadiff.json`` (each run's configuration, seed, wall time, machine and metrics), the
sample figure ``docs/results/aortadiff_samples.png`` and the ``aortadiff`` section of ``docs/results.md``.

Models and rows are data: a model is a list of the bundle's delta configs (plus top-level overrides) for
training and for inference, a row is a model with sampler keys and inference overrides. A new variant
(another ablation, an uncertainty study) is one more entry in :data:`MODELS` and/or :data:`ROWS`.

Budget: ``--budget_minutes`` is compute on the idle 2-core CPU, not wall time (the machine may be shared):
the iterations per model follow from the idle-machine costs in :data:`IDLE_COST` (measured: about 0.3 s
per training iteration at batch 8 and 64 px, 0.011 s per network call per 64 px slice), so every model
gets the same training whatever the load while it runs. Every finished training and evaluation leaves a
record file in the work folder; a rerun skips them, so the budget can be spread over several runs.

Rows sampled with ``num_samples`` > 1 are the uncertainty study: before the held-out cases, the same
sampling runs on the validation cases, and the low-confidence threshold is set there at the fixed
false-alarm rate of :data:`UNCERTAINTY` (:func:`tools.aortadiff.uncertainty.threshold_at_false_alarm`); the
evaluation then reports Spearman correlations of the per-case scores with the errors and how many of the
worst held-out cases that threshold (and one set at the same false-alarm rate on the held-out cases
themselves) catches.

Options: ``--budget_minutes M`` (default 45), ``--seeds 0 1`` (default 0), ``--size cpu|paper``,
``--quick`` (tiny, for the test suite), ``--only ROW ...``, ``--iterations N`` (overrides the budget),
``--work_dir``, ``--results_dir``, ``--results_md``, ``--notes FILE`` (markdown appended to the section),
``--threads N`` (torch CPU threads), ``--name NAME`` (default ``aortadiff``: the results.md section and the
stem of the JSON / figure files, for a run of some rows reported beside the main table) and ``--heading``.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tools.experiments.report import RESULTS_MD, machine_info, repo_relative, write_json, write_section
from tools.experiments.runs import bundle_run, read_record, read_records

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "bundles" / "aortadiff_cect" / "configs"


# ---------------------------------------------------------------------------------------------- registry
@dataclass(frozen=True)
class Model:
    """A network to train: the delta configs over ``train.json`` and over ``inference.json`` + ``evaluate.json``."""

    description: str
    train_configs: tuple[str, ...] = ()
    infer_configs: tuple[str, ...] = ()
    overrides: dict[str, Any] = field(default_factory=dict)  # for training and inference alike
    makes_image: bool = True
    makes_segmentation: bool = True


@dataclass(frozen=True)
class Row:
    """One line of the table: a trained model, sampled by ``sampler`` ("fast" | "repaint" | None) with ``overrides``."""

    model: str
    label: str
    sampler: str | None = "fast"
    overrides: dict[str, Any] = field(default_factory=dict)


def _ablation(name: str, text: str) -> Model:
    return Model(text, (f"ablation_{name}.json",), (f"ablation_{name}.json",))


MODELS: dict[str, Model] = {
    "aortadiff": Model("two-head diffusion U-Net: LPIPS image loss, lumen SDF head, Kendall weights, aorta "
                       "restriction and fusion, labeled and unlabeled cases"),
    "cdm": Model("synthesis-only conditional diffusion model (image head only)", ("train_cdm.json",),
                 ("inference_cdm.json",), makes_segmentation=False),
    "seg_unet": Model("segmentation-only MONAI UNet, NCCT -> lumen / thrombus, labeled cases, Dice-CE",
                      ("train_seg_unet.json",), ("inference_seg_unet.json",), makes_image=False),
    "no_aorta_restriction": _ablation("no_aorta_restriction", "ablation: ROI = whole slice (no restriction, no fusion)"),
    "binary_mask": _ablation("binary_mask", "ablation: binary lumen mask instead of the SDF"),
    "labeled_only": _ablation("labeled_only", "ablation: labeled cases only"),
    "fixed_weights": _ablation("fixed_weights", "ablation: fixed loss weights (1, 1) instead of Kendall"),
    "mse_lpips": _ablation("mse_lpips", "ablation: MSE + LPIPS image loss"),
    "zero_lumen_labels": Model("AortaDiff trained with zero lumen labels: every training case's lumen target is a "
                               "pseudo-label from its CECT inside the aorta (Otsu, morphological cleaning)",
                               ("zero_lumen_labels.json",), ()),
}

ROWS: dict[str, Row] = {
    "aortadiff": Row("aortadiff", "AortaDiff (fast sampler)"),
    "aortadiff_repaint": Row("aortadiff", "AortaDiff (full RePaint)", "repaint"),
    "aortadiff_mean3": Row("aortadiff", "AortaDiff, mean of 3 samples", "fast", {"num_samples": 3}),
    "cdm": Row("cdm", "synthesis-only CDM"),
    "seg_unet": Row("seg_unet", "segmentation-only U-Net", None),
    "no_aorta_restriction": Row("no_aorta_restriction", "w/o aorta restriction / fusion"),
    "binary_mask": Row("binary_mask", "binary mask instead of SDF"),
    "labeled_only": Row("labeled_only", "labeled-only training"),
    "fixed_weights": Row("fixed_weights", "fixed instead of Kendall weights"),
    "mse_lpips": Row("mse_lpips", "MSE + LPIPS image loss"),
    "zero_lumen_labels": Row("zero_lumen_labels", "zero lumen labels"),
    "aortadiff_unc8": Row("aortadiff", "AortaDiff, 8 samples", "fast", {"num_samples": 8}),
}

#: the uncertainty study: per-case score, false-alarm rate of the validation-set threshold, "worst" cases
UNCERTAINTY = {"measure": "mask_entropy", "false_alarm_rate": 0.2, "worst_fraction": 0.3}
#: zero-label variant vs the semi-supervised model: (metric, +1 if higher is better)
ZERO_LABEL_METRICS = (("dice_lumen", 1), ("dice_thrombus", 1), ("diam_max_mae_mm", -1), ("thrombus_area_err_pct", -1))

# the paper's figures (AortaDiff with RePaint and its best baselines), placed beside the rows that correspond; the
# claims compare rows sampled alike (the fast sampler), RePaint is its own row
PAPER: dict[str, dict[str, float]] = {
    "aortadiff": {"psnr": 25.61, "dice_lumen": 0.89, "dice_thrombus": 0.53, "diam_max_mae_mm": 4.19,
                          "thrombus_area_err_pct": 33.85},
    "cdm": {"psnr": 23.80},
    "seg_unet": {"dice_lumen": 0.87, "dice_thrombus": 0.48, "diam_max_mae_mm": 5.78, "thrombus_area_err_pct": 41.45},
}

# claims: (text, metric, row, baseline row, +1 if higher is better else -1, paper's AortaDiff, paper's baseline)
CLAIMS = [
    ("AortaDiff synthesises a better CECT than the synthesis-only CDM (PSNR)", "psnr", "aortadiff", "cdm", 1,
     25.61, 23.80),
    ("AortaDiff segments the lumen better than the segmentation-only U-Net (lumen Dice)", "dice_lumen",
     "aortadiff", "seg_unet", 1, 0.89, 0.87),
    ("... and the thrombus (thrombus Dice)", "dice_thrombus", "aortadiff", "seg_unet", 1, 0.53, 0.48),
    ("... with a smaller lumen diameter error (MAE, mm)", "diam_max_mae_mm", "aortadiff", "seg_unet", -1,
     4.19, 5.78),
    ("... and a smaller thrombus area error (%)", "thrombus_area_err_pct", "aortadiff", "seg_unet", -1,
     33.85, 41.45),
]
ABLATION_METRICS = ("psnr_roi", "dice_lumen", "dice_thrombus")

METRICS = {  # name: (column title, format)
    "psnr": ("PSNR dB", "{:.2f}"), "ssim": ("SSIM", "{:.3f}"), "psnr_roi": ("PSNR ROI dB", "{:.2f}"),
    "ssim_roi": ("SSIM ROI", "{:.3f}"), "lpips_roi": ("LPIPS ROI", "{:.3f}"), "dice_lumen": ("Dice lumen", "{:.3f}"),
    "dice_thrombus": ("Dice thrombus", "{:.3f}"), "diam_max_mae_mm": ("diam. MAE mm", "{:.2f}"),
    "thrombus_area_err_pct": ("thr. area err %", "{:.1f}"),
}

# idle 2-core CPU costs at 64 px (docs/benchmarks.md: 0.29 s / iteration for this network at batch 8)
IDLE_COST = {"train_s_per_iteration": 0.30, "call_s_per_slice": 0.011}

SIZES: dict[str, dict[str, Any]] = {
    "cpu": {
        "configs": ("small.json",),
        "train_cases": 20, "phantom_size": 64, "phantom_slices": 12,
        "heldout": {"regular": 4, "thin_thrombus": 2, "calcified_wall": 2, "low_contrast": 2},
        "fast": {"sampler": "ddim", "num_inference_steps": 10},
        "repaint": {"sampler": "repaint", "num_inference_steps": 25, "jump_length": 5, "jump_n_sample": 2},
        "overrides": {"image_size": 64, "roi_margin": 3, "seg_channels": [16, 32, 64, 128], "batch_size": 8,
                      "val_slices_per_case": 2, "val_inference_steps": 5, "val_at_start": False,
                      "slice_batch_size": 64, "val_batch_size": 16},
        "cost_scale": 1.0,
    },
    "paper": {
        "configs": (),
        "train_cases": 60, "phantom_size": 256, "phantom_slices": 64,
        "heldout": {"regular": 10, "thin_thrombus": 4, "calcified_wall": 4, "low_contrast": 4},
        "fast": {"sampler": "ddim", "num_inference_steps": 50},
        "repaint": {"sampler": "repaint", "num_inference_steps": 1000, "jump_length": 10, "jump_n_sample": 2},
        "overrides": {"val_at_start": False},
        "iterations": 100000,
    },
    "quick": {
        "configs": ("small.json",),
        "train_cases": 4, "phantom_size": 32, "phantom_slices": 8,
        "heldout": {"regular": 1, "thin_thrombus": 1, "low_contrast": 1},
        "fast": {"sampler": "ddim", "num_inference_steps": 2},
        "repaint": {"sampler": "repaint", "num_inference_steps": 3, "jump_length": 1, "jump_n_sample": 2},
        "overrides": {"image_size": 32, "roi_margin": 2, "network_channels": [8, 16], "attention_levels": [False, True],
                      "num_head_channels": 8, "seg_channels": [8, 16], "seg_strides": [2], "batch_size": 2,
                      "val_slices_per_case": 1, "val_inference_steps": 2, "val_at_start": False, "ema_warmup_iters": 1,
                      "slice_batch_size": 8, "val_batch_size": 2, "preview": False},
        "iterations": 2,
    },
}


# ---------------------------------------------------------------------------------------------- planning
def plan_iterations(size: dict, rows: list[str], n_seeds: int, budget_minutes: float) -> tuple[int, dict]:
    """Iterations per model so that training + evaluation of ``rows`` for ``n_seeds`` seeds costs
    ``budget_minutes`` on the idle machine; returns (iterations, the estimate's parts in seconds)."""
    if "iterations" in size:
        return int(size["iterations"]), {"fixed": True}
    slices = sum(size["heldout"].values()) * size["phantom_slices"]
    calls = 0
    for name in rows:
        row = ROWS[name]
        if row.sampler == "repaint":
            from tools.aortadiff.inferers import count_denoising_calls, repaint_schedule

            r = size["repaint"]
            calls += count_denoising_calls(repaint_schedule(r["num_inference_steps"], r["jump_length"], r["jump_n_sample"]))
        elif row.sampler == "fast":
            calls += size["fast"]["num_inference_steps"] * int(row.overrides.get("num_samples", 1))
    infer_s = calls * slices * IDLE_COST["call_s_per_slice"]
    n_models = len({ROWS[r].model for r in rows})
    train_s = budget_minutes * 60.0 / n_seeds - infer_s
    iterations = int(train_s / (n_models * IDLE_COST["train_s_per_iteration"]))
    if iterations < 20:
        raise ValueError(f"--budget_minutes {budget_minutes}: evaluation alone needs about {infer_s * n_seeds / 60:.1f} "
                         f"idle minutes, leaving {iterations} iterations per model (need >= 20); raise the budget")
    iterations = iterations // 10 * 10
    return iterations, {"inference_s_per_seed": round(infer_s, 1), "models": n_models,
                        "train_s_per_seed": round(n_models * iterations * IDLE_COST["train_s_per_iteration"], 1)}


# ---------------------------------------------------------------------------------------------- data
def prepare_data(work: Path, size: dict) -> Path:
    """Training / validation phantoms and the held-out cases, in one datalist with absolute paths."""
    from tools.data.datalist import load_datalist
    from tools.data.phantoms import ensure_phantoms
    from tools.data.phantoms_aaa import write_heldout

    train_dl = ensure_phantoms("aaa", work / "data" / "train", cases=size["train_cases"], seed=0,
                               size=size["phantom_size"], slices=size["phantom_slices"])
    test_dl = write_heldout(work / "data" / "heldout", size["heldout"], seed=0, size=size["phantom_size"],
                            slices=size["phantom_slices"])
    combined = {split: load_datalist(train_dl, split) for split in ("training", "validation")}
    combined["test"] = load_datalist(test_dl, "test")
    path = work / "data" / "datalist.json"
    write_json(path, combined)
    return path


# ---------------------------------------------------------------------------------------------- runs
def train_model(name: str, seed: int, common: dict, size: dict, iterations: int, work: Path) -> dict:
    """Train ``name`` for ``seed`` unless its record exists; return the record."""
    folder = work / "models" / f"{name}_s{seed}"
    record_file = folder / "train_record.json"
    done = read_record(record_file)
    if done is not None:
        return done
    model = MODELS[name]
    configs = ["train.json", *model.train_configs, *size["configs"]]
    overrides = {**common, **size["overrides"], **model.overrides, "seed": seed, "iterations": iterations,
                 "val_interval": iterations, "lr_step_size": max(1, iterations // 2),
                 "ckpt_dir": str(folder), "output_dir": str(work / "train" / f"{name}_s{seed}"), "overwrite": True}
    logger.info("training %s (seed %d, %d iterations)", name, seed, iterations)
    wall = bundle_run(CONFIGS, "training", configs, **overrides)
    record = {"model": name, "seed": seed, "iterations": iterations, "configs": configs, "overrides": overrides,
              "wall_time_s": round(wall, 1), "machine": machine_info()}
    write_json(record_file, record)
    return record


def evaluate_row(name: str, seed: int, common: dict, size: dict, work: Path, train_record: dict) -> dict:
    """Inference + evaluation of row ``name`` for ``seed`` unless its record exists; return the record."""
    record_file = work / "results" / f"{name}_s{seed}.json"
    done = read_record(record_file)
    if done is not None:
        return done
    row = ROWS[name]
    model = MODELS[row.model]
    out = work / "eval" / f"{name}_s{seed}"
    configs = ["inference.json", "evaluate.json", *model.infer_configs, *size["configs"]]
    sampler = size[row.sampler] if row.sampler else {}
    overrides = {**common, **size["overrides"], **model.overrides, **sampler, **row.overrides, "seed": seed,
                 "ckpt_dir": train_record["overrides"]["ckpt_dir"], "output_dir": str(out), "progress": False,
                 "overwrite": True, "image_metrics": model.makes_image, "segmentation_metrics": model.makes_segmentation}
    calibration = None
    if int(overrides.get("num_samples", 1)) > 1:
        calibration = calibrate_on_validation(configs, overrides, out.parent / f"{name}_s{seed}_validation")
        overrides.update(uncertainty_measure=UNCERTAINTY["measure"], uncertainty_threshold=calibration["threshold"],
                         uncertainty_false_alarm_rate=UNCERTAINTY["false_alarm_rate"],
                         uncertainty_worst_fraction=UNCERTAINTY["worst_fraction"])
    logger.info("evaluating %s (seed %d)", name, seed)
    wall = bundle_run(CONFIGS, "evaluate", configs, **overrides)
    summary = json.loads((out / "metrics_summary.json").read_text())
    with open(out / "metrics_per_case.csv") as f:
        cases = [{k: _num(v) for k, v in r.items()} for r in csv.DictReader(f)]
    heldout = {e["case_id"]: e.get("kind", "regular") for e in json.loads(Path(common["datalist"]).read_text())["test"]}
    for c in cases:
        c["kind"] = heldout.get(c["case_id"], "regular")
    record = {"row": name, "label": row.label, "model": row.model, "seed": seed, "iterations": train_record["iterations"],
              "configs": configs, "overrides": overrides, "wall_time_s": {"train": train_record["wall_time_s"],
                                                                          "evaluate": round(wall, 1)},
              "machine": machine_info(), "metrics": summary["mean"], "lpips": summary["lpips"],
              "uncertainty": summary["uncertainty"], "calibration": calibration, "per_case": cases}
    write_json(record_file, record)
    return record


def calibrate_on_validation(configs: list[str], overrides: dict, out: Path) -> dict:
    """Sample the validation cases as ``overrides`` sample the held-out ones; return the low-confidence
    threshold at :data:`UNCERTAINTY`'s false-alarm rate over their per-case scores (and the scores)."""
    record_file = out / "calibration.json"
    done = read_record(record_file)
    if done is not None:
        return done
    configs = [c for c in configs if c != "evaluate.json"]
    over = {**overrides, "inference_split": "validation", "output_dir": str(out), "prediction_dir": str(out),
            "uncertainty_measure": UNCERTAINTY["measure"]}
    for k in ("image_metrics", "segmentation_metrics"):
        over.pop(k, None)
    t0 = time.perf_counter()
    bundle_run(CONFIGS, "inference", configs, **over)
    record = calibration_record(out, time.perf_counter() - t0)
    write_json(record_file, record)
    return record


def calibration_record(out: Path, wall_s: float | None = None) -> dict:
    """The threshold at :data:`UNCERTAINTY`'s false-alarm rate over the per-case scores inference wrote into ``out``."""
    from tools.aortadiff.uncertainty import read_scores, threshold_at_false_alarm

    scores = read_scores(out, UNCERTAINTY["measure"])
    return {"split": "validation", "measure": UNCERTAINTY["measure"], "false_alarm_rate": UNCERTAINTY["false_alarm_rate"],
            "scores": scores, "threshold": threshold_at_false_alarm(list(scores.values()), UNCERTAINTY["false_alarm_rate"]),
            "wall_time_s": None if wall_s is None else round(wall_s, 1)}


def pseudo_label_quality(entries: list[dict]) -> list[dict]:
    """Dice of the CECT pseudo-labels (:func:`tools.aortadiff.pseudo_lumen.pseudo_lumen`, the zero-label
    variant's training targets) against the reference lumen / thrombus, per labeled case."""
    import nibabel as nib

    from tools.aortadiff.pseudo_lumen import pseudo_lumen
    from tools.metrics.overlap import mask_dice

    out = []
    for e in entries:
        if not e.get("lumen"):
            continue
        cect = np.asarray(nib.load(str(e["cect"])).dataobj, np.float32)
        aorta = np.asarray(nib.load(str(e["aorta"])).dataobj) > 0
        lumen = np.asarray(nib.load(str(e["lumen"])).dataobj) > 0
        ncct = np.asarray(nib.load(str(e["ncct"])).dataobj, np.float32)
        p = pseudo_lumen(cect, aorta, ncct)  # as configs/zero_lumen_labels.json makes them
        out.append({"case_id": Path(str(e["case_id"])).name, "kind": e.get("kind", "regular"),
                    "dice_lumen": mask_dice(p, lumen), "dice_thrombus": mask_dice(aorta & ~p, aorta & ~lumen)})
    return out


def _num(v: str) -> Any:
    try:
        x = float(v)
    except (TypeError, ValueError):
        return v
    return None if math.isnan(x) else x


# ---------------------------------------------------------------------------------------------- report
def aggregate(records: list[dict]) -> dict:
    """Per row and metric: mean, sample std and n over all (case, seed) values; per-seed means."""
    rows: dict[str, dict] = {}
    for rec in records:
        rows.setdefault(rec["row"], {"label": rec["label"], "values": {}, "seeds": {}})
        entry = rows[rec["row"]]
        for m in METRICS:
            vals = [c[m] for c in rec["per_case"] if isinstance(c.get(m), float)]
            entry["values"].setdefault(m, []).extend(vals)
            entry["seeds"].setdefault(m, {})[rec["seed"]] = float(np.mean(vals)) if vals else None
    out = {}
    for name, entry in rows.items():
        stats = {}
        for m, vals in entry["values"].items():
            if vals:
                stats[m] = {"mean": float(np.mean(vals)), "std": float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0,
                            "n": len(vals), "per_seed": entry["seeds"][m]}
        out[name] = {"label": entry["label"], "metrics": stats}
    return out


def paired_difference(records: list[dict], row: str, base: str, metric: str) -> dict | None:
    """Mean and standard error of the per-(case, seed) difference ``row - base`` of ``metric``."""
    def values(name):
        return {(r["seed"], c["case_id"]): c.get(metric) for r in records if r["row"] == name for c in r["per_case"]}

    a, b = values(row), values(base)
    d = [a[k] - b[k] for k in a if isinstance(a[k], float) and isinstance(b.get(k), float)]
    if len(d) < 2:
        return None
    return {"mean": float(np.mean(d)), "se": float(np.std(d, ddof=1) / np.sqrt(len(d))), "n": len(d)}


def verdict(diff: dict | None, sign: int, paper_diff: float | None = None) -> str:
    """``diff`` of a better-is-``sign`` metric: reproduced when in the paper's direction by more than two standard
    errors (and, given the paper's difference, by at least a tenth of it)."""
    if diff is None:
        return "not measured"
    better = diff["mean"] * sign > 0
    clear = abs(diff["mean"]) > 2 * diff["se"]
    if better and clear and paper_diff and abs(diff["mean"]) < 0.1 * abs(paper_diff):
        return "same direction, but under a tenth of the paper's difference"
    if better and clear:
        return "reproduced"
    if better:
        return "same direction, but within two standard errors"
    return "not reproduced (opposite direction)" if clear else "not reproduced (no clear difference)"


def _fmt(stat: dict | None, fmt: str) -> str:
    if not stat:
        return "—"
    return f"{fmt.format(stat['mean'])} ± {fmt.format(stat['std'])}"


def _rho(u: dict | None) -> str:
    return f"{u['rho']:+.2f} (p = {u['p']:.2f})" if u else "—"


def zero_label_lines(records: list[dict], agg: dict, pseudo: list[dict] | None) -> list[str]:
    """The zero-label variant against the semi-supervised AortaDiff (paired over cases and seeds)."""
    if not ("zero_lumen_labels" in agg and "aortadiff" in agg):
        return []
    lines = ["", "Zero lumen labels vs the semi-supervised AortaDiff (same sampler, same held-out cases; difference "
             "zero-label - semi-supervised, paired over cases and seeds, mean ± standard error):", ""]
    for m, sign in ZERO_LABEL_METRICS:
        d = paired_difference(records, "zero_lumen_labels", "aortadiff", m)
        if d is None:
            continue
        clear = abs(d["mean"]) > 2 * d["se"]
        word = ("no clear difference" if not clear else "zero-label better" if d["mean"] * sign > 0
                else "zero-label worse")
        lines.append(f"- {METRICS[m][0]}: {agg['aortadiff']['metrics'][m]['mean']:{METRICS[m][1][2:-1]}} (semi-supervised) "
                     f"vs {agg['zero_lumen_labels']['metrics'][m]['mean']:{METRICS[m][1][2:-1]}} (zero-label): "
                     f"{d['mean']:+.3g} ± {d['se']:.2g} (n = {d['n']}): **{word}**")
    if pseudo:
        dl = [c["dice_lumen"] for c in pseudo]
        dt = [c["dice_thrombus"] for c in pseudo if not math.isnan(c["dice_thrombus"])]
        worst = min(pseudo, key=lambda c: c["dice_lumen"])
        lines += ["", f"The pseudo-labels themselves (Otsu inside the aorta on the enhancement CECT - NCCT of the "
                  f"real pair, cleaned: what the zero-label model trains on) against the reference on the {len(pseudo)} held-out cases: lumen Dice "
                  f"{np.mean(dl):.3f} (min {worst['dice_lumen']:.3f}, {worst['kind']}), thrombus Dice {np.mean(dt):.3f}."]
    return lines


def uncertainty_lines(records: list[dict]) -> list[str]:
    """The uncertainty study of every row sampled with num_samples > 1."""
    lines = []
    names = {"dice_lumen_error": "1 - Dice lumen", "dice_thrombus_error": "1 - Dice thrombus",
             "diam_max_mae_mm": "diam. MAE"}
    for rec in records:
        u = rec.get("uncertainty") or {}
        if not u.get("n_cases_with_score"):
            continue
        n_s = rec["overrides"].get("num_samples")
        lines += ["", f"Uncertainty study, {ROWS[rec['row']].label if rec['row'] in ROWS else rec['label']} (seed {rec['seed']}, {n_s} samples per case, "
                  f"{u['n_cases_with_score']} held-out cases): Spearman rho (p) of the per-case score with the "
                  "per-case error.", ""]
        by = u.get("spearman_by_measure")
        if not by:  # a record made before both scores were kept
            lines.append(f"- score vs 1 - Dice lumen: {_rho(u.get('spearman_dice_lumen_error'))}; vs diameter MAE: "
                         f"{_rho(u.get('spearman_diam_max_mae_mm'))}")
            continue
        lines += ["| per-case score | " + " | ".join(names.values()) + " |", "|---|" + "---|" * len(names)]
        from tools.aortadiff.uncertainty import MEASURES

        for m in MEASURES:
            lines.append(f"| {m}{' (the flag' + chr(39) + 's score)' if m == u.get('measure') else ''}: "
                         f"{MEASURES[m]} | " + " | ".join(_rho(by.get(m, {}).get(e)) for e in names) + " |")
        cal = rec.get("calibration") or {}
        fa = u.get("flag_at_false_alarm_rate", {})
        ft = u.get("flag_at_threshold", {})
        lines += ["", f"Flag (score `{u.get('measure')}` above a threshold); worst cases = the "
                  f"{int(100 * u.get('worst_fraction', 0.3))} % largest errors:", ""]
        if cal:
            lines.append(f"- threshold set on the {len(cal['scores'])} validation cases at a false-alarm rate of "
                         f"{cal['false_alarm_rate']:g} (their scores {', '.join(f'{v:.3g}' for v in cal['scores'].values())}): "
                         f"{cal['threshold']:.3g}; on the held-out cases it flags {len(u.get('flagged_cases', []))} of "
                         f"{u['n_cases_with_score']}: " + "; ".join(
                             f"{names[e]}: {f['caught']} of the {f['n_worst']} worst caught, {f['false_alarms']} false alarms"
                             for e, f in ft.items() if "caught" in f))
        if fa:
            lines.append(f"- threshold set on the held-out cases themselves at a fixed false-alarm rate of "
                         f"{u.get('false_alarm_rate'):g} among the non-worst cases (a ranking measure, not a "
                         "deployable threshold): " + "; ".join(
                             f"{names[e]}: {f['caught']} of {f['n_worst']} worst caught ({f['false_alarms']} false "
                             f"alarms, threshold {f['threshold']:.3g})" for e, f in fa.items() if "caught" in f))
        scored = sorted((c for c in rec["per_case"] if isinstance(c.get("uncertainty_score"), float)),
                        key=lambda c: -c["uncertainty_score"])
        if scored:
            lines += ["", "Per case (sorted by score): " + "; ".join(
                f"{c['case_id']} {c['uncertainty_score']:.3g} / {c.get('unc_image_std_hu', float('nan')):.1f} HU "
                f"(Dice lumen {c.get('dice_lumen', float('nan')):.2f}, diam. MAE {c.get('diam_max_mae_mm', float('nan')):.1f} mm)"
                for c in scored) + "."]
    return lines


def markdown(payload: dict, figure: str | None, notes: str, heading: str = "## AortaDiff (aortadiff_cect)",
             uncertainty_figure: str | None = None) -> str:
    agg, records, setup = payload["aggregate"], payload["runs"], payload["setup"]
    lines = [heading, ""]
    lines.append(f"Command (last call): `{setup['command']}`. Seeds {setup['seeds']}; size `{setup['size']}`: "
                 f"{setup['data']}. Every model trained {setup['iterations']} iterations at batch "
                 f"{setup['batch_size']} ({setup['budget']}). Machine: {setup['machine']}. Wall time of all runs: "
                 f"{setup['wall_time_min']:.1f} min; load average while they ran: {setup['load']}.")
    lines.append("")
    lines.append("Mean ± standard deviation over held-out cases (and seeds); paper figures in brackets. "
                 "Image metrics on the HU window [-200, 600] mapped to [0, 1]; LPIPS: " + setup["lpips"] + ".")
    lines.append("")
    cols = list(METRICS)
    lines.append("| row | seeds | " + " | ".join(METRICS[m][0] for m in cols) + " |")
    lines.append("|---|---|" + "---|" * len(cols))
    for name, row in ROWS.items():
        if name not in agg:
            continue
        cells = []
        for m in cols:
            cell = _fmt(agg[name]["metrics"].get(m), METRICS[m][1])
            if m in PAPER.get(name, {}):
                cell += f" [{METRICS[m][1].format(PAPER[name][m])}]"
            cells.append(cell)
        seeds = ", ".join(str(r["seed"]) for r in records if r["row"] == name)
        lines.append(f"| {row.label} | {seeds} | " + " | ".join(cells) + " |")
    kinds = sorted({c["kind"] for r in records for c in r["per_case"]})
    if len(kinds) > 1:
        lines += ["", "By held-out kind (mean over cases and seeds): PSNR ROI dB / Dice lumen / Dice thrombus.", "",
                  "| row | " + " | ".join(kinds) + " |", "|---|" + "---|" * len(kinds)]
        for name, row in ROWS.items():
            cells = []
            for kind in kinds:
                vals = [[c.get(m) for r in records if r["row"] == name for c in r["per_case"] if c["kind"] == kind]
                        for m in ("psnr_roi", "dice_lumen", "dice_thrombus")]
                cells.append(" / ".join(f"{np.mean(v):.2f}" if v and all(isinstance(x, float) for x in v) else "—"
                                        for v in vals))
            if any(c != "— / — / —" for c in cells):
                lines.append(f"| {row.label} | " + " | ".join(cells) + " |")
    claims = [c for c in CLAIMS if c[2] in agg and c[3] in agg]
    if claims:
        lines += ["", "Claims (difference AortaDiff - baseline, paired over cases and seeds, mean ± standard error):", ""]
    for text, metric, row, base, sign, p_ours, p_base in claims:
        d = paired_difference(records, row, base, metric)
        measured = (f"{d['mean']:+.3g} ± {d['se']:.2g} (n = {d['n']}; {100 * d['mean'] / (p_ours - p_base):.0f} % of "
                    "the paper's difference)") if d else "not measured"
        lines.append(f"- {text}: paper {p_ours} vs {p_base} ({p_ours - p_base:+.3g}); here {measured}: "
                     f"**{verdict(d, sign, p_ours - p_base)}**.")
    sign_of = {"psnr_roi": 1, "dice_lumen": 1, "dice_thrombus": 1}
    abl = [n for n in ROWS if ROWS[n].model not in ("aortadiff", "cdm", "seg_unet", "zero_lumen_labels") and n in agg]
    if abl and "aortadiff" in agg:
        lines += ["", "Ablations against AortaDiff with the same sampler (AortaDiff - ablation, paired over the "
                  "cases and seeds both have; the paper finds each part helps):", ""]
        for n in abl:
            parts = []
            for m in ABLATION_METRICS:
                d = paired_difference(records, "aortadiff", n, m)
                if d:
                    parts.append(f"{METRICS[m][0]} {d['mean']:+.3g} ± {d['se']:.2g}: {verdict(d, sign_of[m])}")
            lines.append(f"- {ROWS[n].label}: " + "; ".join(parts))
    both = {r["seed"] for r in records if r["row"] == "aortadiff"} & {r["seed"] for r in records if r["row"] == "aortadiff_repaint"}
    speed = {n: [r["wall_time_s"]["evaluate"] for r in records if r["row"] == n and r["seed"] in both]
             for n in ("aortadiff", "aortadiff_repaint")}
    if both:
        lines += ["", f"Sampling time on the held-out cases (inference + evaluation, same model): fast sampler "
                  f"{np.mean(speed['aortadiff']):.0f} s, full RePaint {np.mean(speed['aortadiff_repaint']):.0f} s "
                  f"(ratio {np.mean(speed['aortadiff_repaint']) / np.mean(speed['aortadiff']):.1f}; seeds "
                  f"{sorted(both)}, loaded machine)."]
    lines += zero_label_lines(records, agg, payload.get("pseudo_label_quality"))
    lines += uncertainty_lines(records)
    if uncertainty_figure:
        lines += ["", f"![Uncertainty maps of held-out phantoms]({uncertainty_figure})", "",
                  "Uncertainty maps written beside the outputs (`std_hu.nii.gz`, `mask_entropy.nii.gz`) of the "
                  "held-out cases with the highest and the lowest score: real CECT with the reference lumen (red) "
                  "and thrombus (yellow), the synthetic CECT (mean of the samples) with the predicted ones, the "
                  "CECT std over the samples (HU) and the entropy of the samples' lumen / thrombus votes (bits), "
                  "aorta outline in cyan; score = mean entropy inside the aorta."]
    if figure:
        lines += ["", f"![AortaDiff variants on held-out phantoms]({figure})", "",
                  "Rows: held-out cases (kind in the label); columns: NCCT, real CECT with the reference lumen "
                  "(red) and thrombus (yellow), then each row's synthetic CECT with its predicted lumen and "
                  "thrombus (the CDM has no masks; the U-Net makes no image, its masks are drawn on the NCCT); "
                  "the slice with the most thrombus, cropped to 90 mm around the aorta."]
    if notes:
        lines += ["", notes.strip()]
    return "\n".join(lines)


def uncertainty_figure(records: list[dict], test_entries: list[dict], path: Path) -> Path | None:
    """Uncertainty maps of the held-out cases with the highest and the lowest score, of the first row sampled
    with num_samples > 1 (None when there is none)."""
    from tools.aortadiff.plots import uncertainty_png

    rec = next((r for r in records if (r.get("uncertainty") or {}).get("n_cases_with_score")), None)
    if rec is None:
        return None
    scored = sorted((c for c in rec["per_case"] if isinstance(c.get("uncertainty_score"), float)),
                    key=lambda c: -c["uncertainty_score"])
    pick = [scored[0]["case_id"], scored[-1]["case_id"]] if len(scored) > 1 else [scored[0]["case_id"]]
    by_id = {Path(str(e["case_id"])).name: e for e in test_entries}
    entries = [by_id[c] for c in pick if c in by_id and by_id[c].get("lumen")]
    if not entries:
        return None
    text = {c["case_id"]: f"score {c['uncertainty_score']:.3g}, Dice lumen {c.get('dice_lumen', float('nan')):.2f}"
            for c in scored}
    path.parent.mkdir(parents=True, exist_ok=True)
    uncertainty_png(entries, Path(rec["overrides"]["output_dir"]) / "predictions", path, text)
    return path


# ---------------------------------------------------------------------------------------------- main
def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tools.experiments aortadiff", description=__doc__.split("\n\n")[0])
    p.add_argument("--budget_minutes", type=float, default=45.0, help="idle 2-core CPU minutes for all runs")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--size", choices=("cpu", "paper"), default="cpu")
    p.add_argument("--quick", action="store_true", help="tiny sizes, 2 iterations: checks the code, not the claims")
    p.add_argument("--only", nargs="+", choices=list(ROWS), default=None, help="rows to run (default: all)")
    p.add_argument("--iterations", type=int, default=None, help="iterations per model (instead of the budget)")
    p.add_argument("--work_dir", default=None, help="default runs/experiments/aortadiff_<size>")
    p.add_argument("--results_dir", default=None, help="default docs/results (quick: <work_dir>/results_out)")
    p.add_argument("--results_md", default=None, help="default docs/results.md (quick: <work_dir>/results.md)")
    p.add_argument("--notes", default=None, help="markdown file appended to the section (the reading of the results)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's; 1 helps on a shared machine)")
    p.add_argument("--name", default="aortadiff", help="results.md section and stem of the JSON / figure files")
    p.add_argument("--heading", default="## AortaDiff (aortadiff_cect)", help="first line of the section")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(list(argv or []))
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    size_name = "quick" if args.quick else args.size
    size = SIZES[size_name]
    work = Path(args.work_dir or REPO / "runs" / "experiments" / f"aortadiff_{size_name}").resolve()  # datalist paths absolute
    results_dir = Path(args.results_dir or (work / "results_out" if args.quick else REPO / "docs" / "results"))
    results_md = Path(args.results_md or (work / "results.md" if args.quick else RESULTS_MD))
    rows = args.only or list(ROWS)
    if args.iterations is not None:
        iterations, estimate = args.iterations, {"fixed": True}
    else:
        iterations, estimate = plan_iterations(size, rows, len(args.seeds), args.budget_minutes)
    from tools.aortadiff.lpips_loss import backbone_weights_available

    lpips_pretrained = backbone_weights_available("squeeze") and size_name != "quick"
    datalist = prepare_data(work, size)
    common = {"datalist": str(datalist), "lpips_pretrained_backbone": lpips_pretrained, "num_workers": 0}
    t0 = time.perf_counter()
    records, loads = [], []
    for seed in args.seeds:
        trained: dict[str, dict] = {}
        for name in rows:
            model = ROWS[name].model
            if model not in trained:
                trained[model] = train_model(model, seed, common, size, iterations, work)
                loads.append(trained[model]["machine"].get("load_average_1_5_15"))
            records.append(evaluate_row(name, seed, common, size, work, trained[model]))
            loads.append(records[-1]["machine"].get("load_average_1_5_15"))
    # the report covers every finished run of this size and iteration count in the work folder, so runs spread
    # over several calls (e.g. a second seed for some rows) are reported together
    found = {(r["row"], r["seed"]): r for r in read_records(work / "results", "*_s*.json")
             if r.get("iterations") == iterations and r.get("row") in ROWS}
    found.update({(r["row"], r["seed"]): r for r in records})
    records = sorted(found.values(), key=lambda r: (list(ROWS).index(r["row"]), r["seed"]))
    wall_min = sum(r["wall_time_s"]["evaluate"] for r in records) / 60 + sum(
        {(r["model"], r["seed"]): r["wall_time_s"]["train"] for r in records}.values()) / 60
    load1 = [x[0] for x in loads if x]
    machine = machine_info()
    command = "python -m tools.experiments aortadiff " + shlex.join(argv or [])
    setup = {
        "command": command.strip(), "seeds": sorted({r["seed"] for r in records}), "size": size_name, "iterations": iterations,
        "batch_size": size["overrides"].get("batch_size", 16),
        "budget": ("iterations given" if estimate.get("fixed") else
                   f"budget {args.budget_minutes:g} idle-CPU minutes for {len(args.seeds)} seed(s), per seed "
                   f"{estimate['inference_s_per_seed']:.0f} s "
                   f"of sampling + {estimate['models']} models x {iterations} iterations x "
                   f"{IDLE_COST['train_s_per_iteration']} s"),
        "data": (f"{size['train_cases']} phantom cases (training / validation split, 25 % without lumen label), "
                 f"{sum(size['heldout'].values())} labeled held-out cases {size['heldout']}, "
                 f"{size['phantom_size']} px x {size['phantom_slices']} slices"),
        "machine": f"{machine['cpu']}, {machine['cores']} cores, torch {machine['torch']}, GPU {machine['gpu']}",
        "wall_time_min": wall_min,
        "load": (f"{min(load1):.1f}-{max(load1):.1f} (1-min averages at the end of each run)" if load1 else "n/a"),
        "lpips": ("ImageNet SqueezeNet backbone" if lpips_pretrained else
                  "not reported: the torchvision backbone weights are absent here, so training used lpips with a "
                  "random SqueezeNet backbone and its learned linear layers (not the published LPIPS)"),
        "models": {n: MODELS[n].description for n in {ROWS[r].model for r in rows}},
    }
    figure = None
    try:
        from tools.aortadiff.plots import variant_grid_png

        fig_path = results_dir / f"{args.name}_samples.png"
        results_dir.mkdir(parents=True, exist_ok=True)
        variant_grid_png(records, json.loads(datalist.read_text())["test"], fig_path,
                         {n: r.label for n, r in ROWS.items()},
                         [n for n, r in ROWS.items() if not MODELS[r.model].makes_segmentation])
        figure = str(fig_path.relative_to(results_md.parent)) if fig_path.is_relative_to(results_md.parent) \
            else str(fig_path)
    except ValueError as e:
        logger.warning("sample figure skipped: %s", e)
    test_entries = json.loads(datalist.read_text())["test"]
    unc_figure = uncertainty_figure(records, test_entries, results_dir / f"{args.name}_uncertainty.png")
    if unc_figure is not None:
        unc_figure = str(unc_figure.relative_to(results_md.parent)) if unc_figure.is_relative_to(results_md.parent) \
            else str(unc_figure)
    payload = {"paper": "AortaDiff (arXiv 2510.01498)", "setup": setup, "paper_figures": PAPER,
               "aggregate": aggregate(records), "runs": records}
    if any(r["model"] == "zero_lumen_labels" for r in records):
        payload["pseudo_label_quality"] = pseudo_label_quality(test_entries)
    write_json(results_dir / f"{args.name}.json", repo_relative(payload))
    notes = Path(args.notes).read_text() if args.notes else ""
    write_section(args.name, markdown(payload, figure, notes, args.heading, unc_figure), results_md)
    logger.info("AortaDiff comparison written to %s and %s (%.1f s this call)", results_dir / f"{args.name}.json",
                results_md, time.perf_counter() - t0)
    return 0
