"""AortaDiff's ``check_inputs`` steps: every input of a training or inference run is checked in the config's
``initialize``, before any phantom cache, cache dataset, training step or sampling (generic checks in
:mod:`tools.data.checks`; each error names the file/key or the config key).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from tools.aortadiff.inferers import SAMPLERS
from tools.aortadiff.writer import case_outputs
from tools.aortadiff.inputs import check_aorta_label
from tools.data.checks import check_choice, check_entries, check_nonempty, check_positive, check_splits, read_volume
from tools.data.datalist import load_datalist
from tools.engines.errors import InputValueError
from tools.engines.output_guard import check_writable, refuse_overwrite

__all__ = [
    "check_aorta_seg_outputs",
    "check_aorta_seg_training",
    "check_inference_inputs",
    "check_num_samples",
    "check_training_inputs",
]

REQUIRED = ("ncct", "cect", "aorta")


def check_training_inputs(datalist: str | Path, image_size: int, iterations: int, val_interval: int, batch_size: int,
                          state_interval: int, output_dir: str | Path, ckpt_dir: str | Path) -> None:
    """Config values positive; datalist split by patient; training and validation splits non-empty; every
    NCCT/CECT readable, 3D, finite and in HU; aorta/lumen masks readable and on their NCCT's grid; output
    folders writable."""
    check_positive(image_size=image_size, iterations=iterations, val_interval=val_interval, batch_size=batch_size,
                   state_interval=state_interval)
    entries = check_splits(datalist, ("training", "validation"), REQUIRED)
    validation = load_datalist(datalist, "validation", required_keys=REQUIRED)
    check_nonempty([e for e in validation if e.get("lumen")], "validation", datalist,
                   "validation scores the lumen: at least one entry needs a 'lumen' mask")
    check_entries(entries, image_keys=("ncct", "cect"), mask_keys=("aorta", "lumen"))
    check_writable(output_dir, "output_dir")
    check_writable(ckpt_dir, "ckpt_dir")


def check_num_samples(num_samples: int) -> None:
    """``num_samples`` (samples per case, >= 1; > 1 adds the uncertainty maps) is a positive integer: the first
    inference step, before the inputs are read or any phantom is made."""
    check_positive(num_samples=num_samples)


def check_inference_inputs(entries: Sequence[dict], output_dir: str | Path, overwrite: bool, sampler: str,
                           image_size: int, num_inference_steps: int, num_samples: int, slice_batch_size: int,
                           preview: bool = True) -> None:
    """``sampler`` known and sizes positive; the output folder writable and each case's outputs free (or
    ``overwrite``): all before the (possibly hours long) sampling. ``entries`` come from
    :func:`tools.aortadiff.inputs.inference_entries`, which checked every NCCT and aorta mask (readable, 3D,
    finite, HU, same grid, aorta not empty; an entry without aorta mask is segmented by the next check step,
    :meth:`tools.aortadiff.aorta_seg.AortaSegmenter.segment_entries`)."""
    check_choice("sampler", sampler, SAMPLERS)
    check_positive(image_size=image_size, num_inference_steps=num_inference_steps, num_samples=num_samples,
                   slice_batch_size=slice_batch_size)
    check_writable(output_dir, "output_dir")
    targets = [p for e in entries for p in case_outputs(output_dir, e["case_id"], num_samples, preview)]
    refuse_overwrite(targets, overwrite, inputs=[e["image"] for e in entries] + [e["aorta"] for e in entries if e.get("aorta")])


def check_aorta_seg_training(train_entries: Sequence[dict], val_entries: Sequence[dict], aorta_label: int,
                             image_size: int, iterations: int, val_interval: int, batch_size: int,
                             ckpt_dir: str | Path, model_filename: str, overwrite: bool,
                             output_dir: str | Path) -> None:
    """The aorta segmenter's training (``configs/train_aorta_seg.json``): sizes positive; training and
    validation pairs ``{"image": NCCT, "label": aorta mask or label map}`` (the datalist's, or MONAI Label's
    datastore pairs) non-empty, readable, 3D, in HU, on one grid, each label holding aorta (``aorta_label``
    as in :func:`tools.aortadiff.inputs.check_aorta_inputs`); the weights file free (or ``overwrite``)."""
    check_positive(image_size=image_size, iterations=iterations, val_interval=val_interval, batch_size=batch_size)
    for split, entries in (("training", train_entries), ("validation", val_entries)):
        if not entries:
            raise InputValueError(f"the aorta segmenter's {split} set is empty (train#dataset#data / "
                                  "validate#dataset#data): it needs NCCT / aorta pairs")
        check_entries(entries, image_keys=("image",), mask_keys=("label",))
        for e in entries:
            _, label = read_volume(e["label"], "label")
            check_aorta_label(e["label"], label, aorta_label, e["image"])
    check_writable(output_dir, "output_dir")
    check_writable(ckpt_dir, "ckpt_dir")
    stem = Path(model_filename).stem
    refuse_overwrite([Path(ckpt_dir) / model_filename, Path(ckpt_dir) / f"{stem}_best.pt"], overwrite)


def check_aorta_seg_outputs(entries: Sequence[dict], output_dir: str | Path, overwrite: bool) -> None:
    """``configs/inference_aorta_seg.json``: the output folder writable, one output name per input (MONAI's
    ``SaveImaged``: ``<output_dir>/<name>/<name>_aorta.nii.gz``) and none of them existing (or ``overwrite``)."""
    check_writable(output_dir, "output_dir")
    names: dict[str, str] = {}
    for e in entries:
        name = Path(str(e["image"])).name.split(".")[0]
        if name in names:
            raise InputValueError(f"NCCT files '{names[name]}' and '{e['image']}' have the same name '{name}': their "
                                  f"aorta masks would overwrite each other in {output_dir}; run them one by one "
                                  "(--input_ncct FILE --output_dir DIR)")
        names[name] = str(e["image"])
    refuse_overwrite([Path(output_dir) / n / f"{n}_aorta.nii.gz" for n in names], overwrite,
                     inputs=list(names.values()))
