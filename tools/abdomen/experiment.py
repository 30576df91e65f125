"""Zhuang et al.'s comparison rerun on phantoms: ``python -m tools.experiments abdomen [options]``.

Every run drives the bundle's own configs through ``monai.bundle.run``:

1. the downstream organ segmenter on the real training slices (``train_segmenter.json``);
2. per method and seed: training (``train.json`` + the method's delta), then ``evaluate.json`` on every slice
   of the test split: the paper's three DDPMs (concat, mask-guided, edge-guided) at three checkpoints
   (1/3, 2/3 and all of the training), the baselines SDM (``sdm.json``), SPADE and Pix2Pix (``gan.json`` +
   ``spade.json`` / ``pix2pix.json``) at the end. Metrics: FTD (weight-free), FID (only when the Inception
   weights are present), PSNR, SSIM, per-organ Dice of the segmenter on the synthetic slices;
3. the augmentation study (``augment.json``): the segmenter retrained on real + synthetic slices from the
   mask-guided DDPM, Dice on the real test slices against the real-only segmenter.

Equal budget: every method trains the same number of iterations at the same batch size. The number comes from
``--budget_minutes`` (time on an idle 2-core machine) and the calibrated cost per iteration of each method
(:data:`SECONDS_PER_ITERATION`), not from wall time, so a busy machine changes the wall time, not the result.

Each run writes ``<work_dir>/<run>/result.json`` (configs, overrides, seed, wall time, machine, metrics) when it
finishes; a rerun skips finished runs and restarts unfinished ones. After every run, ``docs/results/abdomen.json``,
the figures and the ``abdomen`` section of ``docs/results.md`` are rewritten from the finished runs.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from tools.experiments.report import machine_info, write_json, write_section
from tools.experiments.runs import bundle_run, read_record, read_records

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "bundles" / "abdomen_semantic_synthesis" / "configs"

DDPMS = ("concat", "mask_guided", "edge_guided")
BASELINES = ("sdm", "spade", "pix2pix")
METHODS = DDPMS + BASELINES
RUN_ORDER = ("mask_guided", "concat", "edge_guided", "pix2pix", "spade", "sdm")  # the cheap GANs before SDM
DELTAS = {"concat": [], "mask_guided": [], "edge_guided": [], "sdm": ["sdm.json"],
          "spade": ["gan.json", "spade.json"], "pix2pix": ["gan.json", "pix2pix.json"]}
LABELS = {"concat": "Conditional DDPM (concat)", "mask_guided": "Mask-guided DDPM", "edge_guided": "Edge-guided DDPM",
          "sdm": "SDM", "spade": "SPADE", "pix2pix": "Pix2Pix"}
# Zhuang et al., Table 2 (AMOS22 CT, 256 px). OASIS is not rerun.
PAPER_TABLE2 = {
    "concat": {"fid": 10.58, "psnr": 16.28, "ssim": 0.646},
    "mask_guided": {"fid": 10.56, "psnr": 16.26, "ssim": 0.646},
    "edge_guided": {"fid": 10.64, "psnr": 16.20, "ssim": 0.646},
    "sdm": {"fid": 12.68},
    "spade": {"fid": 60.22},
    "oasis": {"fid": 43.57},
    "pix2pix": {"fid": 78.86},
}
# Seconds per training iteration at the CPU size (64 px, batch 8): process CPU time of one thread, measured for all
# six in one process (3 iterations each after a warm-up, best of 2; torch 2.14 / MONAI 1.6.1 on the project's AMD
# EPYC machine). CPU time does not grow with the load of other jobs, and an idle 2-core machine running 2 threads
# is faster than one thread, so the budget is an upper bound of the idle time.
SECONDS_PER_ITERATION = {"concat": 0.22, "mask_guided": 0.27, "edge_guided": 0.30, "sdm": 0.48,
                         "spade": 0.28, "pix2pix": 0.11}
TRAIN_SHARE = 0.75  # of the budget; the rest samples (evaluation, synthetic slices) and trains the segmenter

NET_CPU = {"image_size": 64, "channels": [16, 32, 64], "attention_levels": [False, False, True], "num_res_blocks": 1,
           "norm_num_groups": 8, "num_head_channels": 16, "segmenter_channels": [16, 32, 64, 128]}
NET_QUICK = {"image_size": 32, "channels": [8, 16], "attention_levels": [False, True], "num_res_blocks": 1,
             "norm_num_groups": 8, "num_head_channels": 8, "segmenter_channels": [8, 16, 16, 16]}
GAN_CPU = {"spade": {"generator_channels": [128, 64, 32, 16], "spade_hidden_channels": 32},
           "pix2pix": {"generator_channels": [16, 32, 64, 128]}}
GAN_QUICK = {"spade": {"generator_channels": [16, 8], "spade_hidden_channels": 8, "discriminator_channels": 8,
                       "discriminator_layers": 2},
             "pix2pix": {"generator_channels": [8, 16], "discriminator_channels": 8, "discriminator_layers": 2}}


def size_settings(size: str, quick: bool) -> dict:
    """Data, network and sampler settings of one size (top-level keys of the bundle configs plus a few of ours)."""
    if quick:
        return {"keys": {**NET_QUICK, "phantom_cases": 4, "phantom_size": 32, "phantom_slices": 8, "batch_size": 2,
                         "learning_rate": 0.0005, "num_val_slices": 2, "val_num_inference_steps": 2},
                "gan": GAN_QUICK, "eval_sampler": "ddim", "eval_steps": 2, "segmenter_iterations": 2,
                "segmenter_batch_size": 2, "num_synthetic_slices": 4, "fixed_iterations": 3}
    if size == "cpu":
        return {"keys": {**NET_CPU, "phantom_cases": 14, "phantom_size": 64, "phantom_slices": 32, "batch_size": 8,
                         "learning_rate": 0.0005, "num_val_slices": 8, "val_num_inference_steps": 10},
                "gan": GAN_CPU, "eval_sampler": "ddim", "eval_steps": 10, "segmenter_iterations": "half",
                "segmenter_batch_size": 16, "num_synthetic_slices": 96, "fixed_iterations": None}
    if size == "paper":  # train.json as written (256 px, 150 000 iterations, DDPM 1000 steps)
        return {"keys": {}, "gan": {}, "eval_sampler": "ddpm", "eval_steps": 1000, "segmenter_iterations": None,
                "segmenter_batch_size": None, "num_synthetic_slices": 256, "fixed_iterations": 150000}
    raise ValueError(f"--size must be 'cpu' or 'paper', got {size!r}")


def iterations_for_budget(budget_minutes: float, methods=METHODS, share: float = TRAIN_SHARE) -> int:
    """Equal iterations per method so that training all ``methods`` takes ``share`` of the budget on the idle machine.

    A multiple of 3 (three evaluated checkpoints), at least 3.
    """
    per_round = sum(SECONDS_PER_ITERATION[m] for m in methods)
    its = int(budget_minutes * 60 * share / per_round)
    return max(3, its - its % 3)


class Experiment:
    """The comparison at one size; see the module docstring."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.size = size_settings(args.size, args.quick)
        self.work = Path(args.work_dir)
        self.iterations = self.size["fixed_iterations"] or iterations_for_budget(args.budget_minutes)
        if self.size["segmenter_iterations"] == "half":  # the segmenter trains half as long as each method
            self.size["segmenter_iterations"] = max(30, self.iterations // 2)
        name = "quick" if args.quick else args.size
        self.common = {
            **self.size["keys"],
            "dataset_dir": str(Path(args.data_dir) / f"abdomen_{name}"),
            # one phantom data set for every seed (the configs draw it with @seed)
            "datalist": "$tools.data.phantoms.ensure_phantoms('abdomen', @dataset_dir, cases=@phantom_cases, seed=0, "
                        "size=@phantom_size, slices=@phantom_slices, unlabeled_fraction=0.0)",
            "num_workers": 0,
            "device": "$torch.device('cuda' if torch.cuda.is_available() else 'cpu')",
            "overwrite": True,
        }

    # -------------------------------------------------------------- bookkeeping
    def _done(self, run: str) -> dict | None:
        return read_record(self.work / run / "result.json")

    def _finish(self, run: str, record: dict) -> dict:
        record = {"run": run, **record, "machine": machine_info()}
        write_json(self.work / run / "result.json", record)
        self.report()
        return record

    def _fresh(self, run: str) -> Path:
        """The run's folder, emptied (an unfinished earlier attempt is discarded)."""
        d = self.work / run
        if d.exists():
            shutil.rmtree(d)
        d.mkdir(parents=True)
        return d

    def _segmenter_keys(self) -> dict:
        """The segmenter's training length at this size (the same for the real-only and the augmented one)."""
        its = self.size["segmenter_iterations"]
        if not its:
            return {}
        return {"segmenter_iterations": its, "segmenter_val_interval": max(1, its // 3),
                "segmenter_batch_size": self.size["segmenter_batch_size"], "segmenter_num_val_slices": 16}

    # -------------------------------------------------------------- runs
    def segmenter(self, seed: int) -> Path:
        run = f"segmenter_seed{seed}"
        ckpt = self.work / run / "models" / "segmenter.pt"
        if self._done(run):
            return ckpt
        d = self._fresh(run)
        keys = {**self.common, "seed": seed, "ckpt_dir": str(d / "models"), "output_dir": str(d / "runs"),
                "segmenter_checkpoint": str(ckpt)}
        keys.update(self._segmenter_keys())
        configs = ["train.json", "train_segmenter.json"]
        t0 = time.time()
        bundle_run(CONFIGS, "training", configs, **keys)
        self._finish(run, {"kind": "segmenter", "seed": seed, "configs": configs, "overrides": keys,
                           "wall_time_s": {"train": round(time.time() - t0, 1)}})
        return ckpt

    def method(self, method: str, seed: int, segmenter: Path) -> dict:
        run = f"{method}_seed{seed}"
        done = self._done(run)
        if done:
            return done
        d = self._fresh(run)
        its = self.iterations
        keys = {**self.common, **self.size["gan"].get(method, {}), "seed": seed, "ckpt_dir": str(d / "models"),
                "output_dir": str(d / "runs"), "iterations": its, "val_interval": max(1, its // 3),
                "checkpoint_interval": max(1, its // 3), "save_initial_checkpoint": False}
        if method in DDPMS:
            keys["conditioning"] = method
        train_cfg = ["train.json", *DELTAS[method]]
        t0 = time.time()
        bundle_run(CONFIGS, "training", train_cfg, **keys)
        t_train = time.time() - t0
        eval_cfg = ["train.json", "evaluate.json", *DELTAS[method]]
        checkpoints = str(d / "models") if method in DDPMS else [str(d / "models" / "model.pt")]
        eval_keys = {**keys, "checkpoints": checkpoints, "eval_dir": str(d / "evaluate"),
                     "segmenter_checkpoint": str(segmenter), "eval_sampler": self.size["eval_sampler"],
                     "eval_num_inference_steps": self.size["eval_steps"], "num_eval_slices": 0}
        t0 = time.time()
        bundle_run(CONFIGS, "evaluate", eval_cfg, **eval_keys)
        t_eval = time.time() - t0
        rows = json.loads((d / "evaluate" / "metrics.json").read_text())
        return self._finish(run, {
            "kind": "method", "method": method, "seed": seed, "iterations": its, "batch_size": keys.get("batch_size"),
            "configs": {"train": train_cfg, "evaluate": eval_cfg}, "overrides": eval_keys,
            "wall_time_s": {"train": round(t_train, 1), "evaluate": round(t_eval, 1)},
            "metrics": rows["rows"], "fid_note": rows.get("fid_note", ""),
        })

    def augmentation(self, seed: int, segmenter: Path, source: str = "mask_guided") -> dict:
        run = f"augment_seed{seed}"
        done = self._done(run)
        if done:
            return done
        d = self._fresh(run)
        keys = {**self.common, "seed": seed, "ckpt_dir": str(d / "models"), "output_dir": str(d / "runs"),
                "synthetic_checkpoint": str(self.work / f"{source}_seed{seed}" / "models" / "model.pt"),
                "real_segmenter_checkpoint": str(segmenter),
                "segmenter_checkpoint": str(d / "models" / "segmenter_augmented.pt"),
                "num_synthetic_slices": self.size["num_synthetic_slices"],
                "synthetic_sampler": self.size["eval_sampler"],
                "synthetic_num_inference_steps": self.size["eval_steps"],
                # Dice on every real test slice (the segmenters' checkpoints are their final weights: no selection)
                "segmenter_validate#files": "$tools.abdomen.slices.select_slices(tools.data.datalist.load_datalist("
                                            "@datalist, 'test', required_keys=['image', 'label']), 0, "
                                            "mask_key=@slice_mask_key, body_threshold_hu=@body_threshold_hu)"}
        keys.update(self._segmenter_keys())
        configs = ["train.json", "train_segmenter.json", "augment.json"]
        t0 = time.time()
        bundle_run(CONFIGS, "training", configs, **keys)
        report = json.loads((d / "runs" / "augment_report.json").read_text())
        return self._finish(run, {"kind": "augmentation", "seed": seed, "source": source, "configs": configs,
                                  "overrides": keys, "wall_time_s": {"train": round(time.time() - t0, 1)},
                                  "report": report})

    def run(self) -> int:
        t0 = time.time()
        for seed in self.args.seeds:
            seg = self.segmenter(seed)
            for m in (m for m in RUN_ORDER if m in self.args.methods):
                self.method(m, seed, seg)
            if "mask_guided" in self.args.methods:
                self.augmentation(seed, seg)
        logger.info("abdomen experiment: finished in %.0f s", time.time() - t0)
        self.report()
        return 0

    # -------------------------------------------------------------- results
    def records(self) -> list[dict]:
        return read_records(self.work)

    def report(self) -> None:
        from tools.abdomen.results import write_results

        write_results(self, self.records())


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tools.experiments abdomen", description=__doc__.split("\n\n")[0])
    p.add_argument("--budget_minutes", type=float, default=45.0,
                   help="time on an idle 2-core machine; sets the equal number of training iterations per method")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--size", choices=("cpu", "paper"), default="cpu")
    p.add_argument("--quick", action="store_true", help="tiny sizes, 3 iterations (the test suite)")
    p.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    p.add_argument("--work_dir", default=None, help="runs and checkpoints (default runs/experiments/abdomen_<size>)")
    p.add_argument("--data_dir", default="cache/phantoms", help="phantom cache folder")
    p.add_argument("--results_dir", default=str(REPO / "docs" / "results"))
    p.add_argument("--results_md", default=str(REPO / "docs" / "results.md"))
    p.add_argument("--notes", default="", help="text added to the results section (what the sample figures show)")
    args = p.parse_args(argv)
    if args.work_dir is None:
        args.work_dir = f"runs/experiments/abdomen_{'quick' if args.quick else args.size}"
    shown = [a for i, a in enumerate(argv) if a != "--notes" and (i == 0 or argv[i - 1] != "--notes")]
    args.command = "python -m tools.experiments abdomen " + " ".join(shown)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    logging.basicConfig(level=logging.INFO)
    return Experiment(args).run()
