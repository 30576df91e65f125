"""Abdomen (semantic synthesis): sampler settings side by side on one trained model and the same held-out slices.

Every setting is the bundle's ``sampler_def`` (:class:`tools.diffusion.learned_range_sampler.LearnedRangeSampler`
with the learned-range variance) of ``train.json`` + ``evaluate.json`` (+ the size delta) with only
``sampler`` and ``num_inference_steps`` changed; all run in one process on the same network, the same
held-out slices (``evaluate.json``'s slice choice of the ``split``: ``num_slices`` evenly spaced body slices)
and the same seed (the sampler draws its noise from a generator seeded with the config's ``seed``).

Quality, as ``evaluate.json`` measures it: PSNR and SSIM of the synthetic slice against the real one (both
mapped from [-1, 1] to [0, 1]), and the Dice of the downstream segmenter (``train_segmenter.json``'s
``segmenter_def`` with the weights of ``segmenter_checkpoint``) on the synthetic slice against the
conditioning organ map: per organ the mean over the slices where it is present, then the mean over organs
(the body class counts as background). Without a segmenter checkpoint the Dice is NaN and only PSNR decides.

Calls: counted by :class:`tools.bench.counting.CallCounter` on the held-out slices (one network batch), and
per 100-slice volume through ``inference.json``'s ``inferer`` (:func:`tools.bench.calls.abdomen_volume_calls`).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.data import list_data_collate
from monai.metrics import DiceMetric, PSNRMetric, SSIMMetric

from tools.bench.calls import abdomen_volume_calls, bundle_parser
from tools.bench.counting import CallCounter
from tools.engines import checkpoint_io

__all__ = ["BUNDLE", "PAPER_SAMPLER", "SAMPLERS", "QUICK_SAMPLERS", "QUICK", "eval_batch", "load_models",
           "compare_samplers", "choose_fastest", "run"]

BUNDLE = "abdomen_semantic_synthesis"
#: the paper's sampler: ancestral DDPM over all 1000 training timesteps with the learned-range variance
PAPER_SAMPLER = {"sampler": "ddpm", "num_inference_steps": 1000}
SAMPLERS: dict[str, dict[str, Any]] = {
    "DDPM 1000 (paper)": PAPER_SAMPLER,
    "DDPM 100": {"sampler": "ddpm", "num_inference_steps": 100},
    "DDIM 100": {"sampler": "ddim", "num_inference_steps": 100},
    "DDIM 50": {"sampler": "ddim", "num_inference_steps": 50},
    "DDIM 25": {"sampler": "ddim", "num_inference_steps": 25},
    "DDIM 10": {"sampler": "ddim", "num_inference_steps": 10},
    "DDIM 5": {"sampler": "ddim", "num_inference_steps": 5},
    "DDIM 2": {"sampler": "ddim", "num_inference_steps": 2},
    "DDIM 1 (x0 at t = T-1)": {"sampler": "ddim", "num_inference_steps": 1},
}
QUICK_SAMPLERS: dict[str, dict[str, Any]] = {
    "DDPM 10": {"sampler": "ddpm", "num_inference_steps": 10},
    "DDIM 2": {"sampler": "ddim", "num_inference_steps": 2},
    "DDIM 1 (x0 at t = T-1)": {"sampler": "ddim", "num_inference_steps": 1},
}
#: tiny sizes for ``--quick`` (over train.json; no small.json)
QUICK = {"phantom_cases": 3, "phantom_size": 32, "phantom_slices": 8, "image_size": 32, "channels": [8, 16],
         "attention_levels": [False, True], "num_res_blocks": 1, "norm_num_groups": 8, "num_head_channels": 8,
         "segmenter_channels": [8, 16, 16, 16], "num_workers": 0}


def eval_batch(parser: Any, split: str, num_slices: int) -> dict[str, torch.Tensor]:
    """The held-out slices of ``split`` as one batch (``image`` (N, 1, S, S) in [-1, 1], ``label`` one-hot)."""
    parser["eval_split"] = split
    parser["num_eval_slices"] = num_slices
    files = parser.get_parsed_content("evaluation#files")
    if not files:
        raise ValueError(f"tools.bench: no body slices in split {split!r} of {parser['datalist']}")
    transform = parser.get_parsed_content("validate#preprocessing")
    return list_data_collate([transform(f) for f in files])


def load_models(parser: Any, ckpt_dir: str | None,
                segmenter_checkpoint: str | None = None) -> tuple[torch.nn.Module, torch.nn.Module | None, str]:
    """The diffusion network (``<ckpt_dir>/model.pt``; untrained without ``ckpt_dir``) and the segmenter
    (``segmenter_checkpoint``, by default ``<ckpt_dir>/segmenter.pt`` when present), and a description of the
    model. The results experiment keeps its segmenter apart from the method's checkpoints
    (``<work_dir>/segmenter_seed<s>/models/segmenter.pt``), hence the separate path."""
    device = parser.get_parsed_content("device")
    network = parser.get_parsed_content("network")
    if not ckpt_dir:
        return network.eval(), None, "untrained network"
    model = Path(ckpt_dir) / "model.pt"
    if not model.is_file():
        raise FileNotFoundError(f"tools.bench: --abdomen_ckpt_dir {ckpt_dir} has no model.pt")
    network = checkpoint_io.load_network(network, model, device)
    if segmenter_checkpoint and not Path(segmenter_checkpoint).is_file():
        raise FileNotFoundError(f"tools.bench: --abdomen_segmenter {segmenter_checkpoint} not found")
    seg_file = Path(segmenter_checkpoint) if segmenter_checkpoint else Path(ckpt_dir) / "segmenter.pt"
    segmenter = None
    if seg_file.is_file():
        segmenter = checkpoint_io.load_network(parser.get_parsed_content("segmenter_def"), seg_file, device)
    return network, segmenter, str(model) + (f", segmenter {seg_file}" if segmenter is not None else ", no segmenter")


def _organ_target(onehot: torch.Tensor, body_id: int) -> torch.Tensor:
    lab = onehot.argmax(1, keepdim=True)
    return torch.where(lab == body_id, torch.zeros_like(lab), lab)


def segmenter_dice(segmenter: torch.nn.Module, images: torch.Tensor, onehot: torch.Tensor) -> float:
    """Mean over organs of the per-organ Dice (mean over the slices where the organ is present) of
    ``segmenter``'s argmax on ``images`` against the organ map of ``onehot`` (body = last class = background)."""
    with torch.no_grad():
        logits = segmenter(images.float())
    n = logits.shape[1]
    target = _organ_target(onehot, onehot.shape[1] - 1)
    pred = F.one_hot(logits.argmax(1), n).permute(0, 3, 1, 2).float()
    tgt = F.one_hot(target[:, 0].long().clamp(0, n - 1), n).permute(0, 3, 1, 2).float()
    metric = DiceMetric(include_background=False, reduction="none", ignore_empty=True)
    metric(y_pred=pred, y=tgt)
    per_slice = metric.aggregate().cpu().numpy()  # (N, n - 1), NaN where the organ is absent
    present = np.isfinite(per_slice).any(0)
    if not present.any():
        return float("nan")
    return float(np.mean(np.nanmean(per_slice[:, present], axis=0)))


