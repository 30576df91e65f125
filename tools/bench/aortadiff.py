"""AortaDiff: sampler settings side by side on one model, and the bundle's training step against the bare one.

Samplers (:func:`compare_samplers`): every setting runs on the same network, the same held-out ROI slices
(``slices_per_case`` evenly spaced slices with aorta of every case of one split, the validation slice
choice of ``train.json``) and the same seed, in one process, so the numbers compare as ratios. Each
setting is built from ``inference.json``'s ``inferer`` with its sampler keys overridden, and decoded with
``train.json``'s ``validate#postprocessing`` (the bundle's lumen/thrombus decoding). Quality: ROI PSNR and
ROI SSIM of the fused image against the CECT (window units, data range 2), lumen and thrombus Dice per case
(over its slices), means over slices and cases. Seconds for a 100-slice volume (every slice with aorta,
made by repeating the held-out ROI slices) are measured for settings of at most ``max_timed_calls``
calls per volume and otherwise estimated from the measured seconds per call (marked).

Training (:func:`training_step_speed`): ``train.json``'s ``train#trainer`` runs ``iterations`` iterations
(data loading, loss terms, EMA, logging handlers and all); the bare step is the same network definition's
forward + MSE + backward + optimiser step on a batch held in memory, with the same device, autocast and
optimiser settings, run once after every bundle iteration so both see the same machine load; medians
after ``warmup`` iterations.
"""

from __future__ import annotations

import copy
import math
import resource
import tempfile
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from ignite.engine import Events
from monai.data import list_data_collate

from tools.bench.calls import bundle_parser
from tools.bench.counting import CallCounter
from tools.engines import checkpoint_io
from tools.metrics.overlap import mask_dice
from tools.metrics.roi_image_quality import roi_psnr, roi_ssim

__all__ = ["PAPER_SAMPLER", "SAMPLERS", "QUICK_SAMPLERS", "load_network", "eval_slices", "compare_samplers",
           "training_step_speed", "choose_fastest", "peak_memory_mb"]

BUNDLE = "aortadiff_cect"
# the paper's sampler: RePaint over all 1000 training timesteps, jump length 10, 2 samples per jump (1,990 calls)
PAPER_SAMPLER = {"sampler": "repaint", "num_inference_steps": 1000, "jump_length": 10, "jump_n_sample": 2}
SAMPLERS: dict[str, dict[str, Any]] = {
    "RePaint 1000, jump 10 x 2 (paper)": PAPER_SAMPLER,
    "DDIM 50": {"sampler": "ddim", "num_inference_steps": 50},
    "DDIM 10": {"sampler": "ddim", "num_inference_steps": 10},
    "DDIM 4": {"sampler": "ddim", "num_inference_steps": 4},
    "DDIM 2": {"sampler": "ddim", "num_inference_steps": 2},
    "DDIM 1 (x0 at t = T-1)": {"sampler": "ddim", "num_inference_steps": 1},
}
QUICK_SAMPLERS: dict[str, dict[str, Any]] = {
    "RePaint 10, jump 5 x 2": {"sampler": "repaint", "num_inference_steps": 10, "jump_length": 5, "jump_n_sample": 2},
    "DDIM 2": {"sampler": "ddim", "num_inference_steps": 2},
    "DDIM 1 (x0 at t = T-1)": {"sampler": "ddim", "num_inference_steps": 1},
}


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory in MiB: CUDA ``max_memory_allocated`` on a GPU, else the process's peak resident set."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def load_network(parser: Any, checkpoint: str | None) -> torch.nn.Module:
    """The config's ``network`` with the EMA weights (``model``) of ``checkpoint`` (a plain state dict also works)."""
    net = parser.get_parsed_content("network")
    if checkpoint:
        return checkpoint_io.load_network(net, checkpoint, parser.get_parsed_content("device"))
    return net.eval()


