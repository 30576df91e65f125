"""``docs/results/cardiac.json``, the figures and the ``cardiac`` section of ``docs/results.md`` from the records."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tools.experiments.report import machine_info, repo_relative, write_json, write_section

STRUCTURES = ("LA", "LV", "RA", "RV", "MYO", "AO", "PA", "LAA")


def _num(v):
    return None if v is None or (isinstance(v, float) and np.isnan(v)) else v


def _grid(exp) -> str:
    k = exp.size["keys"]
    if not k:
        return "the configs as written"
    grid = "x".join(str(v) for v in k["image_size"])
    return (f"{grid} model grid; {k['phantom_cases']} phantoms of {k['phantom_size']} x {k['phantom_size']} x "
            f"{k['phantom_slices']} voxels")


def summarise(records: list[dict], methods) -> dict:
    """Mean and standard deviation over seeds of the test Dice of each method, per structure and mean."""
    out = {}
    for m in methods:
        rows = [r for r in records if r.get("kind") == "method" and r["method"] == m]
        if not rows:
            continue
        entry = {"seeds": [r["seed"] for r in rows], "epochs": rows[0].get("epochs")}
        for key in ("Average", *STRUCTURES):
            vals = [r["dice"]["mean"].get(key) for r in rows]
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


def _diff(table: dict, a: str, b: str) -> tuple[float, float] | None:
    """(mean Dice of a - mean Dice of b, larger of the two standard deviations over seeds)."""
    if a not in table or b not in table or table[a]["Average"]["mean"] is None or table[b]["Average"]["mean"] is None:
        return None
    std = max(table[a]["Average"]["std"] or 0.0, table[b]["Average"]["std"] or 0.0)
    return table[a]["Average"]["mean"] - table[b]["Average"]["mean"], std


def _verdict(d: tuple[float, float] | None, what: str, paper: str) -> str:
    if d is None:
        return f"- {what}: not measured yet (the run has not finished these steps)."
    delta, std = d
    if delta > 2 * std and delta > 0:
        word = "reproduced"
    elif delta > 0:
        word = "same direction, but within the spread over seeds (not conclusive)"
    else:
        word = "not reproduced"
    return f"- {what} ({paper}): **{word}**: {delta:+.3f} mean Dice here (largest std over seeds {std:.3f})."


def claims(table: dict, pq: dict | None) -> list[str]:
    from tools.cardiac.experiment import PAPER_STD_FRACTION, PAPER_TABLE1_MEAN

    paper_gain = PAPER_TABLE1_MEAN["ours"] - PAPER_TABLE1_MEAN["scratch"]
    out = [_verdict(_diff(table, "ours", "scratch"), "LDM pairs + SSL beat training from scratch",
                    f"paper {PAPER_TABLE1_MEAN['ours']} vs {PAPER_TABLE1_MEAN['scratch']}, {paper_gain:+.4f}"),
           _verdict(_diff(table, "ours", "medical_diffusion"),
                    "fine-tuning on real + generated pairs beats fine-tuning on real only after the same SSL",
                    "paper: ours above the medical-diffusion baseline"),
           _verdict(_diff(table, "medical_diffusion", "scratch"), "SSL on generated images alone beats scratch",
                    "the medical-diffusion baseline of the paper")]
    stds = [(m, e["Average"]["std"] / e["Average"]["mean"]) for m, e in table.items()
            if e["Average"]["std"] is not None and e["Average"]["mean"]]
    if stds:
        out.append("- Spread over seeds (paper: about {:.2%} of the mean Dice): here ".format(PAPER_STD_FRACTION)
                   + ", ".join(f"{m} {r:.1%}" for m, r in stds) + " of the mean.")
    return out


def sampler_lines(rec: dict) -> list[str]:
    """The sampler table of the ``samplers`` step (same LDM, same seed, one pair per training case each)."""
    rows = rec["rows"]
    ref = rows[0]["nearest_real_label_dice"]
    out = [f"Sampler settings of `generate.json` on this LDM (each {rows[0]['pairs']} pairs from the same seed). "
           "Nearest real label: mean structure Dice of each generated label with the most similar real training "
           f"label (real labels among themselves, leave one out: {rec.get('real_labels_leave_one_out')}); pair Dice "
           f"as above (segmenter {rec['segmenter']}):", "",
           "| sampler | calls / volume | s / pair | nearest real label | - paper | pair Dice | structures present (of 8) |",
           "|---|---|---|---|---|---|---|"]
    for r in rows:
        d, p = r["nearest_real_label_dice"], r["pair_dice"]
        out.append(f"| {r['sampler']} | {r['calls_per_volume']:,} | {r['seconds_per_pair']} | {d:.3f} | "
                   f"{d - ref:+.3f} | {'-' if p is None else f'{p:.3f}'} | {r['structures_present']} |")
    out += ["", f"Fewest calls within 0.01 nearest-real-label Dice of the paper's sampler: "
                f"**{rec.get('fastest_within_0.01') or 'none'}**.", ""]
    return out


def write_results(exp, records: list[dict]) -> None:
    from tools.cardiac.experiment import CONFIGS, LABELS, METHODS, PAPER_STD_FRACTION, PAPER_TABLE1_MEAN

    args = exp.args
    table = summarise(records, METHODS)
    steps = {r["step"]: r for r in records}
    pq = steps.get("pair_quality")
    results_dir = Path(args.results_dir)
    payload = {"paper": "Hu et al., ML4H 2024 (PMLR 259:490-501), Table 1", "command": args.command,
               "size": exp.size["name"], "budget_minutes": args.budget_minutes, "seeds": args.seeds,
               "epochs": exp.epochs, "ssl_include_real": args.ssl_include_real, "paper_table1_mean": PAPER_TABLE1_MEAN,
               "paper_std_fraction": PAPER_STD_FRACTION, "dice_test": table,
               "pair_quality": pq and {"segmenter": pq["segmenter"], "pairs": pq["pairs"],
                                       **pq["dice_generated_label_vs_prediction"]},
               "samplers": steps.get("samplers") and {k: steps["samplers"][k] for k in
                                                      ("segmenter", "rows", "real_labels_leave_one_out",
                                                       "fastest_within_0.01")},
               "steps_finished": sorted(steps), "wall_time_s": {r["step"]: r["wall_time_s"] for r in records},
               "machine": {r["step"]: r["machine"] for r in records}}
    write_json(results_dir / "cardiac.json", repo_relative(payload))
    figures = []
    if pq:
        figures = make_figures(exp, steps, results_dir, CONFIGS)
    lines = ["## cardiac_ldm_ssl: Hu et al. Table 1 on heart phantoms", "",
             f"Command: `{args.command}`; size {exp.size['name']} ({_grid(exp)}); "
             f"seeds {args.seeds}; epochs per stage {exp.epochs}. Generative stages and SSL run once (seed 0); "
             "the three fine-tunings run once per seed.", "",
             "Test Dice (mean ± std over seeds) per structure:", "",
             "| Method | mean | " + " | ".join(STRUCTURES) + " |", "|---|---|" + "---|" * len(STRUCTURES)]
    for m, e in table.items():
        lines.append(f"| {LABELS[m]} | {_fmt(e['Average'])} | " + " | ".join(_fmt(e[s]) for s in STRUCTURES) + " |")
    lines += ["", f"Paper (mean Dice): scratch {PAPER_TABLE1_MEAN['scratch']}, ours {PAPER_TABLE1_MEAN['ours']}; "
              f"std over seeds about {PAPER_STD_FRACTION:.2%} of the mean.", ""]
    if pq:
        d = pq["dice_generated_label_vs_prediction"]
        ref = (table.get("scratch", {}).get("Average", {}).get("per_seed") or [None])[0]
        lines += [f"Pair quality ({pq['pairs']} generated pairs): Dice between the generated label and the prediction "
                  f"of the real-data segmenter {pq['segmenter']} on the generated image: mean {d.get('mean')} "
                  f"(the same segmenter on the real test cases: {ref}); "
                  + ", ".join(f"{s} {d.get(s)}" for s in STRUCTURES) + ".", ""]
    lines += ["Claims:", "", *claims(table, pq), ""]
    if steps.get("samplers"):
        lines += sampler_lines(steps["samplers"])
    for f, caption in figures:
        lines += [f"![{caption}](results/{f})", "", f"*{caption}*", ""]
    wall = sum(float(v if not isinstance(v, dict) else sum(v.values())) for v in payload["wall_time_s"].values())
    loads = [r["machine"].get("load_average_1_5_15") for r in records if r.get("machine")]
    lines += [f"Sum of the wall times of the finished steps: {wall / 60:.1f} min on {records[0]['machine']['cpu'] if records else '-'}"
              f" ({records[0]['machine']['cores'] if records else '-'} cores, shared), 1-minute load average "
              f"{min(x[0] for x in loads) if loads else '-'}..{max(x[0] for x in loads) if loads else '-'} "
              "while the steps finished."]
    if args.notes:
        lines += ["", args.notes]
    write_section("cardiac", "\n".join(lines), args.results_md)


def make_figures(exp, steps: dict, results_dir: Path, configs_dir: Path) -> list[tuple[str, str]]:
    """Generated pairs with the real-data segmenter's prediction; one test case segmented by each method (seed 0)."""
    from tools.cardiac.experiment import LABELS
    from tools.cardiac.pair_quality import BundleAutoencoder, pairs_figure, segmentations_figure
    from tools.data.datalist import load_datalist

    seed = min(exp.args.seeds)
    segs = {}
    for m in LABELS:
        rec = steps.get(f"{m}_seed{seed}")
        if rec:
            segs[m] = exp.segmenter(rec)
    if "scratch" not in segs:
        return []
    rec = steps[f"scratch_seed{seed}"]
    datalist = segs["scratch"].datalist
    synth = [dict(e, synthetic=True) for e in load_datalist(
        str(exp.gen_dir / "runs" / "synthetic" / "datalist.json"), "training", required_keys=["image", "label"])]
    real = load_datalist(datalist, "training", required_keys=["image", "label"])[0]
    test = load_datalist(datalist, "test", required_keys=["image", "label"])[0]
    vae = None
    ae_rec = steps.get("autoencoder")
    if ae_rec:
        vae = BundleAutoencoder([configs_dir / c for c in ae_rec["configs"]],
                                Path(ae_rec["overrides"]["ckpt_dir"]) / "autoencoder.pt",
                                **{k: v for k, v in ae_rec["overrides"].items() if "#" not in k})
    pairs_figure(segs["scratch"], synth, real, results_dir / "cardiac_pairs.png", n=5, autoencoder=vae)
    segmentations_figure(segs, test, results_dir / "cardiac_segmentations.png")
    del rec
    return [("cardiac_pairs.png", f"A real training phantom, its reconstruction by the joint VAE, and five generated "
                                  f"pairs: image, (generated) label, prediction of the real-data segmenter (scratch, "
                                  f"seed {seed}) on the image"),
            ("cardiac_segmentations.png", f"A test phantom segmented by each method (seed {seed}; mean Dice in brackets)")]
