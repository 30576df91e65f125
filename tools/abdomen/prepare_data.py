"""Prepare AMOS22 (CT part) as a datalist, optionally remapping TotalSegmentator label maps to AMOS ids.

Expected layout (the AMOS22 release)::

    root/dataset.json                 optional; read for its label names and case lists
    root/imagesTr/amos_XXXX.nii.gz    training images     root/labelsTr/amos_XXXX.nii.gz
    root/imagesVa/amos_XXXX.nii.gz    validation images   root/labelsVa/amos_XXXX.nii.gz

Only CT cases are used: AMOS ids 1-500 are CT, ids above 500 are MRI and are skipped (and counted).
Default split: the labelled ``*Tr`` cases are split by patient into training/validation
(``--val_fraction``); the test split is ``--num_test`` cases (seeded choice; the paper uses 50) of the
labelled ``*Va`` cases (``--num_test None`` keeps all of them).

``--remap_from totalseg`` treats the label files as TotalSegmentator v2 ``total`` maps and writes AMOS-id
copies (uint8, source geometry) into ``--label_dir`` (default ``<datalist folder>/labels_amos``); the
inputs are never modified. The table is ``tools.data.label_maps.TOTALSEG_V2_TO_AMOS``.

Usage::

    python -m tools.abdomen.prepare_data --root /data/amos22 --out /data/amos22/datalist.json [--num_test 50 --seed 0]
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from tools.data.label_maps import AMOS_LABELS, TOTALSEG_V2_TO_AMOS, remap_labels
from tools.data.nifti_io import case_name, check_same_grid, load_labels, load_nifti, present_ids, save_label_like
from tools.data.splits import check_fractions, print_table, run_cli, split_by_patient, write_prepared
from tools.engines.output_guard import refuse_overwrite

__all__ = ["AMOS_FILE", "MAX_CT_ID", "prepare_amos"]

AMOS_FILE = re.compile(r"^amos_(\d+)\.nii(\.gz)?$")
MAX_CT_ID = 500
REMAPS = {"totalseg": TOTALSEG_V2_TO_AMOS}


def _scan(folder: Path) -> tuple[dict[str, Path], list[str], list[str]]:
    """AMOS files of ``folder``: (CT case name -> path, MRI names skipped, other names ignored)."""
    ct, mri, other = {}, [], []
    if folder.is_dir():
        for path in sorted(folder.iterdir()):
            m = AMOS_FILE.match(path.name)
            if not m or not path.is_file():
                if not path.name.startswith("."):
                    other.append(path.name)
            elif int(m.group(1)) > MAX_CT_ID:
                mri.append(case_name(path))
            else:
                ct[case_name(path)] = path
    return ct, mri, other


def _read_dataset_json(root: Path) -> dict[str, Any] | None:
    path = root / "dataset.json"
    if not path.is_file():
        return None
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"'{path}' is not valid JSON: {e}") from e
    info: dict[str, Any] = {"path": str(path), "label_differences": [], "listed_but_missing": []}
    labels = meta.get("labels", {})
    if isinstance(labels, dict):
        for key, name in sorted(labels.items(), key=lambda kv: int(kv[0]) if str(kv[0]).isdigit() else 999):
            ours = AMOS_LABELS.get(int(key)) if str(key).isdigit() else None
            if ours is None or str(name).strip().lower() != ours:
                info["label_differences"].append(f"dataset.json {key}: {name!r} vs AMOS22 table {ours!r}")
    for split in ("training", "validation", "test"):
        for item in meta.get(split, []) or []:
            for rel in item.values() if isinstance(item, dict) else [item]:
                if isinstance(rel, str) and not (root / rel).exists():
                    info["listed_but_missing"].append(rel)
    return info


def prepare_amos(
    root: str,
    out: str,
    val_fraction: float = 0.2,
    num_test: int | None = 50,
    seed: int = 0,
    remap_from: str | None = None,
    label_dir: str | None = None,
    check_labels: bool = True,
    report: str | None = None,
    overwrite: bool = False,
) -> str:
    """Write an AMOS22 CT datalist (``{"case_id", "image", "label"}`` entries); return its path.

    Args:
        root: AMOS22 folder with ``imagesTr``/``labelsTr`` (and ``imagesVa``/``labelsVa`` for the test split).
        out: datalist JSON to write (paths relative to its folder).
        val_fraction: share of the ``*Tr`` patients that go to validation.
        num_test: how many labelled ``*Va`` cases form the test split (seeded choice); None: all.
        seed: seed of the split and of the test choice.
        remap_from: None (labels already AMOS ids) or ``"totalseg"`` (TotalSegmentator v2 ``total`` ids,
            remapped copies written to ``label_dir``).
        label_dir: where remapped label maps go (default ``<datalist folder>/labels_amos``).
        check_labels: read every label map: check its grid against the image and its ids against 0..15.
        report: report JSON path (default ``<out stem>_report.json``).
        overwrite: replace an existing datalist/report/remapped labels (inputs are never replaced).

    Raises:
        FileNotFoundError: ``root`` does not exist. FileExistsError: outputs exist without ``overwrite``.
        ValueError: bad arguments, no CT case, unreadable NIfTI, image and label on different grids.
    """
    root_path, out_path = Path(root).expanduser(), Path(out).expanduser()
    if not root_path.is_dir():
        raise FileNotFoundError(f"--root '{root_path}' is not an existing folder (expected imagesTr/labelsTr/...)")
    if out_path.suffix != ".json":
        raise ValueError(f"--out '{out_path}' must be a .json file path")
    check_fractions(val_fraction)
    if num_test is not None and (isinstance(num_test, bool) or not isinstance(num_test, int) or num_test < 0):
        raise ValueError(f"--num_test must be an integer >= 0 or None (all validation cases), got {num_test!r}")
    if remap_from is not None and remap_from not in REMAPS:
        raise ValueError(f"--remap_from must be one of {sorted(REMAPS)} or None, got {remap_from!r}")
    report_path = Path(report) if report else out_path.with_name(out_path.stem + "_report.json")
    label_out = Path(label_dir) if label_dir else out_path.parent / "labels_amos"

    scans = {sub: _scan(root_path / sub) for sub in ("imagesTr", "labelsTr", "imagesVa", "labelsVa")}
    skipped_mri = sorted({name for s in scans.values() for name in s[1]})
    ignored = {sub: s[2] for sub, s in scans.items() if s[2]}
    dataset_json = _read_dataset_json(root_path)
    dropped: list[dict[str, str]] = []
    pairs: dict[str, dict[str, tuple[Path, Path]]] = {}
    for part in ("Tr", "Va"):
        images, labels = scans[f"images{part}"][0], scans[f"labels{part}"][0]
        pairs[part] = {c: (images[c], labels[c]) for c in sorted(images) if c in labels}
        dropped += [
            {"case_id": c, "part": part, "reason": f"no label in labels{part}"}
            for c in sorted(set(images) - set(labels))
        ]
        dropped += [
            {"case_id": c, "part": part, "reason": f"no image in images{part}"}
            for c in sorted(set(labels) - set(images))
        ]
    for case_id in sorted(set(pairs["Tr"]) & set(pairs["Va"])):  # one patient must not be in two splits
        del pairs["Va"][case_id]
        dropped.append({"case_id": case_id, "part": "Va", "reason": "also in imagesTr/labelsTr (kept there only)"})
    if not pairs["Tr"] and not pairs["Va"]:
        raise ValueError(
            f"no CT case (amos_XXXX.nii.gz with id <= {MAX_CT_ID} in both images and labels folders) found in --root "
            f"'{root_path}' (MRI cases skipped: {len(skipped_mri)}, unpaired: {len(dropped)})"
        )

    rng = np.random.default_rng(seed)
    va_ids = sorted(pairs["Va"])
    test_ids = (
        va_ids
        if num_test is None or num_test >= len(va_ids)
        else sorted(rng.choice(va_ids, num_test, replace=False).tolist())
    )
    split = {"training": [], "validation": [], "test": test_ids}
    if pairs["Tr"]:
        tr_split = split_by_patient(sorted(pairs["Tr"]), val_fraction, 0.0, seed)
        split["training"], split["validation"] = tr_split["training"], tr_split["validation"]
    used = {c: pairs["Tr"].get(c) or pairs["Va"][c] for s in split.values() for c in s}
    outputs = [out_path, report_path] + ([label_out / p[1].name for p in used.values()] if remap_from else [])
    refuse_overwrite(outputs, overwrite, inputs=[p for pair in used.values() for p in pair])

    if check_labels or remap_from:  # grids first (headers only): a bad case stops the run before anything is written
        for image, label in used.values():
            check_same_grid(image, load_nifti(image), label, load_nifti(label))

    entries: dict[str, dict[str, Any]] = {}
    cases: list[dict[str, Any]] = []
    for case_id in sorted(used):
        image, label = used[case_id]
        entry = {"case_id": case_id, "image": str(image), "label": str(label)}
        row: dict[str, Any] = {"case_id": case_id, "image": str(image), "label": str(label)}
        if check_labels or remap_from:
            label_img = load_nifti(label)
            ids = load_labels(label, label_img)
            if remap_from:
                row["source_ids"] = present_ids(ids)
                ids = remap_labels(ids, REMAPS[remap_from])
                entry["label"] = str(save_label_like(ids, label_img, label_out / label.name))
                row["written"] = entry["label"]
            present = present_ids(ids)
            row["ids"] = present
            row["unexpected_ids"] = [i for i in present if i not in AMOS_LABELS]
        entries[case_id] = entry
        cases.append(row)

    split_of = {c: s for s, ids in split.items() for c in ids}
    report_data = {
        "root": str(root_path.resolve()),
        "datalist": str(out_path.resolve()),
        "settings": {"val_fraction": val_fraction, "num_test": num_test, "seed": seed, "remap_from": remap_from},
        "counts": {
            "ct_pairs_Tr": len(pairs["Tr"]),
            "ct_pairs_Va": len(pairs["Va"]),
            "skipped_mri": len(skipped_mri),
            "dropped": len(dropped),
            "unused_Va": len(va_ids) - len(test_ids),
            **{s: len(ids) for s, ids in split.items()},
        },
        "notes": (
            [f"--num_test {num_test} requested, only {len(va_ids)} labelled CT validation case(s)"]
            if num_test is not None and num_test > len(va_ids)
            else []
        ),
        "skipped_mri_cases": skipped_mri,
        "dropped": dropped,
        "ignored_files": ignored,
        "dataset_json": dataset_json,
        "cases": [{**r, "split": split_of[r["case_id"]]} for r in cases],
    }
    extra = {"labels": {str(k): v for k, v in AMOS_LABELS.items()}}
    write_prepared(entries, split, out_path, ("image", "label"), report_data, report_path, extra)

    print_table(
        [
            (
                r["case_id"],
                split_of[r["case_id"]],
                " ".join(map(str, r.get("ids", []))) or "-",
                " ".join(map(str, r.get("unexpected_ids", []))) or "",
            )
            for r in cases
        ],
        ("case_id", "split", "label ids", "unexpected ids"),
    )
    for d in dropped:
        print(f"dropped {d['case_id']} ({d['part']}): {d['reason']}")
    c = report_data["counts"]
    print(
        f"\nCT pairs: {c['ct_pairs_Tr']} in *Tr, {c['ct_pairs_Va']} in *Va; MRI cases skipped: {c['skipped_mri']}; "
        f"unpaired dropped: {c['dropped']}; training/validation/test = {c['training']}/{c['validation']}/{c['test']}"
        + "".join(f"\nnote: {n}" for n in report_data["notes"])
        + (
            f"\ndataset.json label names differ: {dataset_json['label_differences']}"
            if dataset_json and dataset_json["label_differences"]
            else ""
        )
        + f"\ndatalist: {out_path}\nreport:   {report_path}"
    )
    return str(out_path)


if __name__ == "__main__":
    run_cli(prepare_amos)
