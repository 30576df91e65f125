"""Prepare cardiac CT label maps in the project's 8-id convention and write a datalist.

Heart ids: 1 LA, 2 LV, 3 RA, 4 RV, 5 MYO, 6 AO, 7 PA, 8 LAA (``tools.data.label_maps.HEART_LABELS``).
Every case gets a merged uint8 label map (source geometry) in ``--label_dir`` (default
``<datalist folder>/labels_heart``); the images stay where they are. Structures a case lacks (LAA is
absent from every public set) are reported per case and in a summary, never an error.

Layouts (``--layout``):

* ``mmwhs``: MM-WHS 2017 CT, ``<root>/**/<case>_image.nii.gz`` with ``<case>_label.nii.gz`` beside it
  (suffixes configurable); label values 205 MYO, 420 LA, 500 LV, 550 RA, 600 RV, 820 AO, 850 PA
  (``MMWHS_TO_HEART``). Other non-zero values are reported and set to 0; images without a label
  (``ct_test``) are dropped and reported.
* ``totalseg_ml``: TotalSegmentator ``heartchambers_highres`` multi-label output (``--ml``),
  ``<root>/<case>/ct.nii.gz`` and ``<root>/<case>/heartchambers_highres.nii.gz`` (``--label_name``) with
  ids 1 myocardium, 2 LA, 3 LV, 4 RA, 5 RV, 6 aorta, 7 pulmonary artery
  (``TOTALSEG_HEARTCHAMBERS_TO_HEART``); this task has no LAA.
* ``per_structure``: ``<root>/<case>/image.nii.gz`` and one binary mask per structure in
  ``<root>/<case>/<mask_dir>/``; file names default to ``LA.nii.gz`` ... ``LAA.nii.gz`` and are set with
  ``--structure_files '{"LA": "left_atrium.nii.gz", ...}'`` (structures left out are reported absent).
* ``totalseg``: TotalSegmentator output, ``<root>/<case>/ct.nii.gz`` and ``<root>/<case>/segmentations/``
  holding ``heart_atrium_left.nii.gz``, ``heart_ventricle_left.nii.gz``, ``heart_atrium_right.nii.gz``,
  ``heart_ventricle_right.nii.gz``, ``heart_myocardium.nii.gz``, ``aorta.nii.gz``,
  ``pulmonary_artery.nii.gz``, ``atrial_appendage_left.nii.gz`` (``TOTALSEG_HEART_FILES``).

Masks are merged in heart-id order (a later id wins where masks overlap; overlaps are counted).

Usage::

    python -m tools.cardiac.prepare_data --root /data/mmwhs --out /data/mmwhs/datalist.json --layout mmwhs
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from tools.data.label_maps import (
    HEART_LABELS,
    HEART_NAMES,
    MMWHS_TO_HEART,
    PER_STRUCTURE_FILES,
    TOTALSEG_HEART_FILES,
    TOTALSEG_HEARTCHAMBERS_TO_HEART,
    remap_labels,
)
from tools.data.nifti_io import (
    check_same_grid,
    id_counts,
    load_array,
    load_labels,
    load_nifti,
    present_ids,
    save_label_like,
)
from tools.data.splits import check_fractions, print_table, run_cli, split_by_patient, write_prepared
from tools.engines.output_guard import refuse_overwrite

__all__ = ["LAYOUTS", "prepare_cardiac"]

LAYOUTS = ("mmwhs", "totalseg_ml", "per_structure", "totalseg")
_TABLES = {
    "mmwhs": ("MM-WHS", MMWHS_TO_HEART),
    "totalseg_ml": ("heartchambers_highres", TOTALSEG_HEARTCHAMBERS_TO_HEART),
}
_DEFAULTS = {
    "totalseg_ml": {"image_name": "ct.nii.gz", "label_name": "heartchambers_highres.nii.gz"},
    "per_structure": {"image_name": "image.nii.gz", "mask_dir": ".", "files": PER_STRUCTURE_FILES},
    "totalseg": {"image_name": "ct.nii.gz", "mask_dir": "segmentations", "files": TOTALSEG_HEART_FILES},
}


def _find_mmwhs(root: Path, image_suffix: str, label_suffix: str) -> tuple[dict[str, dict], list[dict]]:
    cases: dict[str, dict] = {}
    dropped: list[dict] = []
    for image in sorted(root.rglob(f"*{image_suffix}")):
        case_id = image.name[: -len(image_suffix)]
        if case_id in cases:
            raise ValueError(f"case id '{case_id}' occurs twice: '{cases[case_id]['image']}' and '{image}'")
        label = image.with_name(case_id + label_suffix)
        if not label.is_file():
            dropped.append({"case_id": case_id, "reason": f"no label file '{label.name}' beside '{image}'"})
            continue
        cases[case_id] = {"image": image, "label": label}
    return cases, dropped


def _find_multilabel_per_case(root: Path, image_name: str, label_name: str) -> tuple[dict[str, dict], list[dict]]:
    cases: dict[str, dict] = {}
    dropped: list[dict] = []
    for case_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        image, label = case_dir / image_name, case_dir / label_name
        if image.is_file() and label.is_file():
            cases[case_dir.name] = {"image": image, "label": label}
        elif image.is_file() or label.is_file():
            missing = label if image.is_file() else image
            dropped.append({"case_id": case_dir.name, "reason": f"no file '{missing}'"})
    return cases, dropped


def _find_per_case(
    root: Path, image_name: str, mask_dir: str, files: dict[str, str]
) -> tuple[dict[str, dict], list[dict]]:
    cases: dict[str, dict] = {}
    dropped: list[dict] = []
    for case_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        image = case_dir / image_name
        masks = {name: case_dir / mask_dir / fname for name, fname in files.items()}
        if not image.is_file():
            if any(m.is_file() for m in masks.values()):
                dropped.append({"case_id": case_dir.name, "reason": f"no image '{image}'"})
            continue
        cases[case_dir.name] = {"image": image, "masks": masks}
    return cases, dropped


def _merge_masks(case: dict, absent: dict[str, str]) -> tuple[np.ndarray, Any, int]:
    """Merge the binary masks of one case into a heart-id map; fill ``absent`` with missing structures."""
    image, image_img = case["image"], load_nifti(case["image"])
    merged = np.zeros(image_img.shape[:3], dtype=np.uint8)
    reference, overlap = None, 0
    for name, heart_id in HEART_NAMES.items():
        path = case["masks"].get(name)
        if path is None:
            absent[name] = "no file name given"
            continue
        if not path.is_file():
            absent[name] = f"no file '{path.name}'"
            continue
        img = load_nifti(path)
        check_same_grid(image, image_img, path, img)
        mask = np.asarray(load_array(path, img)) > 0
        if mask.ndim == 4 and mask.shape[-1] == 1:
            mask = mask[..., 0]
        if not mask.any():
            absent[name] = f"empty mask '{path.name}'"
            continue
        overlap += int(np.count_nonzero(mask & (merged > 0)))
        merged[mask] = heart_id
        reference = img if reference is None else reference
    return merged, image_img if reference is None else reference, overlap


def prepare_cardiac(
    root: str,
    out: str,
    layout: str = "mmwhs",
    image_suffix: str = "_image.nii.gz",
    label_suffix: str = "_label.nii.gz",
    image_name: str | None = None,
    label_name: str | None = None,
    mask_dir: str | None = None,
    structure_files: dict | None = None,
    val_fraction: float = 0.2,
    test_fraction: float = 0.1,
    seed: int = 0,
    patient_regex: str | None = None,
    label_dir: str | None = None,
    report: str | None = None,
    overwrite: bool = False,
) -> str:
    """Write heart label maps (ids 1..8) and a datalist of ``{"case_id", "image", "label"}``; return its path.

    Args:
        root: data-set folder in the chosen ``layout``.
        out: datalist JSON path (file paths relative to its folder).
        layout: ``mmwhs``, ``totalseg_ml``, ``per_structure`` or ``totalseg`` (see the module docstring).
        image_suffix: ``mmwhs`` file name ending of the images.
        label_suffix: ``mmwhs`` file name ending of the label maps (same case prefix, same folder).
        image_name: image file in a case folder for the folder-per-case layouts (``image.nii.gz`` for
            ``per_structure``, ``ct.nii.gz`` for ``totalseg``/``totalseg_ml``).
        label_name: ``totalseg_ml`` multi-label file in a case folder (``heartchambers_highres.nii.gz``).
        mask_dir: ``per_structure``/``totalseg`` mask folder inside a case folder (``.``/``segmentations``).
        structure_files: ``per_structure``/``totalseg`` heart name (LA, LV, RA, RV, MYO, AO, PA, LAA) ->
            mask file name; replaces the layout's default table.
        val_fraction: share of the patients in the validation split (at least one patient when > 0).
        test_fraction: share of the patients in the test split (at least one patient when > 0).
        seed: seed of the patient shuffle.
        patient_regex: regex whose first group is the patient id of a case id (default: case = patient).
        label_dir: folder of the merged label maps (default ``<datalist folder>/labels_heart``).
        report: report JSON path (default ``<out stem>_report.json``).
        overwrite: replace an existing datalist, report or label maps (inputs are never replaced).

    Raises:
        FileNotFoundError: ``root`` does not exist. FileExistsError: outputs exist without ``overwrite``.
        ValueError: bad arguments, no cases, unreadable NIfTI, a mask/label not on its image's grid.
    """
    root_path, out_path = Path(root).expanduser(), Path(out).expanduser()
    if layout not in LAYOUTS:
        raise ValueError(f"--layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    if not root_path.is_dir():
        raise FileNotFoundError(f"--root '{root_path}' is not an existing folder")
    if out_path.suffix != ".json":
        raise ValueError(f"--out '{out_path}' must be a .json file path")
    check_fractions(val_fraction, test_fraction)
    report_path = Path(report) if report else out_path.with_name(out_path.stem + "_report.json")
    label_out = Path(label_dir) if label_dir else out_path.parent / "labels_heart"

    if layout == "mmwhs":
        cases, dropped = _find_mmwhs(root_path, image_suffix, label_suffix)
        layout_help = f"<root>/**/<case>{image_suffix} with <case>{label_suffix}"
    elif layout == "totalseg_ml":
        image_name = image_name or _DEFAULTS[layout]["image_name"]
        label_name = label_name or _DEFAULTS[layout]["label_name"]
        cases, dropped = _find_multilabel_per_case(root_path, image_name, label_name)
        layout_help = f"<root>/<case>/{image_name} with <root>/<case>/{label_name}"
    else:
        files = dict(_DEFAULTS[layout]["files"])
        if structure_files is not None:
            if not isinstance(structure_files, dict) or not structure_files:
                raise ValueError(
                    f"--structure_files must be a non-empty dict of heart name -> file name, got {structure_files!r}"
                )
            unknown = sorted(set(structure_files) - set(HEART_NAMES))
            if unknown:
                raise ValueError(
                    f"--structure_files: unknown structure(s) {unknown}; expected names among {list(HEART_NAMES)}"
                )
            files = {str(k): str(v) for k, v in structure_files.items()}
        image_name = image_name or _DEFAULTS[layout]["image_name"]
        mask_dir = mask_dir or _DEFAULTS[layout]["mask_dir"]
        cases, dropped = _find_per_case(root_path, image_name, mask_dir, files)
        layout_help = f"<root>/<case>/{image_name} with masks in <root>/<case>/{mask_dir}/"
    if not cases:
        raise ValueError(
            f"no {layout} case found in --root '{root_path}' (expected {layout_help}; dropped: {len(dropped)})"
        )

    split = split_by_patient(sorted(cases), val_fraction, test_fraction, seed, patient_regex)
    inputs = [p for c in cases.values() for p in [c["image"], c.get("label"), *c.get("masks", {}).values()] if p]
    outputs = [out_path, report_path] + [label_out / f"{c}.nii.gz" for c in cases]
    refuse_overwrite(outputs, overwrite, inputs=inputs)

    for case in cases.values():  # grids first (headers only): a bad case stops the run before anything is written
        image_img = load_nifti(case["image"])
        for other in [case.get("label"), *case.get("masks", {}).values()]:
            if other is not None and other.is_file():
                check_same_grid(case["image"], image_img, other, load_nifti(other))

    entries: dict[str, dict[str, Any]] = {}
    rows: list[dict[str, Any]] = []
    for case_id, case in cases.items():
        absent: dict[str, str] = {}
        row: dict[str, Any] = {"case_id": case_id}
        if layout in _TABLES:
            source_name, table = _TABLES[layout]
            label_img = load_nifti(case["label"])
            source = load_labels(case["label"], label_img)
            values = id_counts(source)
            row["unknown_values"] = {v: n for v, n in values.items() if v != 0 and v not in table}
            merged = remap_labels(source, table).astype(np.uint8)
            reference = label_img
            source_of = {h: s for s, h in table.items()}
            for name, heart_id in HEART_NAMES.items():
                if heart_id not in source_of:
                    absent[name] = f"no {source_name} label value"
                elif source_of[heart_id] not in values:
                    absent[name] = f"value {source_of[heart_id]} not in the label map"
        else:
            merged, reference, row["overlap_voxels"] = _merge_masks(case, absent)
        row["present"] = [HEART_LABELS[i] for i in present_ids(merged) if i]
        row["absent"] = absent
        if not row["present"]:  # an all-background map teaches nothing: drop the case (split stays by patient)
            dropped.append(
                {
                    "case_id": case_id,
                    "reason": "no heart structure present: " + ", ".join(f"{k} ({v})" for k, v in absent.items()),
                }
            )
            continue
        written = save_label_like(merged, reference, label_out / f"{case_id}.nii.gz")
        rows.append(row)
        entries[case_id] = {"case_id": case_id, "image": str(case["image"]), "label": str(written)}
    if not entries:
        raise ValueError(
            f"no {layout} case in --root '{root_path}' has any heart structure (see 'dropped': {dropped[:3]})"
        )
    split = {name: [c for c in ids if c in entries] for name, ids in split.items()}

    split_of = {c: s for s, ids in split.items() for c in ids}
    summary = {name: sum(name in r["absent"] for r in rows) for name in HEART_NAMES}
    report_data = {
        "root": str(root_path.resolve()),
        "datalist": str(out_path.resolve()),
        "settings": {
            "layout": layout,
            "val_fraction": val_fraction,
            "test_fraction": test_fraction,
            "seed": seed,
            "patient_regex": patient_regex,
        },
        "counts": {"cases": len(rows), "dropped": len(dropped), **{s: len(ids) for s, ids in split.items()}},
        "absent_summary": {"cases_lacking": summary, "total_cases": len(rows)},
        "dropped": dropped,
        "cases": [{**r, "split": split_of[r["case_id"]]} for r in rows],
    }
    extra = {"labels": {str(k): v for k, v in HEART_LABELS.items()}}
    write_prepared(entries, split, out_path, ("image", "label"), report_data, report_path, extra)

    print_table(
        [
            (
                r["case_id"],
                split_of[r["case_id"]],
                " ".join(r["present"]) or "-",
                ", ".join(f"{k} ({v})" for k, v in r["absent"].items()) or "-",
            )
            for r in rows
        ],
        ("case_id", "split", "present", "absent (why)"),
    )
    for d in dropped:
        print(f"dropped {d['case_id']}: {d['reason']}")
    unknown_cases = {r["case_id"]: r["unknown_values"] for r in rows if r.get("unknown_values")}
    if unknown_cases:
        print(f"label values outside the {layout} table (set to 0), value: voxels: {unknown_cases}")
    lacking = ", ".join(f"{k} {v}/{len(rows)}" for k, v in summary.items() if v) or "none"
    print(
        f"\nabsent structures (cases lacking them): {lacking}\n{len(rows)} case(s), {len(dropped)} dropped; "
        f"training/validation/test = {len(split['training'])}/{len(split['validation'])}/{len(split['test'])}\n"
        f"datalist: {out_path}\nlabels:   {label_out}\nreport:   {report_path}"
    )
    return str(out_path)


if __name__ == "__main__":
    run_cli(prepare_cardiac)
