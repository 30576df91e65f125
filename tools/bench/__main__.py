"""``python -m tools.bench [--quick] [--json] [--checkpoint model.pt] [--datalist datalist.json]``.

Measures, on whatever device it finds (CUDA if present, else the CPU):

1. network calls per 100-slice volume of every bundle's default inference settings (cardiac: one volume),
   counted by :class:`tools.bench.counting.CallCounter` around the network;
2. AortaDiff's sampler settings side by side on one model and the same held-out ROI slices: calls,
   seconds, ROI PSNR / SSIM, lumen and thrombus Dice, peak memory (:func:`tools.bench.aortadiff.compare_samplers`);
3. the AortaDiff training step of the bundle against the bare network step: img/s and their ratio;
4. the abdomen bundle's sampler settings (its learned-range DDPM / DDIM) side by side on one trained model
   and the same held-out body slices: calls, seconds, PSNR / SSIM, the downstream segmenter's Dice
   (:func:`tools.bench.abdomen.compare_samplers`; ``--abdomen_ckpt_dir`` holds ``model.pt`` and
   ``segmenter.pt``, or ``--abdomen_segmenter`` names the segmenter, as the results experiment keeps it in
   ``<work_dir>/segmenter_seed<s>/models``; ``--abdomen_datalist`` its datalist; without a checkpoint, and
   outside ``--quick``, this part is skipped).

``--skip "['training']"`` leaves parts out (``aortadiff_samplers``, ``training``, ``abdomen_samplers``);
the call counts always run.

The model: ``--checkpoint`` (a training checkpoint with the EMA weights under ``model``, or a plain state
dict) built by ``train.json`` merged with ``--model_configs`` (default ``small.json`` on the CPU, none
on a GPU); without one, the network that the timed training iterations trained. ``--datalist``
replaces the phantom datalist (the held-out cases are its ``--split``).

``--quick``: tiny phantoms and network, a short RePaint, one slice per case: runs in the test suite so the
command keeps working. Without ``--quick`` the table and the machine description are appended to
``docs/benchmarks.md`` (``--docs ''`` to skip). ``--json`` prints one JSON object instead of the table.
"""

from __future__ import annotations

import contextlib
import json as _json
import math
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import fire
import torch

from tools.bench import abdomen as abd
from tools.bench import aortadiff as ad
from tools.bench.calls import REPO, abdomen_volume_calls, aortadiff_volume_calls, bundle_parser, cardiac_volume_calls
from tools.experiments.report import machine_info

QUICK = {
    "phantom_cases": 4, "phantom_size": 32, "phantom_slices": 8, "image_size": 32, "roi_margin": 2,
    "network_channels": [8, 16], "attention_levels": [False, True], "num_res_blocks": 1, "num_head_channels": 8,
    "norm_num_groups": 8, "batch_size": 4, "num_workers": 0,
}
MODEL_KEYS = ("image_size", "roi_margin", "network_channels", "attention_levels", "num_res_blocks",
              "num_head_channels", "norm_num_groups", "prediction_type", "use_mask_head", "num_train_timesteps",
              "beta_schedule", "beta_start", "beta_end", "a_min", "a_max")


def _fmt(v: Any, digits: int = 2) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:,.{digits}f}"
    return f"{v:,}" if isinstance(v, int) else str(v)


def markdown(result: dict[str, Any], command: str) -> str:
    """The benchmark as a markdown section (machine, command, three tables)."""
    m, a = result["machine"], result["aortadiff_cect"]
    model = f"AortaDiff model: {a['model']}. Held-out slices: {a['eval']}." if "samplers" in a else ""
    lines = [f"### `{command}` ({result['date']})", "",
             f"Machine: {m['cpu']}, {m['cores']} cores, GPU {m['gpu'] or 'none'}, torch {m['torch']}; "
             f"load average (1, 5, 15 min) {m['load_average_1_5_15']} at the start, "
             f"{result['load_average_end']} at the end. Device used: {result['device']} "
             f"({result['torch_threads']} torch threads). {model}", "",
             "Network calls of each bundle's default inference settings (counted by a wrapper around the network):", "",
             "| bundle | default sampler | calls per 100-slice volume (cardiac: per volume) | largest network batch |",
             "|---|---|---|---|"]
    for name in ("aortadiff_cect", "abdomen_semantic_synthesis", "cardiac_ldm_ssl"):
        b = result[name]
        lines.append(f"| {name} | {b['default_sampler']} | {b['calls_per_100_slice_volume']:,} | {b['max_network_batch']} |")
    if "samplers" in a:
        lines += _aortadiff_table(a)
    if "training" in a:
        lines += _training_table(a["training"])
    b = result["abdomen_semantic_synthesis"]
    if "samplers" in b:
        lines += _abdomen_table(b)
    return "\n".join(lines) + "\n"


