"""What `make demo` runs: every stage of the three bundles as the command a user would type.

Each stage is one module run with its arguments, ``python -m <module> <args>``; for the bundles that is
``python -m monai.bundle run <training|inference|evaluate|...> --config_file "[...]" --key value``, i.e. the
bundle's own configs with its CPU-sized ``configs/small.json`` delta merged last, plus the demo's overrides
(sizes, iterations, sampler, output folders) passed on the command line. The sizes live in ``SIZES``, one
dictionary per bundle and stage, so they can be retuned without touching the configs; ``"tiny"`` is the
size the test suite runs.

Every stage names the stages it needs (``needs``); stages of one bundle whose needs are met can run
beside each other and beside other bundles' stages (:mod:`tools.demo.runner`).
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["BUNDLES", "SIZES", "Stage", "build_plan", "out_dirs"]

BUNDLES = ("aortadiff_cect", "abdomen_semantic_synthesis", "cardiac_ldm_ssl")

# Demo sizes, per bundle and stage: top-level config keys passed as --key value over configs/small.json.
# "demo": what `make demo` runs (about 5 minutes on 2 idle cores, by CPU: docs/benchmarks.md; two stages at a time,
# one thread each);
# "tiny": the test suite's size (seconds per stage; checks the code path, learns nothing).
SIZES: dict[str, dict[str, dict[str, dict[str, Any]]]] = {
    "demo": {
        "aortadiff_cect": {
            # SDPA attention (MONAI's use_flash_attention, off on the CPU by default): a step 0.38 -> 0.34 s (1 thread);
            # 48 px slices (the 64 px phantoms resized in-plane; metrics on the 64 px grid): training 145 -> 74 s,
            # ROI PSNR 17.8 -> 17.1 dB, Dice lumen / thrombus 0.66 / 0.64 -> 0.68 / 0.61 (docs/benchmarks.md)
            "training": {"iterations": 300, "val_interval": 300, "val_at_start": False, "use_flash_attention": True,
                         "image_size": 48},
            "inference": {"use_flash_attention": True, "image_size": 48},
            "evaluate": {},
        },
        "abdomen_semantic_synthesis": {
            # 8-16-32 channels at 10x small.json's rate: at equal CPU time, sharper than more iterations or batch 16;
            # 40 px slices (the 64 px phantoms resized in-plane) and SDPA attention: a step costs 0.78x the 48 px one
            # and the slices come out cleaner at equal iterations;
            # small.json's one normalisation group (DC gain of eps at t = 999 0.46 at 48 px, 0.09 with four groups of
            # two channels, whose slices came out bright noise when the noise's mean was positive);
            # scored with DDPM 100: at 48 px and 2,000 iterations DDPM 25 / 50 / 100 give 18.3 / 18.5 / 19.1 dB, and
            # 100 steps leave none of the 25 steps' speckle (docs/benchmarks.md)
            "training": {"iterations": 2100, "val_interval": 2100, "checkpoint_interval": 2100, "learning_rate": 0.005,
                         "channels": [8, 16, 32], "num_head_channels": 8, "image_size": 40,
                         "use_flash_attention": True,
                         "num_val_slices": 8, "val_sampler": "ddpm", "val_num_inference_steps": 25},
            "segmenter": {"segmenter_iterations": 150, "segmenter_val_interval": 150},
            "evaluate": {"num_eval_slices": 16, "eval_sampler": "ddpm", "eval_num_inference_steps": 100},
        },
        "cardiac_ldm_ssl": {
            # one LDM residual block per level: a step on 16 latents 0.054 s instead of 0.078 s (1 thread)
            "common": {"ldm_num_res_blocks": 1},
            # 100 autoencoder and 55 LDM epochs instead of 150 and 80, 25 fine-tuning epochs instead of 30: 73 + 82 + 59
            # -> 48 + 53 + 49 s, the same-looking pairs, test Dice 0.27 -> 0.25 (docs/benchmarks.md)
            "train_autoencoder": {"epochs": 100, "val_interval": 100, "lr": 0.001, "image_weight": 10.0,
                                  "seg_weight": 1.0, "vae_patch_size": [16, 16, 16], "vae_patches_per_volume": 2},
            # batches of 16 cached latents: the small U-Net's step costs about 1.5x a step on one latent
            "train_ldm": {"epochs": 55, "lr": 0.0005, "cache_latents": True, "latent_copies": 16, "batch_size": 16},
            # generate.json's DDPM over all 1000 steps, 8 pairs in one batch (1000 calls in all)
            "generate": {"samples_per_volume": 1, "batch_size": 8},
            # batch 2: on the CPU a 3D convolution of a batch of 1 takes a slow path (6x the time per volume)
            "pretrain_ssl": {"epochs": 6, "batch_size": 2},
            "train": {"epochs": 25, "batch_size": 2},
            "inference": {},
        },
    },
    "tiny": {
        "aortadiff_cect": {
            "training": {"iterations": 2, "val_interval": 2, "val_at_start": False, "batch_size": 2, "phantom_cases": 5,
                         "phantom_size": 32, "phantom_slices": 8, "image_size": 32, "network_channels": [8, 8, 16],
                         "norm_num_groups": 4, "num_head_channels": 8, "val_slices_per_case": 2,
                         "val_inference_steps": 1},
            "inference": {"phantom_cases": 5, "phantom_size": 32, "phantom_slices": 8, "image_size": 32,
                          "network_channels": [8, 8, 16], "norm_num_groups": 4, "num_head_channels": 8},
            "evaluate": {},
        },
        "abdomen_semantic_synthesis": {
            "training": {"iterations": 2, "val_interval": 2, "checkpoint_interval": 2, "batch_size": 2,
                         "phantom_cases": 5, "phantom_size": 32, "phantom_slices": 8, "image_size": 32,
                         "channels": [8, 8, 16], "norm_num_groups": 4, "num_head_channels": 8, "num_val_slices": 2,
                         "val_num_inference_steps": 1},
            "segmenter": {"segmenter_iterations": 2, "segmenter_val_interval": 2, "segmenter_batch_size": 2,
                          "segmenter_num_val_slices": 2, "segmenter_channels": [8, 8, 16, 16]},
            "evaluate": {"num_eval_slices": 2, "eval_sampler": "ddim", "eval_num_inference_steps": 1},
        },
        "cardiac_ldm_ssl": {
            "common": {"phantom_cases": 10, "phantom_size": 32, "phantom_slices": 16, "image_size": [32, 32, 16],
                       "vae_channels": [8, 8, 8], "ldm_channels": [8, 8], "ldm_attention_levels": [False, True],
                       "ldm_num_head_channels": [0, 8], "seg_features": [8, 8, 8, 8, 8, 8]},
            "train_autoencoder": {"epochs": 1, "val_interval": 1},
            "train_ldm": {"epochs": 1},
            "generate": {"samples_per_volume": 1, "num_inference_steps": 1},
            "pretrain_ssl": {"epochs": 1},
            "train": {"epochs": 1},
            "inference": {},
        },
    },
}


@dataclass(frozen=True)
class Stage:
    """One command of the demo: ``python -m <module> <args>``, logged to ``<log_dir>/<bundle>.<name>.log``.

    ``needs`` are names of stages of the same bundle that must have finished; ``picture`` marks what a
    reader should look at, ``estimate_s`` is the idle-machine time used to order the stages.
    """

    bundle: str
    name: str
    module: str
    args: tuple[str, ...]
    needs: tuple[str, ...] = ()
    estimate_s: float = 10.0
    env: Mapping[str, str] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"{self.bundle}.{self.name}"

    def command(self, python: str = "python") -> str:
        """The shell command a user would type to run this stage alone."""
        return " ".join([python, "-m", self.module, *(_quote(a) for a in self.args)])


def _quote(arg: str) -> str:
    """Shell quoting that keeps a config list readable: "['a.json','b.json']" rather than shlex's '[\'"\'"...'."""
    if arg == shlex.quote(arg):
        return arg
    if not any(c in arg for c in '"$`\\!'):
        return f'"{arg}"'
    return shlex.quote(arg)


def _cli_value(value: Any) -> str:
    """A value as ``python -m monai.bundle run`` reads it from the command line (fire parses Python literals)."""
    if isinstance(value, str):
        return value
    return repr(value)


def _overrides(keys: Mapping[str, Any]) -> list[str]:
    out: list[str] = []
    for k, v in keys.items():
        out += [f"--{k}", _cli_value(v)]
    return out


def _configs(folder: Path, *names: str) -> str:
    return "[" + ",".join(f"'{folder / n}'" for n in names) + "]"


def out_dirs(root: str | Path) -> dict[str, Path]:
    """Output folder of each bundle's demo run under ``root``."""
    return {b: Path(root) / b for b in BUNDLES}


def _bundle_run(run_id: str, configs: str, keys: Mapping[str, Any]) -> tuple[str, ...]:
    head = ["run", run_id] if run_id else ["run"]
    return tuple([*head, "--config_file", configs, *_overrides(keys)])


def _aortadiff(root: Path, out: Path, size: Mapping[str, Mapping[str, Any]], data: dict[str, str]) -> list[Stage]:
    cfg = root / "bundles" / "aortadiff_cect" / "configs"
    models = out / "models"
    common = {"ckpt_dir": str(models), "overwrite": True, **data}
    train = _configs(cfg, "train.json", "small.json")
    infer = _configs(cfg, "inference.json", "small.json")
    evaluate = _configs(cfg, "inference.json", "evaluate.json", "small.json")
    net = dict(size["inference"])  # network/grid keys that inference must share with training
    return [
        Stage("aortadiff_cect", "training", "monai.bundle",
              _bundle_run("training", train, {**common, "output_dir": str(out), **size["training"]}), estimate_s=75),
        Stage("aortadiff_cect", "untrained", "tools.demo.untrained",
              ("--config_file", train, "--out", str(models / "untrained.pt"), *_overrides(net)), estimate_s=3),
        Stage("aortadiff_cect", "inference", "monai.bundle",
              _bundle_run("inference", infer, {**common, "output_dir": str(out / "inference"), **net}),
              needs=("training",), estimate_s=5),
        Stage("aortadiff_cect", "evaluate", "monai.bundle",
              _bundle_run("evaluate", evaluate, {**common, "output_dir": str(out / "eval"), **net, **size["evaluate"]}),
              needs=("training",), estimate_s=6),
        Stage("aortadiff_cect", "evaluate_untrained", "monai.bundle",
              _bundle_run("evaluate", evaluate, {**common, "output_dir": str(out / "eval_untrained"),
                                                 "checkpoint": str(models / "untrained.pt"), **net,
                                                 **size["evaluate"]}),
              needs=("untrained", "training"), estimate_s=6),
    ]


def _abdomen(root: Path, out: Path, size: Mapping[str, Mapping[str, Any]], data: dict[str, str]) -> list[Stage]:
    cfg = root / "bundles" / "abdomen_semantic_synthesis" / "configs"
    models = out / "models"
    common = {"ckpt_dir": str(models), "output_dir": str(out), "overwrite": True, **data}
    net = {k: v for k, v in size["training"].items()
           if k in ("phantom_cases", "phantom_size", "phantom_slices", "image_size", "channels", "norm_num_groups",
                    "num_head_channels", "use_flash_attention")}
    seg_net = {k: v for k, v in size["segmenter"].items() if k == "segmenter_channels"}
    trained = models / "model.pt"
    untrained = models / "checkpoint_iteration=0.pt"
    return [
        Stage("abdomen_semantic_synthesis", "training", "monai.bundle",
              _bundle_run("training", _configs(cfg, "train.json", "small.json"), {**common, **size["training"]}),
              estimate_s=225),
        Stage("abdomen_semantic_synthesis", "segmenter", "monai.bundle",
              _bundle_run("training", _configs(cfg, "train.json", "train_segmenter.json", "small.json"),
                          {**common, **net, **size["segmenter"]}), estimate_s=20),
        Stage("abdomen_semantic_synthesis", "evaluate", "monai.bundle",
              _bundle_run("evaluate", _configs(cfg, "train.json", "evaluate.json", "small.json"),
                          {**common, **net, **seg_net, "checkpoints": [str(untrained), str(trained)],
                           **size["evaluate"]}),
              needs=("training", "segmenter"), estimate_s=15),
    ]


def _cardiac(root: Path, out: Path, size: Mapping[str, Mapping[str, Any]], data: dict[str, str]) -> list[Stage]:
    cfg = root / "bundles" / "cardiac_ldm_ssl" / "configs"
    models = out / "models"
    base = {"ckpt_dir": str(models), "output_dir": str(out), "overwrite": True, **data, **size.get("common", {})}

    def stage(name: str, run_id: str, config: str, keys: Mapping[str, Any], needs: tuple[str, ...], est: float,
              extra: Sequence[str] = ()) -> Stage:
        files = _configs(cfg, "common.json", config, *extra, "small.json")
        return Stage("cardiac_ldm_ssl", name, "monai.bundle", _bundle_run(run_id, files, {**base, **keys}),
                     needs=needs, estimate_s=est)

    evaluate = _configs(cfg, "common.json", "train.json", "small.json", "evaluate.json")
    dataset = data.get("dataset_dir", "cache/phantoms/heart_64x32")  # small.json's dataset_dir
    grid = {k: v for k, v in size.get("common", {}).items()
            if k in ("image_size", "seg_features", "phantom_cases", "phantom_size", "phantom_slices")}
    return [
        stage("train_autoencoder", "training", "train_autoencoder.json", size["train_autoencoder"], (), 48),
        stage("train_ldm", "training", "train_ldm.json", size["train_ldm"], ("train_autoencoder",), 53),
        stage("generate", "", "generate.json", size["generate"], ("train_ldm",), 19),
        stage("pretrain_ssl", "training", "pretrain_ssl.json", size["pretrain_ssl"], ("generate",), 5),
        stage("train", "training", "train.json", {**size["train"], "run_missing_stages": False}, ("pretrain_ssl",), 49),
        Stage("cardiac_ldm_ssl", "untrained", "tools.demo.untrained",
              ("--config_file", _configs(cfg, "common.json", "train.json", "small.json"), "--network_key", "unet_def",
               "--out", str(models / "untrained.pt"), *_overrides(base)), estimate_s=3),
        Stage("cardiac_ldm_ssl", "evaluate", "monai.bundle",
              _bundle_run("evaluating", evaluate, {**base, "run_missing_stages": False}), needs=("train",),
              estimate_s=4),
        Stage("cardiac_ldm_ssl", "evaluate_untrained", "monai.bundle",
              _bundle_run("evaluating", evaluate, {**base, "run_missing_stages": False,
                                                   "model_filename": "untrained.pt", "variant": "untrained"}),
              needs=("untrained",), estimate_s=4),
        Stage("cardiac_ldm_ssl", "inference", "monai.bundle",
              _bundle_run("inference", _configs(cfg, "inference.json", "small.json"),
                          {"ckpt_dir": str(models), "output_dir": str(out / "segmentation"), "overwrite": True,
                           **data, **grid, **size["inference"]}),
              needs=("train",), estimate_s=4),
        Stage("cardiac_ldm_ssl", "figure", "tools.cardiac.figure",
              ("--synthetic_dir", str(out / "synthetic"), "--datalist", str(Path(dataset) / "datalist.json"),
               "--segmentations", repr({"fine-tuned": str(out / "segmentation")}), "--n_synthetic", "2",
               "--out", str(out / "cardiac_demo.png")),
              needs=("inference", "generate"), estimate_s=3),
    ]


def build_plan(bundles: Sequence[str] = BUNDLES, output_dir: str | Path = "runs/demo", size: str = "demo",
               repo_root: str | Path = ".", dataset_root: str | Path | None = None) -> list[Stage]:
    """The stages of the chosen bundles, in the order they are listed (the runner may interleave them).

    ``dataset_root``: phantoms go to ``<dataset_root>/<bundle>`` instead of the folders ``small.json`` names
    (``cache/phantoms/*_small``), e.g. for the tiny size, whose phantoms must not replace the demo's.
    """
    unknown = [b for b in bundles if b not in BUNDLES]
    if unknown:
        raise ValueError(f"--bundles: unknown bundle(s) {unknown}; choose from {list(BUNDLES)}")
    if size not in SIZES:
        raise ValueError(f"--size: unknown size {size!r}; choose from {list(SIZES)}")
    root, dirs = Path(repo_root), out_dirs(output_dir)
    makers = {"aortadiff_cect": _aortadiff, "abdomen_semantic_synthesis": _abdomen, "cardiac_ldm_ssl": _cardiac}
    stages: list[Stage] = []
    for b in bundles:
        data = {"dataset_dir": str(Path(dataset_root) / b)} if dataset_root else {}
        stages += makers[b](root, dirs[b], SIZES[size][b], data)
    return stages
