"""Tables, figures and claim sentences of the abdomen comparison, from the finished runs' ``result.json`` records.

Writes ``<results_dir>/abdomen.json``, ``abdomen_samples.png`` (mask | real | every method, the same test slices),
``abdomen_convergence.png`` (the three DDPMs at their three checkpoints) and the ``abdomen`` section of results.md.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from tools.abdomen.figures import label_rgb, radiological
from tools.experiments.report import machine_info, repo_relative, write_json, write_section

__all__ = ["final_row", "summarise", "claims", "write_results"]

METRICS = ("ftd", "fid", "psnr", "ssim", "dice_mean")


def _num(v) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")


def final_row(rows: list[dict]) -> dict:
    """The row of the last checkpoint (highest iteration, else ``model.pt``) of one evaluation."""
    ckpt = [r for r in rows if r["checkpoint"] != "real"]
    numbered = [r for r in ckpt if str(r.get("iteration", "")).isdigit()]
    return max(numbered, key=lambda r: int(r["iteration"])) if numbered else ckpt[-1]


def _mean_std(values: list[float]) -> tuple[float, float]:
    v = [x for x in values if math.isfinite(x)]
    if not v:
        return float("nan"), float("nan")
    return float(np.mean(v)), float(np.std(v)) if len(v) > 1 else 0.0


def summarise(records: list[dict]) -> dict:
    """Per method: mean and std over seeds of the final checkpoint's metrics, and the per-checkpoint curve."""
    out: dict = {}
    for rec in (r for r in records if r.get("kind") == "method"):
        m = out.setdefault(rec["method"], {"seeds": [], "final": {}, "curve": {}, "iterations": rec["iterations"]})
        m["seeds"].append(rec["seed"])
        fr = final_row(rec["metrics"])
        for k in METRICS:
            m["final"].setdefault(k, []).append(_num(fr.get(k)))
        for r in rec["metrics"]:
            if str(r.get("iteration", "")).isdigit():
                c = m["curve"].setdefault(r["iteration"], {})
                for k in METRICS:
                    c.setdefault(k, []).append(_num(r.get(k)))
    for m in out.values():
        m["final"] = {k: dict(zip(("mean", "std"), _mean_std(v))) for k, v in m["final"].items()}
        m["curve"] = {it: {k: _mean_std(v)[0] for k, v in c.items()}
                      for it, c in sorted(m["curve"].items(), key=lambda kv: int(kv[0]))}
    return out


def _f(summary: dict, method: str, metric: str = "ftd") -> float:
    return summary.get(method, {}).get("final", {}).get(metric, {}).get("mean", float("nan"))