def eval_slices(train_parser: Any, split: str, slices_per_case: int) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Held-out slices as one batch (``image`` (N, 2, H, W) = NCCT + ROI, ``cect``, ``aorta``, ``lumen``, ``roi``)
    and the case id of every slice: ``slices_per_case`` evenly spaced labelled slices with aorta per case."""
    train_parser["validate#volumes"] = (f"$tools.data.datalist.load_datalist(@datalist, '{split}', "
                                        "required_keys=['ncct', 'cect', 'aorta', 'lumen'])")
    train_parser["val_slices_per_case"] = slices_per_case
    files = train_parser.get_parsed_content("validate#files")
    if not files:
        raise ValueError(f"tools.bench: no labelled slices with aorta in split {split!r} of {train_parser['datalist']}")
    transform = train_parser.get_parsed_content("validate#preprocessing")
    batch = list_data_collate([transform(f) for f in files])
    return batch, [str(f.get("case_id", "")) for f in files]


def _metrics(batch: Mapping[str, torch.Tensor], cases: Sequence[str], pred: torch.Tensor, post: Any) -> dict[str, float]:
    keys = ("ncct", "cect", "aorta", "lumen", "roi")
    items = [post({**{k: batch[k][i] for k in keys}, "pred": pred[i]}) for i in range(pred.shape[0])]
    image = torch.stack([d["pred_image_unit"] for d in items])
    cect, roi = batch["cect"], batch["roi"]
    lumen_p = np.stack([np.asarray(d["pred_lumen"]) for d in items])
    thr_p = np.stack([np.asarray(d["pred"][2]) for d in items])  # one-hot label map: channel 2 = thrombus
    lumen_g = np.stack([np.asarray(d["gt_lumen"]) for d in items])
    thr_g = np.stack([np.asarray(d["gt_label"][2]) for d in items])
    by_case: dict[str, list[int]] = {}
    for i, c in enumerate(cases):
        by_case.setdefault(c, []).append(i)
    lumen_dice = [mask_dice(lumen_p[idx], lumen_g[idx]) for idx in by_case.values()]
    thr_dice = [mask_dice(thr_p[idx], thr_g[idx]) for idx in by_case.values()]
    return {"roi_psnr": float(torch.nanmean(roi_psnr(image, cect, roi, data_range=2.0))),
            "roi_ssim": float(torch.nanmean(roi_ssim(image, cect, roi, data_range=2.0))),
            "lumen_dice": float(np.nanmean(lumen_dice)), "thrombus_dice": float(np.nanmean(thr_dice))}


def _autocast(parser: Any, device: torch.device):
    amp = bool(parser.get_parsed_content("amp")) and device.type == "cuda"
    return torch.autocast(device.type, dtype=parser.get_parsed_content("amp_dtype"), enabled=amp)


def _timed_inference(inferer: Any, inputs: torch.Tensor, network: torch.nn.Module, parser: Any,
                     device: torch.device) -> tuple[torch.Tensor, float]:
    """``inferer(inputs, network)`` under no_grad and the config's autocast; returns (output, wall seconds)."""
    with torch.no_grad(), _autocast(parser, device):
        _sync(device)
        t0 = time.perf_counter()
        out = inferer(inputs, network)
        _sync(device)
    return out, time.perf_counter() - t0


def compare_samplers(network: torch.nn.Module, train_parser: Any, samplers: Mapping[str, Mapping[str, Any]],
                     inference_files: Sequence[str], inference_overrides: Mapping[str, Any], split: str = "test",
                     slices_per_case: int = 8, volume_slices: int = 100, max_timed_calls: int = 200,
                     volume_calls: Mapping[str, int] | None = None) -> list[dict[str, Any]]:
    """One row per sampler setting: calls and seconds on the held-out slices and per volume, quality, memory.

    ``volume_calls`` (name -> calls per ``volume_slices``-slice volume, e.g. from
    :func:`tools.bench.calls.aortadiff_volume_calls`) decides which settings are timed on a whole volume.
    """
    device = next(network.parameters()).device
    batch, cases = eval_slices(train_parser, split, slices_per_case)
    post = train_parser.get_parsed_content("validate#postprocessing")
    image = batch["image"].to(device)
    reps = math.ceil(volume_slices / image.shape[0])
    volume = image.repeat(reps, 1, 1, 1)[:volume_slices].permute(1, 2, 3, 0)[None]  # (1, 2, H, W, D), all with ROI
    counter = CallCounter(network)
    rows = []
    for name, keys in samplers.items():
        parser = bundle_parser(BUNDLE, inference_files, {**inference_overrides, **keys, "progress": False})
        inferer = parser.get_parsed_content("inferer")
        counter.reset()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        pred, seconds = _timed_inference(inferer, image, counter, parser, device)
        calls = counter.calls
        row = {"setting": name, **keys, "eval_slices": int(image.shape[0]),
               "eval_cases": len(set(cases)), "eval_calls": calls,
               "eval_seconds": seconds, **_metrics(batch, cases, pred.float().cpu(), post),
               "peak_memory_mb": peak_memory_mb(device)}
        per_volume = (volume_calls or {}).get(name)
        row["calls_per_100_slice_volume"] = per_volume
        if per_volume is not None and per_volume <= max_timed_calls:
            counter.reset()
            row["volume_seconds"] = _timed_inference(inferer, volume, counter, parser, device)[1]
            row["volume_seconds_estimated"] = False
            row["calls_per_100_slice_volume"] = counter.calls  # counted on the real network as well
        elif per_volume is not None:
            row["volume_seconds"] = per_volume * seconds / max(calls, 1)
            row["volume_seconds_estimated"] = True
        rows.append(row)
    return rows


