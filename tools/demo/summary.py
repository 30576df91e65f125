"""The demo's closing table: each bundle's main metric for the trained and the untrained network, and its pictures.

Read from the files the bundles' own evaluations write (same split, same sampler for both networks):

- aortadiff_cect: ``eval/metrics_summary.json`` and ``eval_untrained/metrics_summary.json`` (test split):
  ROI PSNR of the synthetic CECT against the real one, and the lumen / thrombus Dice;
- abdomen_semantic_synthesis: ``evaluate/metrics.json`` (rows ``checkpoint_iteration=0.pt`` = untrained,
  ``model.pt`` = trained, ``real`` = the segmenter on the real slices): PSNR against the real slice and the
  downstream segmenter's mean organ Dice on the synthetic slices;
- cardiac_ldm_ssl: ``eval/ldm_ssl/dice_table.json`` and ``eval/untrained/dice_table.json`` (test split):
  mean Dice of the 8 structures.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

__all__ = ["Row", "collect", "format_table", "pictures"]


@dataclass
class Row:
    bundle: str
    metric: str
    untrained: str
    trained: str
    pictures: str


def _json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _f(x: float | None, digits: int = 2) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def pictures(bundle: str, out: Path) -> list[Path]:
    """The pictures of one bundle's demo run that exist."""
    pats = {"aortadiff_cect": ["eval/samples_*.png", "inference/*/preview.png"],
            "abdomen_semantic_synthesis": ["evaluate/samples_model.png"],
            "cardiac_ldm_ssl": ["cardiac_demo.png", "eval/ldm_ssl/dice_bar.png"]}[bundle]
    return [p for pat in pats for p in sorted(out.glob(pat))]


def _where(bundle: str, out: Path) -> str:
    pics = pictures(bundle, out)
    if not pics:
        return "-"
    first = pics[0]
    return str(first.parent / "samples_*.png") if first.name.startswith("samples_") and bundle == "aortadiff_cect" \
        else str(first)


def _aortadiff(out: Path) -> list[Row]:
    t = (_json(out / "eval" / "metrics_summary.json") or {}).get("mean")
    u = (_json(out / "eval_untrained" / "metrics_summary.json") or {}).get("mean")
    where = _where("aortadiff_cect", out)

    def get(m: dict | None, k: str) -> float | None:
        return None if not m or m.get(k) is None else float(m[k])

    def dice(m: dict | None) -> str:
        return "-" if not m else f"{_f(get(m, 'dice_lumen'))} / {_f(get(m, 'dice_thrombus'))}"

    return [Row("aortadiff_cect", "ROI PSNR synthetic vs real CECT (dB)", _f(get(u, "psnr_roi"), 1),
                _f(get(t, "psnr_roi"), 1), where),
            Row("aortadiff_cect", "Dice lumen / thrombus", dice(u), dice(t), "")]


def _abdomen(out: Path) -> list[Row]:
    rows = {r["checkpoint"]: r for r in (_json(out / "evaluate" / "metrics.json") or {}).get("rows", [])}
    t, u, real = rows.get("model.pt"), rows.get("checkpoint_iteration=0.pt"), rows.get("real")

    def get(r: dict | None, k: str, d: int) -> str:
        return "-" if not r or r.get(k) is None else _f(float(r[k]), d)

    ref = f" (real slices {get(real, 'dice_mean', 2)})" if real else ""
    return [Row("abdomen_semantic_synthesis", "PSNR synthetic vs real slice (dB)", get(u, "psnr", 1), get(t, "psnr", 1),
                _where("abdomen_semantic_synthesis", out)),
            Row("abdomen_semantic_synthesis", "segmenter mean Dice on synthetic slices" + ref, get(u, "dice_mean", 2),
                get(t, "dice_mean", 2), "")]


def _cardiac(out: Path) -> list[Row]:
    def avg(variant: str) -> str:
        m = (_json(out / "eval" / variant / "dice_table.json") or {}).get("mean", {})
        return _f(m.get("Average"))

    return [Row("cardiac_ldm_ssl", "test mean Dice, 8 structures", avg("untrained"), avg("ldm_ssl"),
                _where("cardiac_ldm_ssl", out))]


def collect(out_dirs: dict[str, Path], bundles: Sequence[str]) -> list[Row]:
    """The table rows of the bundles run (missing files give '-')."""
    makers = {"aortadiff_cect": _aortadiff, "abdomen_semantic_synthesis": _abdomen, "cardiac_ldm_ssl": _cardiac}
    return [r for b in bundles for r in makers[b](out_dirs[b])]


def format_table(rows: Sequence[Row]) -> str:
    """A plain-text table (bundle, metric, untrained, trained, pictures)."""
    head = Row("bundle", "metric (test split)", "untrained", "trained", "pictures")
    cols = list(asdict(head))
    data = [asdict(head)] + [asdict(r) for r in rows]
    widths = {c: max(len(d[c]) for d in data) for c in cols}
    lines = ["  ".join(d[c].ljust(widths[c]) for c in cols).rstrip() for d in data]
    lines.insert(1, "  ".join("-" * widths[c] for c in cols))
    return "\n".join(lines)