def claims(summary: dict, augmentation: list[dict], ddpms, labels: dict) -> list[str]:
    """One sentence per claim of the paper: reproduced or not, by how much (FTD standing in for FID)."""
    out = []
    d = {m: _f(summary, m) for m in ddpms if m in summary}
    if len(d) == 3 and all(math.isfinite(v) for v in d.values()):
        spread = (max(d.values()) - min(d.values())) / min(d.values())
        best = min(d, key=d.get)
        out.append(
            f"Paper: the three DDPMs are nearly equal (FID 10.56 / 10.58 / 10.64, spread 0.8 %), mask-guided lowest. "
            f"Here FTD {' / '.join(f'{d[m]:.2f}' for m in ddpms)} (spread {100 * spread:.0f} %), lowest: {labels[best]}. "
            + ("Reproduced: equal within 10 %." if spread <= 0.10 else "Not reproduced: they differ by more than 10 %.")
            + (" Mask-guided lowest: reproduced." if best == "mask_guided" else " Mask-guided lowest: not reproduced.")
        )
    curves = {m: summary[m]["curve"] for m in ddpms if m in summary and summary[m]["curve"]}
    if len(curves) == 3:
        first = {m: next(iter(c.values())).get("ftd", float("nan")) for m, c in curves.items()}
        it = next(iter(curves["mask_guided"])) if "mask_guided" in curves else "?"
        if all(math.isfinite(v) for v in first.values()):
            best = min(first, key=first.get)
            out.append(
                f"Paper: mask-guided converges earlier. At the first checkpoint (iteration {it}) FTD "
                f"{' / '.join(f'{first[m]:.2f}' for m in ddpms)}: "
                + ("reproduced, mask-guided is lowest." if best == "mask_guided"
                   else f"not reproduced, {labels[best]} is lowest.")
            )
    sdm = _f(summary, "sdm")
    if d and math.isfinite(sdm):
        best_d = min(d.values())
        out.append(f"Paper: the DDPMs beat SDM (FID 12.68 vs 10.56). Here best DDPM FTD {best_d:.2f} vs SDM {sdm:.2f}: "
                   + ("reproduced." if best_d < sdm else "not reproduced."))
    gans = {m: _f(summary, m) for m in ("spade", "pix2pix") if math.isfinite(_f(summary, m))}
    if d and gans:
        worst_d = max(d.values())
        ok = all(worst_d < g for g in gans.values())
        out.append(f"Paper: the diffusion models beat the GANs by far (FID about 10 vs SPADE 60.22, Pix2Pix 78.86). "
                   f"Here worst DDPM FTD {worst_d:.2f} vs " + ", ".join(f"{labels[m]} {v:.2f}" for m, v in gans.items())
                   + (": reproduced." if ok else ": not reproduced."))
    if len(gans) == 2:
        out.append(f"Paper: SPADE beats Pix2Pix (60.22 vs 78.86). Here FTD {gans['spade']:.2f} vs {gans['pix2pix']:.2f}: "
                   + ("reproduced." if gans["spade"] < gans["pix2pix"] else "not reproduced."))
    ps = {m: _f(summary, m, "psnr") for m in ddpms if m in summary}
    ss = {m: _f(summary, m, "ssim") for m in ddpms if m in summary}
    if ps:
        out.append(f"Paper: PSNR 16.26 / 16.28 / 16.20 dB and SSIM 0.646 for the DDPMs on AMOS22. Here PSNR "
                   f"{' / '.join(f'{v:.2f}' for v in ps.values())} dB, SSIM {' / '.join(f'{v:.3f}' for v in ss.values())} "
                   "on phantoms at 64 px: different data and size, so the values are not comparable; the paper's point "
                   "that the three are equal in PSNR/SSIM is "
                   + ("reproduced (within 0.5 dB)." if max(ps.values()) - min(ps.values()) <= 0.5 else "not reproduced (more than 0.5 dB apart)."))
    for a in augmentation:
        rep = a["report"]
        if "delta_vs_real" in rep:
            delta = rep["delta_vs_real"]["real+synthetic"]["mean"]
            out.append(f"Augmentation (seed {a['seed']}): mean organ Dice on the real test slices "
                       f"{rep['dice']['real']['mean']:.3f} (real only) -> {rep['dice']['real+synthetic']['mean']:.3f} "
                       f"(real + synthetic from the mask-guided DDPM), change {delta:+.3f}.")
    return out


def _samples_file(run_dir: Path) -> Path | None:
    files = sorted((run_dir / "evaluate").glob("samples_*.npz"))
    numbered = [f for f in files if f.stem.split("_", 1)[1].isdigit()]
    if numbered:
        return max(numbered, key=lambda f: int(f.stem.split("_", 1)[1]))
    return files[-1] if files else None


