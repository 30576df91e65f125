"""``docs/results/cardiac.json``, the figures and the ``cardiac`` section of ``docs/results.md`` from the records."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tools.experiments.report import machine_info, write_json, write_section

STRUCTURES = ("LA", "LV", "RA", "RV", "MYO", "AO", "PA", "LAA")


def _num(v):
    return None if v is None or (isinstance(v, float) and np.isnan(v)) else v


def summarise(records: list[dict], methods) -> dict:
    """Mean and standard deviation over seeds of the test Dice of each method, per structure and mean."""
    out = {}
    for m in methods:
        rows = [r for r in records if r.get("kind") == "method" and r["method"] == m]
        if not rows:
            continue
        entry = {"seeds": [r["seed"] for r in rows], "epochs": rows[0].get("epochs")}
        for key in ("Average", *STRUCTURES):
            vals = [r["dice"].get(key) for r in rows]
            vals = [float(v) for v in vals if isinstance(v, (int, float))]
            entry[key] = {"mean": round(float(np.mean(vals)), 4) if vals else None,
                          "std": round(float(np.std(vals)), 4) if len(vals) > 1 else None,
                          "per_seed": [round(v, 4) for v in vals]}
        out[m] = entry
    return out


def _fmt(cell: dict | None) -> str:
    if not cell or cell.get("mean") is None:
        return "-"
    return f"{cell['mean']:.3f}" + (f" ± {cell['std']:.3f}" if cell.get("std") is not None else "")


def write_results(exp, records: list[dict]) -> None:
    from tools.cardiac.experiment import LABELS, METHODS, PAPER_STD_FRACTION, PAPER_TABLE1_MEAN

    args = exp.args
    table = summarise(records, METHODS)
    steps = {r["step"]: r for r in records}
    pq = steps.get("pair_quality")
    payload = {"paper": "Hu et al., ML4H 2024 (PMLR 259:490-501), Table 1", "command": args.command,
               "size": exp.size["name"], "budget_minutes": args.budget_minutes, "seeds": args.seeds,
               "epochs": exp.epochs, "ssl_include_real": args.ssl_include_real, "paper_table1_mean": PAPER_TABLE1_MEAN,
               "dice_test": table, "pair_quality": pq and pq["dice_generated_label_vs_prediction"],
               "wall_time_s": {r["step"]: r["wall_time_s"] for r in records}, "machine": machine_info()}
    if args.quick:  # the suite's run writes into its own folder only
        write_json(Path(args.work_dir) / "cardiac.json", payload)
        return
    results_dir = Path(args.results_dir)
    write_json(results_dir / "cardiac.json", payload)
    lines = ["## cardiac_ldm_ssl: Hu et al. Table 1 on heart phantoms", "",
             f"Command: `{args.command}` (size {exp.size['name']}, seeds {args.seeds}, epochs {exp.epochs}).", "",
             "| Method | mean | " + " | ".join(STRUCTURES) + " |", "|---|---|" + "---|" * len(STRUCTURES)]
    for m, e in table.items():
        lines.append(f"| {LABELS[m]} | {_fmt(e['Average'])} | " + " | ".join(_fmt(e[s]) for s in STRUCTURES) + " |")
    lines += ["", f"Paper (mean Dice): scratch {PAPER_TABLE1_MEAN['scratch']}, ours {PAPER_TABLE1_MEAN['ours']}; "
              f"std over seeds about {PAPER_STD_FRACTION:.2%} of the mean."]
    if pq:
        d = pq["dice_generated_label_vs_prediction"]
        lines += ["", f"Pair quality ({pq['pairs']} generated pairs): Dice between the generated label and the "
                  f"prediction of {pq['segmenter']} on the generated image: mean {d.get('mean')}; "
                  + ", ".join(f"{s} {d.get(s)}" for s in STRUCTURES) + "."]
    if args.notes:
        lines += ["", args.notes]
    write_section("cardiac", "\n".join(lines), args.results_md)
