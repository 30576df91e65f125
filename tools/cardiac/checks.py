"""The cardiac bundle's ``check_inputs`` steps, run in ``initialize`` before any training, sampling or
segmentation (generic checks in :mod:`tools.data.checks`)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from tools.data.checks import (
    check_entries,
    check_finite,
    check_hu,
    check_nonempty,
    check_positive,
    check_splits,
    read_volume,
)
from tools.data.nifti_io import case_name
from tools.engines.errors import InputValueError
from tools.engines.output_guard import check_writable, refuse_overwrite

__all__ = ["check_inference_inputs", "check_training_inputs", "check_vae_patches", "segmentation_outputs"]


def check_training_inputs(datalist: str | Path, image_size: Sequence[int], batch_size: int, num_classes: int,
                          state_interval: int, output_dir: str | Path, ckpt_dir: str | Path) -> None:
    """Sizes positive; datalist split by patient with a non-empty training split; every CT readable, 3D,
    finite and in HU; every label map with ids ``0..num_classes-1`` on its CT's grid; folders writable."""
    check_positive(image_size=list(image_size), batch_size=batch_size, num_classes=num_classes,
                   state_interval=state_interval)
    files = check_splits(datalist, ("training",), ("image", "label"))
    check_entries(files, image_keys=("image",), label_keys=("label",), label_ids=range(num_classes),
                  label_hint=f"num_classes {num_classes}: 0 background, 1..{num_classes - 1} structures")
    check_writable(output_dir, "output_dir")
    check_writable(ckpt_dir, "ckpt_dir")


def check_vae_patches(patch_size: Sequence[int] | None, patches_per_volume: int, image_size: Sequence[int],
                      vae_channels: Sequence[int]) -> None:
    """``vae_patch_size`` (when set) fits in ``image_size`` and is divisible by the autoencoder's downsampling."""
    if patch_size is None:
        return
    check_positive(vae_patch_size=list(patch_size), vae_patches_per_volume=patches_per_volume)
    factor = 2 ** (len(vae_channels) - 1)
    if len(patch_size) != len(image_size) or any(p > s or p % factor for p, s in zip(patch_size, image_size)):
        raise InputValueError(f"config key 'vae_patch_size' must have {len(image_size)} entries, each at most "
                              f"image_size {list(image_size)} and a multiple of {factor} (2 ** (len(vae_channels) - 1)), "
                              f"got {list(patch_size)}")


def segmentation_outputs(input_files: Sequence[str], output_dir: str | Path, input_root: str | Path,
                         postfix: str = "seg") -> list[Path]:
    """Where inference.json's ``SaveImaged`` (``separate_folder`` False, ``data_root_dir`` = ``input_root``)
    writes the label map of each input."""
    return [Path(output_dir) / os.path.relpath(os.path.dirname(os.path.abspath(f)), input_root)
            / f"{case_name(f)}_{postfix}.nii.gz" for f in input_files]


def check_inference_inputs(input_files: Sequence[str], output_dir: str | Path, input_root: str | Path,
                           overwrite: bool, image_size: Sequence[int], num_classes: int) -> None:
    """Sizes positive; at least one input; every CT readable, 3D, finite and in HU; output folder writable and
    the label maps not there yet (or ``overwrite``); an output is never an input."""
    check_positive(image_size=list(image_size), num_classes=num_classes)
    check_nonempty(list(input_files), "test", "input_files")
    for f in input_files:
        _, data = read_volume(f, "image")
        check_finite(f, "image", data)
        check_hu(f, "image", data)
    check_writable(output_dir, "output_dir")
    refuse_overwrite(segmentation_outputs(input_files, output_dir, input_root), overwrite, inputs=input_files)
