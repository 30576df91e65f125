"""`make demo`: train the AortaDiff bundle's small configuration on CT phantoms, then sample and evaluate it.

Runs the three user-facing bundle commands (``python -m monai.bundle run training | inference |
evaluate``) with the CPU-sized ``configs/small.json`` delta and prints where the outputs are.
Usage: ``python -m tools.demo [--output_dir runs/aortadiff_small] [--iterations N]``.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import fire

BUNDLE = Path("bundles/aortadiff_cect/configs")


def _configs(*names: str) -> str:
    return "[" + ",".join(f"'{BUNDLE / n}'" for n in names) + "]"


def _run(step: str, configs: str, *overrides: str) -> None:
    cmd = [sys.executable, "-m", "monai.bundle", "run", step, "--config_file", configs, *overrides]
    print(f"\n==> {step}: {' '.join(cmd)}", flush=True)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    print(f"==> {step} finished in {time.perf_counter() - t0:.0f} s", flush=True)


def main(output_dir: str = "runs/aortadiff_small", iterations: int | None = None) -> None:
    """Train (small config), run inference on the phantom test split, evaluate; print the output paths."""
    out = Path(output_dir)
    common = ["--output_dir", str(out), "--ckpt_dir", str(out / "models"), "--overwrite", "True"]
    train_extra = ["--iterations", str(iterations)] if iterations else []
    _run("training", _configs("train.json", "small.json"), *common, *train_extra)
    infer = ["--ckpt_dir", str(out / "models"), "--overwrite", "True"]
    _run("inference", _configs("inference.json", "small.json"), "--output_dir", str(out / "inference"), *infer)
    _run("evaluate", _configs("inference.json", "evaluate.json", "small.json"), "--output_dir", str(out / "eval"), *infer)
    print(
        "\nDemo outputs:\n"
        f"  checkpoint            {out / 'models' / 'model.pt'}\n"
        f"  NIfTI + preview PNGs  {out / 'inference'}/<case>/\n"
        f"  metrics and plots     {out / 'eval'}/ (metrics_summary.json, CSVs, PNGs)\n"
        f"  TensorBoard           tensorboard --logdir {out}"
    )


if __name__ == "__main__":
    fire.Fire(main)