def compare_samplers(network: torch.nn.Module, segmenter: torch.nn.Module | None, parser: Any,
                     samplers: Mapping[str, Mapping[str, Any]], batch: Mapping[str, torch.Tensor],
                     volume_slices: int = 100, volume_overrides: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """One row per sampler setting: calls (held-out slices and per volume), seconds, PSNR, SSIM, segmenter Dice."""
    device = next(network.parameters()).device
    real = batch["image"].to(device).float()
    onehot = batch["label"].to(device).float()
    counter = CallCounter(network)
    rows = []
    for name, keys in samplers.items():
        parser["sampler_def#sampler"] = keys["sampler"]
        parser["sampler_def#num_inference_steps"] = int(keys["num_inference_steps"])
        parser["sampler_def#progress"] = False
        sampler = parser.get_parsed_content("sampler_def")
        counter.reset()
        t0 = time.perf_counter()
        with torch.no_grad():
            fake = sampler(onehot, counter).float()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - t0
        fake01, real01 = (fake.clamp(-1, 1) + 1) / 2, (real + 1) / 2
        psnr = PSNRMetric(max_val=1.0)(fake01, real01)
        ssim = SSIMMetric(spatial_dims=2, data_range=1.0)(fake01, real01)
        row = {"setting": name, **keys, "eval_slices": int(real.shape[0]), "eval_calls": counter.calls,
               "eval_seconds": seconds, "psnr": float(psnr.mean()), "ssim": float(ssim.mean()),
               "dice": segmenter_dice(segmenter, fake, onehot) if segmenter is not None else float("nan"),
               "calls_per_100_slice_volume": abdomen_volume_calls({**(volume_overrides or {}), **keys},
                                                                  slices=volume_slices)["calls"]}
        rows.append(row)
    if segmenter is not None:
        rows.append({"setting": "real slices (segmenter reference)", "sampler": None, "num_inference_steps": None,
                     "eval_slices": int(real.shape[0]), "eval_calls": 0, "eval_seconds": 0.0, "psnr": float("inf"),
                     "ssim": 1.0, "dice": segmenter_dice(segmenter, real, onehot), "calls_per_100_slice_volume": 0,
                     "reference_only": True})
    return rows


def choose_fastest(rows: Sequence[Mapping[str, Any]], reference: str, psnr_tol: float = 0.5,
                   dice_tol: float = 0.01) -> Mapping[str, Any] | None:
    """The sampler row with the fewest calls per volume whose PSNR is within ``psnr_tol`` dB and whose
    segmenter Dice is within ``dice_tol`` of (or above) the ``reference`` row's (Dice ignored when NaN)."""
    ref = next((r for r in rows if r["setting"] == reference), None)
    if ref is None:
        return None

    def ok(r: Mapping[str, Any]) -> bool:
        if r.get("reference_only") or r["psnr"] < ref["psnr"] - psnr_tol:
            return False
        return bool(np.isnan(ref["dice"]) or r["dice"] >= ref["dice"] - dice_tol)

    return min((r for r in rows if ok(r)), key=lambda r: r["calls_per_100_slice_volume"], default=None)


def run(quick: bool = False, ckpt_dir: str | None = None, datalist: str | None = None, split: str = "test",
        num_slices: int | None = None, model_configs: Sequence[str] = ("small.json",), tmp: str | None = None,
        samplers: Mapping[str, Mapping[str, Any]] | None = None, segmenter: str | None = None) -> dict[str, Any]:
    """The abdomen comparison: ``train.json`` + ``evaluate.json`` + ``model_configs`` (``--quick``: tiny keys,
    phantoms in ``tmp``, untrained network), the model of ``ckpt_dir`` (and the segmenter of ``segmenter``, by
    default ``<ckpt_dir>/segmenter.pt``), ``num_slices`` held-out slices."""
    overrides: dict[str, Any] = {"fid_network": None}
    files = ["train.json", "evaluate.json", *([] if quick else model_configs)]
    if quick:
        overrides.update(QUICK, dataset_dir=f"{tmp}/abdomen_phantoms")
    if datalist:
        if not Path(datalist).is_file():
            raise FileNotFoundError(f"tools.bench: --abdomen_datalist {datalist} not found")
        overrides["datalist"] = str(Path(datalist).resolve())
    parser = bundle_parser(BUNDLE, files, overrides)
    samplers = samplers or (QUICK_SAMPLERS if quick else SAMPLERS)
    reference = next(iter(samplers))
    batch = eval_batch(parser, split, num_slices or (2 if quick else 16))
    network, seg_net, model = load_models(parser, ckpt_dir, segmenter)
    rows = compare_samplers(network, seg_net, parser, samplers, batch)
    best = choose_fastest(rows, reference)
    return {"model": f"{model} ({' + '.join(files)})", "reference": reference,
            "eval": f"{split} split, {rows[0]['eval_slices']} evenly spaced body slices (evaluate.json's choice)",
            "samplers": rows, "fastest_within_tolerance": best["setting"] if best else None}
