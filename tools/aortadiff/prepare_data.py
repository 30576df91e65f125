"""Prepare paired NCCT/CECT aortic data (AortaDiff) as a datalist, with a registration-quality filter.

Expected layout: one folder per case under ``root`` (files may sit in sub-folders of the case folder)::

    root/<case_id>/ncct.nii.gz        non-contrast CT (HU)
    root/<case_id>/cect.nii.gz        contrast-enhanced CT registered onto the NCCT grid (HU)
    root/<case_id>/aorta.nii.gz       aorta (outer wall) mask on the NCCT grid
    root/<case_id>/lumen.nii.gz       optional lumen mask; cases without it become unlabeled pairs
    root/<case_id>/cect_aorta.nii.gz  optional aorta mask segmented on the (registered) CECT, for the QC

File names are glob patterns (``--ncct_pattern "*ncct*.nii.gz"`` ...). When a file matches several
patterns (``ncct_aorta.nii.gz`` matches ``*ncct*`` and ``*aorta*``) it is given to the more specific role:
candidates that also match another role's pattern are set aside while another candidate remains.

Registration QC (AortaDiff): with ``--cect_aorta_pattern``, the Dice between the NCCT-aorta and the
CECT-aorta masks (same voxel grid required) must reach ``--min_dice``; other cases are dropped. Cases with
missing or ambiguous files are dropped too. The report (JSON beside the datalist and a printed table)
lists every case, kept or dropped, with the reason.

Usage::

    python -m tools.aortadiff.prepare_data --root DIR --out DIR/datalist.json \
        [--cect_aorta_pattern "*cect*aorta*.nii.gz" --min_dice 0.8 --val_fraction 0.2 --test_fraction 0.1 --seed 0]
"""

from __future__ import annotations

import fnmatch
from pathlib import Path
from typing import Any

import numpy as np

from tools.data.nifti_io import check_same_grid, load_array, load_nifti
from tools.data.splits import check_fractions, print_table, run_cli, split_by_patient, write_prepared
from tools.engines.output_guard import refuse_overwrite
from tools.metrics.overlap import mask_dice

__all__ = ["find_case_files", "prepare_aaa"]

FILE_KEYS = ("ncct", "cect", "aorta", "lumen")


def _matches(rel: str, pattern: str) -> bool:
    return fnmatch.fnmatch(rel, pattern) or fnmatch.fnmatch(rel.rsplit("/", 1)[-1], pattern)


def find_case_files(case_dir: Path, patterns: dict[str, str | None]) -> tuple[dict[str, Path], dict[str, str]]:
    """Assign the NIfTI files of ``case_dir`` (searched recursively) to roles by glob pattern.

    A role whose pattern matches exactly one file not yet taken gets that file; this repeats until nothing
    changes, so ``ncct_aorta.nii.gz`` (matched by ``*ncct*`` and ``*aorta*``) goes to the aorta once the
    aorta has no other candidate, and ``ncct.nii.gz`` is then the only NCCT left.

    Returns:
        (role -> file, role -> problem) where a problem starts with ``"missing"`` or ``"ambiguous"``.
    """
    files = sorted(p for p in case_dir.rglob("*") if p.is_file() and p.name.endswith((".nii", ".nii.gz")))
    rel = {p: p.relative_to(case_dir).as_posix() for p in files}
    active = {role: pat for role, pat in patterns.items() if pat}
    candidates = {role: [p for p in files if _matches(rel[p], pat)] for role, pat in active.items()}
    found: dict[str, Path] = {}
    changed = True
    while changed:
        changed = False
        for role in active:
            free = [p for p in candidates[role] if p not in found.values()]
            if role not in found and len(free) == 1:
                found[role], changed = free[0], True
    problems: dict[str, str] = {}
    for role, pattern in active.items():
        if role in found:
            continue
        free = [p for p in candidates[role] if p not in found.values()]
        if free:
            problems[role] = "ambiguous: " + ", ".join(rel[p] for p in free) + f" match {pattern!r}"
        elif candidates[role]:
            taken = ", ".join(f"{rel[p]} ({r})" for r, p in found.items() if p in candidates[role])
            problems[role] = f"missing (the only match(es) of {pattern!r} are used as {taken})"
        else:
            problems[role] = f"missing (no file matches {pattern!r})"
    return found, problems