def _aortadiff_table(a: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    ref = next((r for r in a["samplers"] if r["setting"] == a["reference"]), None)
    lines += ["", f"AortaDiff samplers on one model, the same held-out slices and seed (reference: {a['reference']}):", "",
              "| sampler | calls / 100-slice volume | s / 100-slice volume | calls on held-out slices | s on held-out "
              "slices | ROI PSNR (dB) | ROI SSIM | lumen Dice | thrombus Dice | PSNR - ref | peak memory (MiB) |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in a["samplers"]:
        vs = _fmt(r.get("volume_seconds")) + (" (est.)" if r.get("volume_seconds_estimated") else "")
        d = r["roi_psnr"] - ref["roi_psnr"] if ref else None
        lines.append(f"| {r['setting']} | {_fmt(r['calls_per_100_slice_volume'])} | {vs} | {r['eval_calls']:,} | "
                     f"{_fmt(r['eval_seconds'])} | {_fmt(r['roi_psnr'])} | {_fmt(r['roi_ssim'], 3)} | "
                     f"{_fmt(r['lumen_dice'], 3)} | {_fmt(r['thrombus_dice'], 3)} | {_fmt(d)} | {_fmt(r['peak_memory_mb'], 0)} |")
    best = a.get("fastest_within_tolerance")
    lines += ["", f"Fastest setting within 0.5 dB ROI PSNR and 0.01 Dice of the reference: {best or 'none'}."]
    return lines


def _training_table(t: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    lines += ["", "AortaDiff training step (bundle: `train#trainer` with data loading, loss terms, EMA and handlers; "
              "bare: the same network's forward + MSE + backward + optimiser step on a batch in memory):", "",
              "| batch x size | bundle img/s | bare img/s | bundle step / bare step | peak memory (MiB) |",
              "|---|---|---|---|---|"]
    lines.append(f"| {t['batch_size']} x {t['image_size']}^2 | {_fmt(t['bundle_img_per_s'], 1)} | {_fmt(t['bare_img_per_s'], 1)} "
                 f"| {_fmt(t['bundle_over_bare_step'])} | {_fmt(t['peak_memory_mb'], 0)} |")
    return lines


def _abdomen_table(b: dict[str, Any]) -> list[str]:
    ref = next((r for r in b["samplers"] if r["setting"] == b["reference"]), None)
    lines = ["", f"Abdomen samplers on one model, the same held-out slices and seed (reference: {b['reference']}). "
             f"Model: {b['model']}. Held-out slices: {b['eval']}. Dice: the downstream segmenter on the synthetic "
             "slice against the conditioning organ map (mean over organs).", "",
             "| sampler | calls / 100-slice volume | calls on held-out slices | s on held-out slices | PSNR (dB) | SSIM "
             "| segmenter Dice | PSNR - ref | Dice - ref |", "|---|---|---|---|---|---|---|---|---|"]
    for r in b["samplers"]:
        ref_only = r.get("reference_only")
        dp = None if ref_only or ref is None else r["psnr"] - ref["psnr"]
        dd = None if ref is None else r["dice"] - ref["dice"]
        lines.append(f"| {r['setting']} | {_fmt(r['calls_per_100_slice_volume'])} | {r['eval_calls']:,} | "
                     f"{'-' if ref_only else _fmt(r['eval_seconds'])} | {'-' if ref_only else _fmt(r['psnr'])} | "
                     f"{'-' if ref_only else _fmt(r['ssim'], 3)} | {_fmt(r['dice'], 3)} | {_fmt(dp)} | {_fmt(dd, 3)} |")
    best = b.get("fastest_within_tolerance")
    lines += ["", f"Fastest setting within 0.5 dB PSNR and 0.01 segmenter Dice of the reference: {best or 'none'}."]
    return lines


PARTS = ("aortadiff_samplers", "training", "abdomen_samplers")


def run(quick: bool = False, checkpoint: str | None = None, datalist: str | None = None, split: str = "test",
        slices_per_case: int | None = None, train_iterations: int | None = None,
        model_configs: Sequence[str] | None = None, volume_slices: int = 100, skip: Sequence[str] = (),
        abdomen_ckpt_dir: str | None = None, abdomen_datalist: str | None = None,
        abdomen_slices: int | None = None, abdomen_segmenter: str | None = None) -> dict[str, Any]:
    """Measure everything; returns the result dict that :func:`markdown` and ``--json`` print."""
    skip = [skip] if isinstance(skip, str) else list(skip)
    unknown = [p for p in skip if p not in PARTS]
    if unknown:
        raise ValueError(f"tools.bench: --skip {unknown[0]!r} is not one of {', '.join(PARTS)}")
    start = machine_info()
    date = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    cuda = torch.cuda.is_available()
    if model_configs is None:
        model_configs = [] if cuda or quick else ["small.json"]
    if isinstance(model_configs, str):
        model_configs = [model_configs]
    slices_per_case = slices_per_case or (1 if quick else 8)
    train_iterations = train_iterations or (4 if quick else 40)
    samplers = ad.QUICK_SAMPLERS if quick else ad.SAMPLERS
    reference = next(iter(samplers))
    a_result: dict[str, Any] = {}
    b_result: dict[str, Any] = {}

    with tempfile.TemporaryDirectory() as tmp:
        overrides: dict[str, Any] = {"lpips_pretrained_backbone": False, "val_inference_steps": 1,
                                     "val_slices_per_case": 1, "val_batch_size": 1}
        if quick:
            overrides.update(QUICK, dataset_dir=f"{tmp}/phantoms", use_flash_attention=False)
        if datalist:
            if not Path(datalist).is_file():
                raise FileNotFoundError(f"tools.bench: --datalist {datalist} not found")
            overrides["datalist"] = str(Path(datalist).resolve())
        if checkpoint and not Path(checkpoint).is_file():
            raise FileNotFoundError(f"tools.bench: --checkpoint {checkpoint} not found")
        if abdomen_ckpt_dir and not Path(abdomen_ckpt_dir).is_dir():
            raise FileNotFoundError(f"tools.bench: --abdomen_ckpt_dir {abdomen_ckpt_dir} not found")
        if abdomen_segmenter and not Path(abdomen_segmenter).is_file():
            raise FileNotFoundError(f"tools.bench: --abdomen_segmenter {abdomen_segmenter} not found")
        train_files = ["train.json", *model_configs]
        train_parser = bundle_parser(ad.BUNDLE, train_files, overrides)
        if "training" not in skip:
            a_result["training"] = ad.training_step_speed(train_parser, iterations=train_iterations,
                                                          warmup=2 if quick else 5)
        if "aortadiff_samplers" not in skip:
            if checkpoint:
                network = ad.load_network(bundle_parser(ad.BUNDLE, train_files, overrides), checkpoint)
                model = f"{checkpoint} ({' + '.join(train_files)})"
            elif "training" in a_result:
                network = train_parser.get_parsed_content("ema_network").eval()
                model = f"EMA network of the {train_iterations} timed training iterations ({' + '.join(train_files)})"
            else:
                network = ad.load_network(train_parser, None)
                model = f"untrained network ({' + '.join(train_files)})"
            counts = {name: aortadiff_volume_calls(keys, slices=volume_slices)["calls"] for name, keys in samplers.items()}
            infer_overrides = {k: train_parser[k] for k in MODEL_KEYS if k in train_parser}
            infer_overrides["device"] = train_parser["device"]
            eval_parser = bundle_parser(ad.BUNDLE, train_files, overrides)
            rows = ad.compare_samplers(network, eval_parser, samplers, ["inference.json", *model_configs],
                                       infer_overrides, split=split, slices_per_case=slices_per_case,
                                       volume_slices=volume_slices, volume_calls=counts,
                                       max_timed_calls=14 if quick else 200)
            best = ad.choose_fastest(rows, reference)
            a_result.update({
                "model": model, "reference": reference, "samplers": rows,
                "eval": f"{split} split, {slices_per_case} evenly spaced labelled slices with aorta per case, "
                        f"{rows[0]['eval_slices']} slices of {rows[0]['eval_cases']} cases",
                "fastest_within_tolerance": best["setting"] if best else None})
        if "abdomen_samplers" not in skip and (quick or abdomen_ckpt_dir):
            b_result = abd.run(quick=quick, ckpt_dir=abdomen_ckpt_dir, datalist=abdomen_datalist, split=split,
                               num_slices=abdomen_slices, model_configs=model_configs, tmp=tmp,
                               segmenter=abdomen_segmenter)

    default = bundle_parser(ad.BUNDLE, ["inference.json"])
    a_default = aortadiff_volume_calls(slices=volume_slices)
    ab_parser = bundle_parser("abdomen_semantic_synthesis", ["inference.json"])
    ab = abdomen_volume_calls(slices=volume_slices)
    ab_paper = abdomen_volume_calls(slices=volume_slices, config_files=["inference.json", "paper_sampler.json"])
    cd_parser = bundle_parser("cardiac_ldm_ssl", ["common.json", "generate.json"])
    cd = cardiac_volume_calls()
    cd_paper = cardiac_volume_calls(config_files=["common.json", "generate.json", "paper_sampler.json"])
    a_paper = aortadiff_volume_calls(slices=volume_slices, config_files=["inference.json", "paper_sampler.json"])
    return {
        "date": date, "machine": start, "load_average_end": machine_info().get("load_average_1_5_15"),
        "device": "cuda" if cuda else "cpu", "torch_threads": torch.get_num_threads(), "quick": quick,
        "aortadiff_cect": {
            "calls_per_100_slice_volume": a_default["calls"], "max_network_batch": a_default["max_network_batch"],
            "mask_head_calls_per_100_slice_volume": a_default["mask_head_calls"],
            "default_sampler": _sampler_name(default), "paper_sampler_calls_per_100_slice_volume": a_paper["calls"],
            **a_result},
        "abdomen_semantic_synthesis": {"calls_per_100_slice_volume": ab["calls"], "max_network_batch": ab["max_network_batch"],
                                       "default_sampler": _sampler_name(ab_parser),
                                       "paper_sampler_calls_per_100_slice_volume": ab_paper["calls"], **b_result},
        "cardiac_ldm_ssl": {"calls_per_100_slice_volume": cd["calls"], "max_network_batch": cd["max_network_batch"],
                            "default_sampler": f"DDIM {cd_parser['num_inference_steps']} (generate.json), one volume",
                            "paper_sampler_calls_per_volume": cd_paper["calls"]},
    }


def _sampler_name(parser: Any) -> str:
    s, n = parser["sampler"], parser["num_inference_steps"]
    if s == "repaint":
        return f"RePaint {n}, jump {parser['jump_length']} x {parser['jump_n_sample']}"
    return f"{str(s).upper()} {n}"


def main(quick: bool = False, json: bool = False, checkpoint: str | None = None, datalist: str | None = None,
         split: str = "test", slices_per_case: int | None = None, train_iterations: int | None = None,
         model_configs: Sequence[str] | None = None, docs: str | None = None, skip: Sequence[str] = (),
         abdomen_ckpt_dir: str | None = None, abdomen_datalist: str | None = None,
         abdomen_slices: int | None = None, abdomen_segmenter: str | None = None) -> None:
    """Run the benchmark; print the table (or ``--json``) and, unless ``--quick``, append it to ``docs``."""
    with contextlib.redirect_stdout(sys.stderr):  # the engines' logs: stdout carries the table or the JSON only
        result = run(quick=quick, checkpoint=checkpoint, datalist=datalist, split=split,
                     slices_per_case=slices_per_case, train_iterations=train_iterations, model_configs=model_configs,
                     skip=skip, abdomen_ckpt_dir=abdomen_ckpt_dir, abdomen_datalist=abdomen_datalist,
                     abdomen_slices=abdomen_slices, abdomen_segmenter=abdomen_segmenter)
    command = "python -m tools.bench " + " ".join(sys.argv[1:])
    text = markdown(result, command.strip())
    if json:
        print(_json.dumps(result, indent=1, default=str))
    else:
        print(text)
    docs = (None if quick else str(REPO / "docs" / "benchmarks.md")) if docs is None else docs
    if docs:
        with open(docs, "a") as fh:
            fh.write("\n" + text)


if __name__ == "__main__":
    fire.Fire(main)