def training_step_speed(train_parser: Any, iterations: int = 30, warmup: int = 5) -> dict[str, float]:
    """img/s of the bundle's training step and of the bare network step, their ratio, and peak memory.

    The two are interleaved: after every bundle iteration one bare step runs (at ``ITERATION_COMPLETED``,
    outside the bundle's timed span), so load from other jobs falls on both alike; each is the median over
    the iterations after ``warmup``. The trainer's checkpoints and logs go to a temporary folder;
    validation runs once after the timed iterations (not timed).
    """
    if iterations <= warmup + 1:
        raise ValueError(f"tools.bench: iterations ({iterations}) must exceed warmup ({warmup}) + 1")
    with tempfile.TemporaryDirectory() as tmp:
        train_parser["iterations"] = iterations
        train_parser["val_interval"] = iterations
        train_parser["val_at_start"] = False
        train_parser["ckpt_dir"] = f"{tmp}/models"
        train_parser["output_dir"] = f"{tmp}/runs"
        trainer = train_parser.get_parsed_content("train#trainer")
        device = torch.device(train_parser.get_parsed_content("device"))
        batch_size = int(train_parser.get_parsed_content("batch_size"))
        size = int(train_parser.get_parsed_content("image_size"))

        # bare step: a copy of the untrained network (same definition, device, memory format), a batch in memory
        network = copy.deepcopy(train_parser.get_parsed_content("network"))
        optimizer = _same_optimizer(train_parser, network)
        x = torch.randn(batch_size, network.image_channels + network.cond_channels, size, size, device=device)
        target = torch.randn(batch_size, network.out_channels, size, size, device=device)
        t = torch.randint(0, int(train_parser.get_parsed_content("num_train_timesteps")), (batch_size,), device=device)
        network.train()

        def bare_step() -> None:
            optimizer.zero_grad(set_to_none=True)
            with _autocast(train_parser, device):
                out = network(x, t)
            torch.nn.functional.mse_loss(out.float(), target).backward()
            optimizer.step()

        bundle_s: list[float] = []
        bare_s: list[float] = []
        resumed = [time.perf_counter()]

        def interleave(engine: Any) -> None:
            _sync(device)
            now = time.perf_counter()
            bundle_s.append(now - resumed[0])
            bare_step()
            _sync(device)
            resumed[0] = time.perf_counter()
            bare_s.append(resumed[0] - now)

        trainer.add_event_handler(Events.STARTED, lambda _: resumed.__setitem__(0, time.perf_counter()))
        trainer.add_event_handler(Events.ITERATION_COMPLETED, interleave)
        trainer.run()
        bundle = float(np.median(bundle_s[warmup:]))
        bare = float(np.median(bare_s[warmup:]))
    return {"batch_size": batch_size, "image_size": size, "iterations": iterations, "warmup": warmup,
            "bundle_img_per_s": batch_size / bundle, "bare_img_per_s": batch_size / bare,
            "bundle_over_bare_step": bundle / bare, "peak_memory_mb": peak_memory_mb(device)}


def _same_optimizer(train_parser: Any, network: torch.nn.Module) -> torch.optim.Optimizer:
    """The config's optimiser class and settings (lr, weight decay, fused) over ``network``'s parameters."""
    ref = train_parser.get_parsed_content("optimizer")
    defaults = {k: v for k, v in ref.defaults.items() if k in ("lr", "weight_decay", "betas", "eps", "fused", "foreach")}
    return type(ref)(network.parameters(), **defaults)


def choose_fastest(rows: Sequence[Mapping[str, Any]], reference: str, psnr_tol: float = 0.5,
                   dice_tol: float = 0.01) -> Mapping[str, Any] | None:
    """The row with the fewest calls per volume whose ROI PSNR is within ``psnr_tol`` dB and whose lumen and
    thrombus Dice are within ``dice_tol`` of (or better than) the ``reference`` row's."""
    ref = next((r for r in rows if r["setting"] == reference), None)
    if ref is None:
        return None
    ok = [r for r in rows if r["roi_psnr"] >= ref["roi_psnr"] - psnr_tol
          and r["lumen_dice"] >= ref["lumen_dice"] - dice_tol and r["thrombus_dice"] >= ref["thrombus_dice"] - dice_tol]
    return min(ok, key=lambda r: (r["calls_per_100_slice_volume"] or r["eval_calls"]), default=None)