def prepare_aaa(
    root: str,
    out: str,
    ncct_pattern: str = "*ncct*.nii.gz",
    cect_pattern: str = "*cect*.nii.gz",
    aorta_pattern: str = "*aorta*.nii.gz",
    cect_aorta_pattern: str | None = None,
    lumen_pattern: str | None = "*lumen*.nii.gz",
    min_dice: float = 0.8,
    val_fraction: float = 0.2,
    test_fraction: float = 0.1,
    seed: int = 0,
    patient_regex: str | None = None,
    report: str | None = None,
    overwrite: bool = False,
) -> str:
    """Write a datalist of NCCT/CECT pairs from a folder-per-case layout; return the datalist path.

    Args:
        root: folder holding one sub-folder per case.
        out: datalist JSON to write; entries ``{"case_id", "ncct", "cect", "aorta"[, "lumen"]}`` with paths
            relative to its folder.
        ncct_pattern: glob pattern (file name, or path inside the case folder) of the NCCT (required).
        cect_pattern: glob pattern of the CECT registered onto the NCCT grid (required).
        aorta_pattern: glob pattern of the aorta mask on the NCCT grid (required).
        cect_aorta_pattern: glob pattern of an aorta mask segmented on the CECT; when given, enables the Dice QC.
        lumen_pattern: optional lumen mask; cases without one become unlabeled pairs (no "lumen" key).
        min_dice: cases whose NCCT-aorta vs CECT-aorta Dice is below this are dropped.
        val_fraction: share of the patients in the validation split (at least one patient when > 0).
        test_fraction: share of the patients in the test split (at least one patient when > 0).
        seed: seed of the patient shuffle.
        patient_regex: regex whose first group extracts the patient id from the case folder name (several
            scans of one patient then stay in one split); the case id is the patient id by default.
        report: QC report JSON path (default ``<out stem>_report.json`` beside the datalist).
        overwrite: replace an existing datalist/report.

    Raises:
        FileNotFoundError: ``root`` does not exist.
        ValueError: bad arguments, no case folders, files of one case on different grids, unreadable NIfTI.
        FileExistsError: the datalist or report exists and ``overwrite`` is False (nothing is written).
    """
    root_path, out_path = Path(root).expanduser(), Path(out).expanduser()
    if not root_path.is_dir():
        raise FileNotFoundError(f"--root '{root_path}' is not an existing folder (expected one sub-folder per case)")
    if out_path.suffix != ".json":
        raise ValueError(f"--out '{out_path}' must be a .json file path")
    if isinstance(min_dice, bool) or not isinstance(min_dice, (int, float)) or not 0.0 <= min_dice <= 1.0:
        raise ValueError(f"--min_dice must be a number in [0, 1], got {min_dice!r}")
    check_fractions(val_fraction, test_fraction)
    patterns = {
        "ncct": ncct_pattern,
        "cect": cect_pattern,
        "aorta": aorta_pattern,
        "lumen": lumen_pattern,
        "cect_aorta": cect_aorta_pattern,
    }
    for role in ("ncct", "cect", "aorta"):
        if not isinstance(patterns[role], str) or not patterns[role]:
            raise ValueError(f"--{role}_pattern must be a non-empty glob pattern, got {patterns[role]!r}")
    report_path = Path(report) if report else out_path.with_name(out_path.stem + "_report.json")

    case_dirs = sorted(p for p in root_path.iterdir() if p.is_dir() and not p.name.startswith("."))
    case_dirs = [d for d in case_dirs if any(f.name.endswith((".nii", ".nii.gz")) for f in d.rglob("*"))]
    if not case_dirs:
        raise ValueError(
            f"no case folders with NIfTI files found in --root '{root_path}' (expected root/<case_id>/*.nii.gz)"
        )
    cases = {d.name: find_case_files(d, patterns) for d in case_dirs}
    inputs = [f for found, _ in cases.values() for f in found.values()]
    refuse_overwrite([out_path, report_path], overwrite, inputs=inputs)

    entries: dict[str, dict[str, Any]] = {}
    rows: list[dict[str, Any]] = []
    for case_id, (found, problems) in cases.items():
        row: dict[str, Any] = {"case_id": case_id, "files": {k: str(v) for k, v in found.items()}, "dice": None}
        rows.append(row)
        blocking = {k: v for k, v in problems.items() if not (k == "lumen" and v.startswith("missing"))}
        if blocking:
            row["status"], row["reason"] = "dropped", "; ".join(f"{k} {v}" for k, v in blocking.items())
            continue
        imgs = {role: load_nifti(path) for role, path in found.items()}
        for role in ("cect", "aorta", "lumen"):
            if role in imgs:
                check_same_grid(found["ncct"], imgs["ncct"], found[role], imgs[role])
        if "cect_aorta" in imgs:
            check_same_grid(found["aorta"], imgs["aorta"], found["cect_aorta"], imgs["cect_aorta"])
            dice = mask_dice(
                load_array(found["aorta"], imgs["aorta"]), load_array(found["cect_aorta"], imgs["cect_aorta"])
            )
            row["dice"] = None if np.isnan(dice) else round(dice, 4)
            if np.isnan(dice):
                row["status"], row["reason"] = "dropped", "both aorta masks are empty"
                continue
            if dice < min_dice:
                row["status"], row["reason"] = (
                    "dropped",
                    f"registration QC: aorta Dice {dice:.3f} < min_dice {min_dice}",
                )
                continue
        row["status"], row["reason"] = "kept", "" if "lumen" in found else "no lumen mask: unlabeled pair"
        entries[case_id] = {"case_id": case_id, **{k: str(found[k]) for k in FILE_KEYS if k in found}}

    kept = sorted(entries)
    if not kept:
        _print_report(rows)
        raise ValueError(
            f"no usable case in --root '{root_path}': all {len(rows)} case(s) were dropped (see the table above; "
            "set --ncct_pattern/--cect_pattern/--aorta_pattern/--cect_aorta_pattern/--lumen_pattern "
            "to match the file names)"
        )
    split = split_by_patient(kept, val_fraction, test_fraction, seed, patient_regex)
    split_of = {c: s for s, ids in split.items() for c in ids}
    for row in rows:
        row["split"] = split_of.get(row["case_id"])
    report_data = {
        "root": str(root_path.resolve()),
        "datalist": str(out_path.resolve()),
        "settings": {
            **{f"{k}_pattern": v for k, v in patterns.items()},
            "min_dice": min_dice,
            "val_fraction": val_fraction,
            "test_fraction": test_fraction,
            "seed": seed,
            "patient_regex": patient_regex,
        },
        "counts": {
            "found": len(rows),
            "kept": len(kept),
            "dropped": len(rows) - len(kept),
            "labeled": sum("lumen" in entries[c] for c in kept),
            "unlabeled": sum("lumen" not in entries[c] for c in kept),
            **{s: len(ids) for s, ids in split.items()},
        },
        "dropped": [
            {k: r[k] for k in ("case_id", "reason", "dice", "files")} for r in rows if r["status"] == "dropped"
        ],
        "cases": rows,
    }
    write_prepared(entries, split, out_path, FILE_KEYS, report_data, report_path)
    _print_report(rows)
    c = report_data["counts"]
    print(
        f"\n{c['kept']} of {c['found']} case(s) kept ({c['labeled']} labeled, {c['unlabeled']} unlabeled), "
        f"{c['dropped']} dropped; training/validation/test = {c['training']}/{c['validation']}/{c['test']}\n"
        f"datalist: {out_path}\nreport:   {report_path}"
    )
    return str(out_path)


def _print_report(rows: list[dict[str, Any]]) -> None:
    table = [
        (r["case_id"], r["status"], "" if r["dice"] is None else f"{r['dice']:.3f}", r.get("split") or "", r["reason"])
        for r in rows
    ]
    print_table(table, ("case_id", "status", "dice", "split", "reason"))


if __name__ == "__main__":
    run_cli(prepare_aaa)
