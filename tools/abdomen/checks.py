"""The abdomen bundle's ``check_inputs`` steps, run in ``initialize`` before any training or sampling (generic
checks in :mod:`tools.data.checks`). Label ids are checked on the files as stored, **before** any mapping
(``RemapLabelsd`` sends unknown ids to background, so a later check could not see them)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from tools.abdomen.labels import LABEL_MAPPINGS
from tools.abdomen.synthesis_inferer import check_inference_io
from tools.data.checks import (
    check_choice,
    check_entries,
    check_finite,
    check_label_ids,
    check_positive,
    check_splits,
    read_volume,
)
from tools.diffusion.learned_range_sampler import SAMPLERS
from tools.engines.output_guard import check_writable

__all__ = ["check_inference_inputs", "check_training_inputs"]

#: ids of the training label maps: background + the 15 AMOS22 organs (the body class is added from the CT)
TRAINING_IDS = range(16)


def check_training_inputs(datalist: str | Path, image_size: int, iterations: int, val_interval: int, batch_size: int,
                          num_val_slices: int, state_interval: int, val_sampler: str, output_dir: str | Path,
                          ckpt_dir: str | Path) -> None:
    """Config values in range; datalist split by patient; training and validation non-empty; every CT readable,
    3D, finite and in HU; every label map with AMOS ids 0..15 on its CT's grid; output folders writable."""
    check_positive(image_size=image_size, iterations=iterations, val_interval=val_interval, batch_size=batch_size,
                   num_val_slices=num_val_slices, state_interval=state_interval)
    check_choice("val_sampler", val_sampler, SAMPLERS)
    entries = check_splits(datalist, ("training", "validation"), ("image", "label"))
    check_entries(entries, image_keys=("image",), label_keys=("label",), label_ids=TRAINING_IDS,
                  label_hint="AMOS22 ids: 0 background, 1..15 organs")
    check_writable(output_dir, "output_dir")
    check_writable(ckpt_dir, "ckpt_dir")


def check_inference_inputs(input_files: Sequence[str], output_dir: str | Path, overwrite: bool, label_mapping: str,
                           sampler: str, image_size: int, num_inference_steps: int, slice_batch_size: int) -> list[str]:
    """``label_mapping`` and ``sampler`` known, sizes positive; outputs free (or ``overwrite``) and the folder
    writable; every input label map readable, 3D and holding only ids of ``label_mapping`` (before mapping).
    Returns the planned output files."""
    check_choice("label_mapping", label_mapping, LABEL_MAPPINGS)
    check_choice("sampler", sampler, SAMPLERS)
    check_positive(image_size=image_size, num_inference_steps=num_inference_steps, slice_batch_size=slice_batch_size)
    outputs = check_inference_io(input_files, str(output_dir), "synthetic", overwrite)
    check_writable(output_dir, "output_dir")
    allowed = sorted(LABEL_MAPPINGS[label_mapping])
    for f in input_files:
        _, data = read_volume(f, "input_files")
        check_finite(f, "input_files", data)
        check_label_ids(f, "input_files", data, allowed,
                        f"label_mapping '{label_mapping}'; for TotalSegmentator maps use --label_mapping totalsegmentator")
    return outputs