def sample_figure(path: Path, work: Path, methods, labels: dict, seed: int, a_min: float, a_max: float,
                  rows: int = 4) -> Path | None:
    """mask | real | each method's final samples, on the same test slices (the evaluation's first batch)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = {m: np.load(f) for m in methods if (f := _samples_file(work / f"{m}_seed{seed}")) is not None}
    if not data:
        return None
    ref = next(iter(data.values()))
    n = min(rows, ref["label"].shape[0])
    cols = ["mask", "real", *data]
    fig, axes = plt.subplots(n, len(cols), figsize=(1.8 * len(cols), 1.8 * n), squeeze=False)

    def hu(x):
        return (np.clip(x, -1, 1) + 1) / 2 * (a_max - a_min) + a_min

    for r in range(n):
        axes[r, 0].imshow(label_rgb(radiological(ref["label"][r])), interpolation="nearest")
        axes[r, 1].imshow(radiological(hu(ref["real"][r])), cmap="gray", vmin=a_min, vmax=a_max)
        for c, m in enumerate(data, start=2):
            axes[r, c].imshow(radiological(hu(data[m]["synthetic"][r])), cmap="gray", vmin=a_min, vmax=a_max)
        for c, name in enumerate(cols):
            axes[r, c].set_xticks([])
            axes[r, c].set_yticks([])
            if r == 0:
                axes[r, c].set_title(labels.get(name, name), fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=75)
    plt.close(fig)
    return path


def convergence_figure(path: Path, summary: dict, ddpms, labels: dict) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = {m: summary[m]["curve"] for m in ddpms if m in summary and summary[m]["curve"]}
    if not curves:
        return None
    names = [k for k in ("ftd", "psnr", "ssim", "dice_mean")
             if any(math.isfinite(v.get(k, float("nan"))) for c in curves.values() for v in c.values())]
    fig, axes = plt.subplots(1, len(names), figsize=(3.0 * len(names), 2.6), squeeze=False)
    for ax, k in zip(axes[0], names):
        for m, c in curves.items():
            ax.plot([int(i) for i in c], [v.get(k, float("nan")) for v in c.values()], marker="o", label=labels[m])
        ax.set_title(k.upper() if k != "dice_mean" else "mean organ Dice", fontsize=9)
        ax.set_xlabel("training iteration", fontsize=8)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _cell(summary: dict, m: str, k: str, digits: int) -> str:
    s = summary.get(m, {}).get("final", {}).get(k)
    if not s or not math.isfinite(s["mean"]):
        return "n/a"
    return f"{s['mean']:.{digits}f}" + (f" ± {s['std']:.{digits}f}" if len(summary[m]["seeds"]) > 1 else "")


def markdown(payload: dict, labels: dict) -> str:
    s, paper = payload["summary"], payload["paper_table2"]
    lines = ["## Abdominal semantic synthesis (Zhuang et al.): Table 2 rerun on phantoms", ""]
    lines.append(f"Command: `{payload['command']}`; seeds {payload['seeds']}; size `{payload['size']}`; "
                 f"{' / '.join(map(str, payload['iterations_per_method']))} training iterations per method at batch {payload['batch_size']} "
                 f"(equal budget: {payload['budget_minutes']} idle-machine minutes); wall time summed over the runs "
                 f"{payload['wall_time_s']:.0f} s on {payload['machine']['cores']} cores of {payload['machine']['cpu']} "
                 f"(load average at the end {payload['machine'].get('load_average_1_5_15')}).")
    if payload["missing"]:
        lines.append(f"Not finished (yet): {', '.join(payload['missing'])}.")
    lines += ["", "FTD is this project's weight-free Fréchet texture distance (radiomics-style first-order, GLCM and "
              "sharpness features by scikit-image, z-scored over the pooled real and synthetic test slices; lower is better); it stands in "
              "for FID, which needs Inception weights that are not available offline here"
              + (" (FID column: n/a)." if all(not math.isfinite(v["final"].get("fid", {}).get("mean", float("nan")))
                                                for v in s.values()) else "."),
              "The two are on different scales: compare the ranking, not the values. PSNR/SSIM are on [0, 1] over the "
              "window -160..240 HU; Dice is the downstream segmenter's mean organ Dice on the synthetic slices.", ""]
    lines.append("| Method | FTD (ours) | FID (ours) | PSNR (ours) | SSIM (ours) | Dice (ours) | FID (paper) | PSNR (paper) | SSIM (paper) |")
    lines.append("|---|---|---|---|---|---|---|---|---|")
    for m in [*payload["methods"], "oasis"]:
        p = paper.get(m, {})
        pp = lambda k, d: f"{p[k]:.{d}f}" if k in p else "–"  # noqa: E731
        if m == "oasis":
            lines.append(f"| OASIS | not rerun | | | | | {pp('fid', 2)} | – | – |")
            continue
        lines.append(f"| {labels[m]} | {_cell(s, m, 'ftd', 2)} | {_cell(s, m, 'fid', 2)} | {_cell(s, m, 'psnr', 2)} | "
                     f"{_cell(s, m, 'ssim', 3)} | {_cell(s, m, 'dice_mean', 3)} | {pp('fid', 2)} | {pp('psnr', 2)} | {pp('ssim', 3)} |")
    seg = payload.get("segmenter_real_dice")
    if seg is not None:
        lines.append(f"\nThe segmenter's mean organ Dice on the real test slices: {seg:.3f}.")
    conv = [m for m in payload["methods"] if s.get(m, {}).get("curve")]
    if conv:
        lines += ["", "FTD of the DDPMs at their three checkpoints:", "",
                  "| Method | " + " | ".join(f"it {i}" for i in s[conv[0]]["curve"]) + " |",
                  "|---|" + "---|" * len(s[conv[0]]["curve"])]
        for m in conv:
            if m in ("concat", "mask_guided", "edge_guided"):
                lines.append(f"| {labels[m]} | " + " | ".join(f"{v['ftd']:.2f}" for v in s[m]["curve"].values()) + " |")
    lines += ["", "Claims:", ""] + [f"- {c}" for c in payload["claims"]]
    for fig, caption in (("abdomen_samples.png", "Samples (same test slices, final checkpoints, seed "
                          f"{payload['seeds'][0]})"), ("abdomen_convergence.png", "DDPMs at their three checkpoints")):
        if fig in payload["figures"]:
            lines += ["", f"![{caption}](results/{fig})", "", f"*{caption}.*"]
    if payload.get("notes"):
        lines += ["", payload["notes"]]
    return "\n".join(lines)


def write_results(exp, records: list[dict]) -> dict:
    """Rewrite abdomen.json, the figures and the results.md section from ``records`` (finished runs)."""
    from tools.abdomen.experiment import DDPMS, LABELS, PAPER_TABLE2

    args = exp.args
    records = [r for r in records if r.get("seed") in args.seeds]
    results_dir = Path(args.results_dir)
    summary = summarise(records)
    aug = [r for r in records if r.get("kind") == "augmentation"]
    methods = [m for m in args.methods if m in summary]
    planned = [f"{m}_seed{s}" for s in args.seeds for m in args.methods]
    missing = [p for p in planned if not any(r["run"] == p for r in records)]
    seg_dice = None
    for r in records:
        if r.get("kind") == "method" and r["metrics"] and r["metrics"][0]["checkpoint"] == "real":
            seg_dice = _num(r["metrics"][0].get("dice_mean"))
            break
    figures = {}
    seed = args.seeds[0]
    a_min, a_max = -160.0, 240.0
    if (f := sample_figure(results_dir / "abdomen_samples.png", exp.work, methods, LABELS, seed, a_min, a_max)):
        figures[f.name] = str(f)
    if (f := convergence_figure(results_dir / "abdomen_convergence.png", summary, DDPMS, LABELS)):
        figures[f.name] = str(f)
    wall = sum(v for r in records for v in r.get("wall_time_s", {}).values())
    payload = {
        "command": args.command, "size": "quick" if args.quick else args.size, "seeds": args.seeds,
        "budget_minutes": args.budget_minutes,
        "iterations_per_method": sorted({r["iterations"] for r in records if r.get("kind") == "method"})
        or [exp.iterations],
        "batch_size": exp.common.get("batch_size", 16), "wall_time_s": wall, "machine": machine_info(),
        "methods": methods, "missing": missing, "paper_table2": PAPER_TABLE2,
        "distribution_metrics": {
            "ftd": "weight-free Fréchet texture distance (tools/abdomen/texture_distance.py), always computed",
            "fid": "Inception-v3 FID (tools/abdomen/fid_features.py), only when its ImageNet weights are present",
        },
        "summary": summary, "segmenter_real_dice": seg_dice,
        "claims": claims(summary, aug, DDPMS, LABELS), "figures": figures,
        "notes": args.notes,
        "runs": records,
    }
    write_json(results_dir / "abdomen.json", repo_relative(payload))
    write_section("abdomen", markdown(payload, LABELS), args.results_md)
    return payload
