"""Hu et al.'s Table 1 rerun on heart phantoms: ``python -m tools.experiments cardiac [options]``.

Every step drives the bundle's own configs through ``monai.bundle.run`` (``common.json`` + stage + size delta):

1. once (seed 0): the joint image-label VAE (``train_autoencoder.json``), the latent diffusion model
   (``train_ldm.json``), the generated pairs (``generate.json``, 3 per real training case) and the SSL
   restoration pretraining of the 3D U-Net on the generated images (``pretrain_ssl.json``, the paper's default);
2. per seed, the three recipes of Table 1, each fine-tuned (``train.json``) and evaluated on the test split
   (``evaluate.json``):

   - ``scratch`` (``scratch.json``): no pretraining, real training cases only;
   - ``medical_diffusion`` (``medical_diffusion.json``): the SSL encoder, fine-tuned on real cases only;
   - ``ours`` (``train.json`` as is): the SSL encoder, fine-tuned on real + 3x generated pairs.

   ``medical_diffusion`` and ``ours`` share one SSL checkpoint, so they differ only in the fine-tuning data, as
   in the paper;
3. the quality of the generated pairs: Dice between each generated label and the prediction of the scratch
   segmenter (real data only) on the generated image, next to that segmenter's Dice on the real test cases.

Budget: ``--budget_minutes`` is time on an idle 2-core machine. Every stage gets a share of it and a number of
epochs from its calibrated cost per epoch (:data:`SECONDS_PER_EPOCH`), so a busy machine changes the wall time,
not the result. Each step writes ``<work_dir>/<step>/result.json`` when it finishes; a rerun skips finished
steps (the bundle's own training state resumes an interrupted one). After every step ``docs/results/cardiac.json``,
the figures and the ``cardiac`` section of ``docs/results.md`` are rewritten from the finished steps.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

from tools.experiments.report import machine_info, write_json
from tools.experiments.runs import bundle_run, read_record, read_records

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "bundles" / "cardiac_ldm_ssl" / "configs"

METHODS = ("scratch", "medical_diffusion", "ours")
DELTAS = {"scratch": ["scratch.json"], "medical_diffusion": ["medical_diffusion.json"], "ours": []}
LABELS = {"scratch": "Scratch", "medical_diffusion": "Medical diffusion (SSL on generated, fine-tune real)",
          "ours": "Ours (SSL on generated, fine-tune real + 3x generated)"}
STRUCTURES = ("LA", "LV", "RA", "RV", "MYO", "AO", "PA", "LAA")
# Hu et al., Table 1 (mean Dice; the paper reports the per-structure values in the same table).
PAPER_TABLE1_MEAN = {"scratch": 0.7743, "ours": 0.7908}
PAPER_STD_FRACTION = 0.0027  # "about 0.27 % of the mean Dice" over seeds

# Process CPU seconds of one thread per epoch at the CPU size (32^3 model grid, 12 real training cases, batch 1,
# cached loading; joint VAE [16, 32, 32] on two random 16^3 patches per augmented volume, LDM [32, 64, 64],
# U-Net small.json), from the per-iteration costs measured in one process (torch 2.x / MONAI 1.x on the project's
# 2-core machine): VAE 0.07 s per iteration of two patches (0.77 s on a whole 32^3 volume), LDM 0.11 s on cached
# latents (LDM_COPIES augmented copies of each case encoded once), U-Net 0.30 s. CPU time does not grow with the
# load of other jobs, and an idle 2-core machine is at least as fast, so the budget is an upper bound of the idle
# time. "ours" fine-tunes on 4x the cases of "scratch" per epoch (real + 3x generated).
LDM_COPIES = 4
LDM_TRAIN_CASES = 12
SECONDS_PER_EPOCH = {"autoencoder": 0.8, "ldm": 0.11 * LDM_COPIES * LDM_TRAIN_CASES, "ssl": 10.5,
                     "finetune_real": 3.5, "finetune_mixed": 14.0}
# Autoencoder and LDM get 60 % of the budget (at 45 minutes about 9 000 patch iterations and 8 500 LDM iterations):
# the image half of the joint VAE is what limits the generated pairs, and a DDPM needs thousands of iterations.
SHARES = {"autoencoder": 0.25, "ldm": 0.35, "ssl": 0.025, "finetune": 0.225}  # the rest: generation, evaluation


def size_settings(size: str, quick: bool) -> dict:
    """Overrides of the bundle keys at one size, the size delta configs, and fixed epochs (quick / paper)."""
    if quick:
        return {"deltas": ["small.json"], "name": "quick",
                "keys": {"phantom_cases": 5, "phantom_size": 32, "phantom_slices": 40, "image_size": [32, 32, 32],
                         "fov_fraction": 0.8, "vae_channels": [4, 8], "vae_norm_groups": 4, "ldm_channels": [8, 8],
                         "ldm_attention_levels": [False, False], "ldm_num_head_channels": [0, 8],
                         "ldm_norm_groups": 4, "seg_features": [4, 4, 8, 8, 16, 4], "num_inference_steps": 2,
                         "samples_per_volume": 1, "val_fraction": 0.34},
                "epochs": {"autoencoder": 1, "ldm": 1, "ssl": 1, "finetune": 1}}
    if size == "cpu":
        # 64 x 64 x 48 phantoms, heart-centred 60 % in-plane field of view resized to 32 x 32 (z spacing kept):
        # training sees random 32-slice blocks of the 48 slices (the paper's random-location crop along z)
        return {"deltas": ["small.json"], "name": "cpu",
                "keys": {"phantom_cases": 16, "phantom_size": 64, "phantom_slices": 48, "image_size": [32, 32, 32],
                         "vae_channels": [16, 32, 32], "vae_norm_groups": 8,
                         "ldm_channels": [32, 64, 64], "ldm_attention_levels": [False, False, True],
                         "ldm_num_head_channels": [0, 0, 32], "ldm_norm_groups": 16,
                         "samples_per_volume": 3, "val_fraction": 0.12},
                # few epochs at this budget: the generative stages learn 10x / 5x faster than the paper's 1e-4
                "stage_keys": {"autoencoder": {"lr": 0.001, "image_weight": 10.0, "seg_weight": 1.0,
                                               "vae_patch_size": [16, 16, 16], "vae_patches_per_volume": 2},
                               "ldm": {"lr": 0.0005, "cache_latents": True, "latent_copies": LDM_COPIES},
                               # generate.json's default sampler (DDPM, all 1000 steps), 4 pairs per network batch
                               "generate": {"batch_size": 4}},
                "epochs": None}
    if size == "paper":
        return {"deltas": [], "name": "paper", "keys": {},
                "epochs": {"autoencoder": 100, "ldm": 300, "ssl": 1000, "finetune": 500}}
    raise ValueError(f"--size must be 'cpu' or 'paper', got {size!r}")


def epochs_for_budget(budget_minutes: float, n_seeds: int) -> dict:
    """Epochs per stage so that the stages take their :data:`SHARES` of the budget on the idle machine."""
    s = budget_minutes * 60.0

    def ep(x: float) -> int:
        return max(2, int(x))

    per_seed_finetune = (2 * SECONDS_PER_EPOCH["finetune_real"] + SECONDS_PER_EPOCH["finetune_mixed"]) * n_seeds
    return {"autoencoder": ep(s * SHARES["autoencoder"] / SECONDS_PER_EPOCH["autoencoder"]),
            "ldm": ep(s * SHARES["ldm"] / SECONDS_PER_EPOCH["ldm"]),
            "ssl": ep(s * SHARES["ssl"] / SECONDS_PER_EPOCH["ssl"]),
            "finetune": ep(s * SHARES["finetune"] / per_seed_finetune)}


class Experiment:
    """The comparison at one size; see the module docstring."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.size = size_settings(args.size, args.quick)
        self.work = Path(args.work_dir)
        self.epochs = self.size["epochs"] or epochs_for_budget(args.budget_minutes, len(args.seeds))
        self.gen_dir = self.work / "generative"
        name = self.size["name"]
        keys = self.size["keys"]
        self.common = {
            **keys,
            "dataset_dir": str(Path(args.data_dir) / f"heart_{name}"),
            # one phantom data set for every seed, every case labelled
            "datalist": "$tools.data.phantoms.ensure_phantoms('heart', @dataset_dir, cases=@phantom_cases, seed=0, "
                        "size=@phantom_size, slices=@phantom_slices, unlabeled_fraction=0.0)",
            "num_workers": 0,
            "overwrite": True,
            "ckpt_dir": str(self.gen_dir / "models"),
            "output_dir": str(self.gen_dir / "runs"),
            "size_deltas": [str(CONFIGS / d) for d in self.size["deltas"]],
        }
        # training stages load + resize each case once (MONAI CacheDataset stops at the first random transform)
        self.train_keys = {} if args.quick else {"train#dataset#_target_": "CacheDataset"}
        self.ssl_checkpoint = str(self.gen_dir / "models" / "ssl_pretrained.pt")

    # -------------------------------------------------------------- bookkeeping
    def _done(self, step: str) -> dict | None:
        return read_record(self.work / step / "result.json")

    def _finish(self, step: str, record: dict) -> dict:
        record = {"step": step, **record, "machine": machine_info()}
        write_json(self.work / step / "result.json", record)
        (self.work / step / "running.pid").unlink(missing_ok=True)
        self.report()
        return record

    def _claim(self, step: str) -> bool:
        """Mark ``step`` as run by this process; False while another live process runs it.

        Two processes may share one ``work_dir`` (e.g. ``--seeds 0 1`` and ``--seeds 1 0`` on two cores): each
        step runs once, the generative steps are waited for, a fine-tuning run by the other process is skipped.
        """
        f = self.work / step / "running.pid"
        f.parent.mkdir(parents=True, exist_ok=True)
        if f.is_file():
            try:
                pid = int(f.read_text().strip())
                if pid != os.getpid():
                    os.kill(pid, 0)  # raises when that process is gone
                    return False
            except (ValueError, ProcessLookupError, PermissionError):
                pass
        f.write_text(str(os.getpid()))
        return True

    def _wait_for(self, step: str) -> dict:
        while not self._done(step):
            if self._claim(step):
                return {}
            time.sleep(15)
        return self._done(step)

    def _configs(self, stage: str, *deltas: str) -> list[str]:
        return ["common.json", stage, *self.size["deltas"], *deltas]

    @staticmethod
    def _continue_or_overwrite(ckpt_dir: str | Path, prefix: str | None) -> dict:
        """Continue from the stage's training state when an interrupted attempt left one, else start afresh."""
        from tools.engines.resume import state_files

        return {"overwrite": not (prefix and state_files(ckpt_dir, prefix)), "resume": "auto"}

    def _stage(self, step: str, run_id: str, stage_cfg: str, deltas=(), prefix: str | None = None, **keys) -> dict:
        done = self._done(step) or self._wait_for(step)
        if done:
            return done
        configs = self._configs(stage_cfg, *deltas)
        overrides = {**self.common, "seed": 0, **keys, **self._continue_or_overwrite(self.common["ckpt_dir"], prefix)}
        t0 = time.time()
        bundle_run(CONFIGS, run_id, configs, **overrides)
        return self._finish(step, {"kind": "generative", "configs": configs, "overrides": overrides,
                                   "wall_time_s": round(time.time() - t0, 1)})

    # -------------------------------------------------------------- steps
    def stage_keys(self, stage: str) -> dict:
        """Keys the size sets for one stage only (e.g. the autoencoder's learning rate)."""
        return dict(self.size.get("stage_keys", {}).get(stage, {}))

    def generative(self) -> None:
        e = self.epochs
        self._stage("autoencoder", "training", "train_autoencoder.json", **self.train_keys, **self.stage_keys("autoencoder"),
                    epochs=e["autoencoder"],
                    val_interval=max(1, e["autoencoder"] // 4), prefix="training_state_autoencoder")
        self._stage("ldm", "training", "train_ldm.json", **self.train_keys, **self.stage_keys("ldm"), epochs=e["ldm"],
                    prefix="training_state_ldm")
        self._stage("generate", "run", "generate.json", **self.stage_keys("generate"))
        self._stage("ssl", "training", "pretrain_ssl.json", **self.train_keys, epochs=e["ssl"], prefix="training_state_ssl_pretrained",
                    ssl_include_real=self.args.ssl_include_real, ssl_filename="ssl_pretrained.pt")

    def method(self, method: str, seed: int) -> dict:
        step = f"{method}_seed{seed}"
        done = self._done(step)
        if done or not self._claim(step):
            return done
        d = self.work / step
        keys = {**self.common, "seed": seed, "ckpt_dir": str(d / "models"), "output_dir": str(d / "runs"),
                "synthetic_dir": str(self.gen_dir / "runs" / "synthetic"), "run_missing_stages": False,
                "epochs": self.epochs["finetune"], "patience": max(10, self.epochs["finetune"]),
                "model_filename": "model.pt", **self._continue_or_overwrite(d / "models", "training_state_model")}
        if method != "scratch":
            keys["pretrained_checkpoint"] = self.ssl_checkpoint
        configs = self._configs("train.json", *DELTAS[method])
        t0 = time.time()
        bundle_run(CONFIGS, "training", configs, **keys, **self.train_keys)
        t_train = time.time() - t0
        eval_keys = {**keys, "eval_dir": str(d / "eval")}
        t0 = time.time()
        bundle_run(CONFIGS, "evaluating", [*configs, "evaluate.json"], **eval_keys)
        table = json.loads((d / "eval" / "dice_table.json").read_text())
        return self._finish(step, {"kind": "method", "method": method, "seed": seed,
                                   "epochs": self.epochs["finetune"], "configs": configs, "overrides": eval_keys,
                                   "wall_time_s": {"train": round(t_train, 1), "evaluate": round(time.time() - t0, 1)},
                                   "dice": table})

    def pair_quality(self) -> dict:
        step = "pair_quality"
        done = self._done(step)
        if done or not self._claim(step):
            return done
        from tools.cardiac.pair_quality import pair_agreement
        from tools.data.datalist import load_datalist

        seed, seg = self._real_data_segmenter()
        synth = [dict(e, synthetic=True) for e in load_datalist(
            str(self.gen_dir / "runs" / "synthetic" / "datalist.json"), "training", required_keys=["image", "label"])]
        t0 = time.time()
        out = pair_agreement(seg, synth)
        return self._finish(step, {"kind": "pair_quality", "segmenter": f"scratch_seed{seed}", "pairs": len(synth),
                                   "dice_generated_label_vs_prediction": out,
                                   "wall_time_s": round(time.time() - t0, 1)})

    def _real_data_segmenter(self):
        """(seed, segmenter) of the scratch run (real cases only) of the lowest seed, the same for every process
        sharing the work folder; waits while another process trains it."""
        seed = min(self.args.seeds)
        while not (rec := self.method("scratch", seed)):
            time.sleep(15)
        return seed, self.segmenter(rec)

    def segmenter(self, rec: dict):
        """The fine-tuned U-Net of a finished method step (its record), with the test-split preprocessing."""
        from tools.cardiac.pair_quality import BundleSegmenter

        return BundleSegmenter([CONFIGS / c for c in rec["configs"]], self.work / rec["step"] / "models" / "model.pt",
                               **{k: v for k, v in rec["overrides"].items() if "#" not in k})

    def samplers(self) -> dict:
        """Sampler settings of generate.json on the trained LDM, one pair per training case each, same seed."""
        step = "samplers"
        done = self._done(step)
        if done or not self._claim(step):
            return done
        from tools.cardiac.sampler_comparison import PAPER, compare_samplers, ddim, fastest_within

        seed, seg = self._real_data_segmenter()
        settings = ([("DDPM 4", {**PAPER[1], "num_inference_steps": 4}), ddim(2)] if self.args.quick else
                    [PAPER, ddim(50), ddim(20), ddim(10), ddim(5)])

        def generate(keys, folder):
            bundle_run(CONFIGS, "run", self._configs("generate.json"),
                       **{**self.common, "seed": 0, "samples_per_volume": 1, **self.stage_keys("generate"), **keys,
                          "synthetic_dir": str(folder)})

        t0 = time.time()
        out = compare_samplers(generate, seg, settings, self.work / step)
        best = fastest_within(out["rows"])
        return self._finish(step, {"kind": "samplers", "segmenter": f"scratch_seed{seed}", **out,
                                   "fastest_within_0.01": best["sampler"] if best else None,
                                   "wall_time_s": round(time.time() - t0, 1)})

    def run(self) -> int:
        t0 = time.time()
        self.generative()
        for seed in self.args.seeds:
            for m in METHODS:
                self.method(m, seed)
        self.pair_quality()
        self.samplers()
        logger.info("cardiac experiment: finished in %.0f s", time.time() - t0)
        self.report()
        return 0

    # -------------------------------------------------------------- results
    def records(self) -> list[dict]:
        return read_records(self.work)

    def report(self) -> None:
        from tools.cardiac.results import write_results

        write_results(self, self.records())


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tools.experiments cardiac", description=__doc__.split("\n\n")[0])
    p.add_argument("--budget_minutes", type=float, default=45.0,
                   help="time on an idle 2-core machine; sets the epochs of every stage")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--size", choices=("cpu", "paper"), default="cpu")
    p.add_argument("--quick", action="store_true", help="tiny sizes, 1 epoch per stage (the test suite)")
    p.add_argument("--ssl_include_real", action="store_true",
                   help="SSL pretraining on real + generated images (default: generated only, as the paper)")
    p.add_argument("--work_dir", default=None, help="runs and checkpoints (default runs/experiments/cardiac_<size>)")
    p.add_argument("--data_dir", default="cache/phantoms", help="phantom cache folder")
    p.add_argument("--results_dir", default=None, help="default docs/results (--quick: <work_dir>/results)")
    p.add_argument("--results_md", default=None, help="default docs/results.md (--quick: <work_dir>/results.md)")
    p.add_argument("--notes", default="", help="text added to the results section (what the figures show)")
    args = p.parse_args(argv)
    if args.work_dir is None:
        args.work_dir = f"runs/experiments/cardiac_{'quick' if args.quick else args.size}"
    if args.results_dir is None:
        args.results_dir = str(Path(args.work_dir) / "results") if args.quick else str(REPO / "docs" / "results")
    if args.results_md is None:
        args.results_md = str(Path(args.work_dir) / "results.md") if args.quick else str(REPO / "docs" / "results.md")
    shown = [a for i, a in enumerate(argv) if a != "--notes" and (i == 0 or argv[i - 1] != "--notes")]
    args.command = "python -m tools.experiments cardiac " + " ".join(shown)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    logging.basicConfig(level=logging.INFO)
    return Experiment(args).run()
