"""Patient-level train/validation/test split and datalist output for the data-preparation CLIs, and the
seeded validation hold-out that training configs take from a datalist's training entries.

Every preparation script (``prepare_aaa``, ``prepare_amos``, ``prepare_cardiac``) finds its cases in a
public data set's own layout, then uses this module to

* split the cases **by patient** (never by slice, never by scan of the same patient) with a seed,
* refuse to replace existing outputs unless ``--overwrite`` (checked before anything is written, with
  :func:`tools.engines.output_guard.refuse_overwrite`),
* write the Decathlon-style datalist ``{"training": [...], "validation": [...], "test": [...]}`` with
  file paths relative to the datalist's folder, plus a JSON report.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "SPLITS",
    "check_fractions",
    "holdout_split",
    "patient_of",
    "print_table",
    "run_cli",
    "split_by_patient",
    "write_prepared",
]

SPLITS = ("training", "validation", "test")


def check_fractions(val_fraction: float, test_fraction: float = 0.0) -> None:
    """Raise ``ValueError`` unless both fractions lie in [0, 1) and their sum is below 1."""
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) < 1.0:
            raise ValueError(f"--{name} must be a number in [0, 1), got {value!r}")
    if val_fraction + test_fraction >= 1.0:
        raise ValueError(
            f"--val_fraction + --test_fraction must be < 1 so that training keeps patients, "
            f"got {val_fraction} + {test_fraction}"
        )


def patient_of(case_id: str, patient_regex: str | None = None) -> str:
    """Patient id of ``case_id``: the case id itself, or the first group (else the whole match) of
    ``patient_regex`` searched in it (e.g. ``"^(P\\d+)_"`` groups follow-up scans ``P01_a``, ``P01_b``)."""
    if not patient_regex:
        return case_id
    match = re.search(patient_regex, case_id)
    if match is None:
        raise ValueError(f"--patient_regex {patient_regex!r} does not match case id {case_id!r}")
    return match.group(1) if match.groups() else match.group(0)


def split_by_patient(
    case_ids: Sequence[str],
    val_fraction: float = 0.2,
    test_fraction: float = 0.0,
    seed: int = 0,
    patient_regex: str | None = None,
) -> dict[str, list[str]]:
    """Split case ids into training/validation/test so that no patient is in two splits.

    Patients are shuffled with ``numpy.random.default_rng(seed)``; the validation and test splits get
    ``round(fraction * n_patients)`` patients each, at least one when the fraction is > 0. Training must
    keep at least one patient. Case ids are returned sorted within each split.

    Raises:
        ValueError: bad fractions, duplicate case ids, or too few patients for the requested splits.
    """
    check_fractions(val_fraction, test_fraction)
    if len(set(case_ids)) != len(case_ids):
        dup = sorted(c for c, n in Counter(case_ids).items() if n > 1)
        raise ValueError(f"duplicate case ids {dup}: every case needs a unique id")
    groups: dict[str, list[str]] = {}
    for case_id in case_ids:
        groups.setdefault(patient_of(case_id, patient_regex), []).append(case_id)
    patients = sorted(groups)
    n = len(patients)

    def count(fraction: float) -> int:
        return 0 if fraction <= 0 else max(1, int(math.floor(fraction * n + 0.5)))

    n_val, n_test = count(val_fraction), count(test_fraction)
    if n_val + n_test >= n:
        raise ValueError(
            f"{n} patient(s) cannot fill validation ({n_val}) and test ({n_test}) and keep one for training: "
            f"lower --val_fraction/--test_fraction (got {val_fraction}/{test_fraction})"
        )
    order = np.random.default_rng(seed).permutation(n)
    shuffled = [patients[i] for i in order]
    chosen = {
        "test": shuffled[:n_test],
        "validation": shuffled[n_test : n_test + n_val],
        "training": shuffled[n_test + n_val :],
    }
    return {split: sorted(c for p in chosen[split] for c in groups[p]) for split in SPLITS}


def holdout_split(entries: Sequence[dict], fraction: float = 0.1, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """Split ``entries`` into (training, validation) with ``max(1, round(fraction * n))`` validation entries.

    Seeded hold-out of cases (not slices), e.g. the cardiac LDM paper's 10% validation split for early
    stopping. MONAI's ``partition_dataset`` rounds 10% of fewer than 10 cases down to an empty split; this
    keeps at least one validation case whenever there are two or more cases.

    Raises:
        ValueError: fewer than two entries, or ``fraction`` outside (0, 1).
    """
    if not 0.0 < float(fraction) < 1.0:
        raise ValueError(f"validation fraction must be in (0, 1), got {fraction}")
    entries = list(entries)
    if len(entries) < 2:
        raise ValueError(f"need at least 2 training entries to hold out a validation split, got {len(entries)}")
    n_val = min(len(entries) - 1, max(1, int(round(fraction * len(entries)))))
    order = np.random.default_rng(seed).permutation(len(entries))
    val_idx = set(order[:n_val].tolist())
    train = [e for i, e in enumerate(entries) if i not in val_idx]
    val = [e for i, e in enumerate(entries) if i in val_idx]
    return train, val


def _relative(entry: dict[str, Any], base: Path, file_keys: Sequence[str]) -> dict[str, Any]:
    out = dict(entry)
    for key in file_keys:
        if key in out and out[key] is not None:
            # abspath, not resolve: a symlinked data set stays referenced through the link the user gave
            out[key] = Path(os.path.relpath(os.path.abspath(out[key]), os.path.abspath(base))).as_posix()
    return out


def write_prepared(
    entries: dict[str, dict[str, Any]],
    split: dict[str, list[str]],
    out: str | Path,
    file_keys: Sequence[str],
    report: dict[str, Any] | None = None,
    report_path: str | Path | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write the datalist (and the report) once all checks have passed.

    Args:
        entries: case id -> entry dict holding absolute (or cwd-relative) file paths.
        split: split name -> case ids (from :func:`split_by_patient` or the data set's own split).
        out: datalist JSON path; file paths are written relative to its folder.
        file_keys: the entry keys that hold file paths.
        report: JSON-serialisable report written to ``report_path``.
        extra: extra top-level keys (e.g. ``"labels"``) written after the three splits.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    datalist: dict[str, Any] = {
        name: [_relative(entries[c], out.parent, file_keys) for c in split.get(name, [])] for name in SPLITS
    }
    datalist.update(extra or {})
    out.write_text(json.dumps(datalist, indent=2) + "\n")
    if report is not None and report_path is not None:
        Path(report_path).write_text(json.dumps(report, indent=2, default=_json_default) + "\n")
    return out


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return None if np.isnan(value) else float(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def print_table(rows: Sequence[Sequence[Any]], header: Sequence[str], file=None) -> None:
    """Print ``rows`` as a plain fixed-width table (to stdout by default)."""
    file = file or sys.stdout
    cells = [[str(h) for h in header]] + [["" if v is None else str(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    for i, row in enumerate(cells):
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip(), file=file)
        if i == 0:
            print("  ".join("-" * w for w in widths), file=file)


def run_cli(component: Callable) -> None:
    """Run ``component`` through fire; bad input ends with one ``error: ...`` line and exit status 2."""
    import fire

    try:
        fire.Fire(component)
    except (ValueError, FileNotFoundError, FileExistsError) as e:
        sys.stdout.flush()
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
