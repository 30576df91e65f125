"""`make demo`: train, sample and evaluate the three bundles on CT phantoms on the CPU, then summarise.

    python -m tools.demo [--bundles aortadiff_cect,abdomen_semantic_synthesis,cardiac_ldm_ssl]
                         [--output_dir runs/demo] [--jobs 2] [--size demo|tiny] [--isolate]

Each stage is the bundle's own command (printed as the first line of its log,
``<output_dir>/logs/<bundle>.<stage>.log``); the terminal shows one line per finished stage. At the end:
a table of each bundle's main metric for the trained and the untrained network with where its pictures
are, and ``<output_dir>/overview.png`` with a row per bundle; ``<output_dir>/summary.json`` holds the same
numbers and the stage times. The bundles' folders under ``output_dir`` are replaced on every run; the
phantoms in ``cache/phantoms`` are made once and reused.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from tools.demo.plan import BUNDLES, build_plan, out_dirs
from tools.demo.runner import preload, run_stages
from tools.experiments.report import cpu_name, machine_info

__all__ = ["main", "cli", "dataset_dirs"]


def dataset_dirs(repo_root: Path, dataset_root: str | Path | None) -> dict[str, Path]:
    """Where each bundle's phantoms are: ``<dataset_root>/<bundle>``, or the ``dataset_dir`` of its small.json."""
    if dataset_root:
        return {b: Path(dataset_root) / b for b in BUNDLES}
    out = {}
    for b in BUNDLES:
        small = json.loads((repo_root / "bundles" / b / "configs" / "small.json").read_text())
        out[b] = repo_root / small["dataset_dir"]
    return out


def _bundles(bundles: str | Sequence[str] | None) -> list[str]:
    if bundles is None or bundles == "" or bundles == "all":
        return list(BUNDLES)
    items = bundles.split(",") if isinstance(bundles, str) else list(bundles)
    return [str(b).strip() for b in items if str(b).strip()]


def _load() -> str:
    try:
        return " / ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:  # pragma: no cover - platforms without getloadavg
        return "n/a"


def main(bundles: str | Sequence[str] | None = None, output_dir: str = "runs/demo", size: str = "demo",
         jobs: int | None = None, isolate: bool = False, dataset_root: str | None = None, repo_root: str = ".",
         echo=None) -> int:
    """Run the demo; returns the exit code (0: every stage ran)."""
    t0 = time.perf_counter()
    echo = echo or (lambda text: print(text, flush=True))
    root = Path(repo_root)
    chosen = _bundles(bundles)
    stages = build_plan(chosen, output_dir, size=size, repo_root=root, dataset_root=dataset_root)
    cpus = os.cpu_count() or 1
    jobs = int(jobs) if jobs else max(1, min(cpus, 2))
    threads = int(os.environ.get("OMP_NUM_THREADS", "0")) or max(1, cpus // jobs)
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    os.environ.setdefault("MKL_NUM_THREADS", str(threads))
    os.environ.setdefault("PYTHONWARNINGS", "ignore::DeprecationWarning,ignore::FutureWarning")

    out, dirs = Path(output_dir), out_dirs(output_dir)
    logs = out / "logs"
    for b in chosen:
        shutil.rmtree(dirs[b], ignore_errors=True)
        for f in logs.glob(f"{b}.*.log"):
            f.unlink()
    load_start = _load()
    echo(f"demo: {', '.join(chosen)}: {len(stages)} stages, {jobs} at a time, {threads} thread(s) each; "
         f"logs in {logs}/ ({cpu_name()}, {cpus} cores, load average {load_start})")
    preload(logs / "imports.log")
    echo(f"[{time.perf_counter() - t0:5.0f} s] torch + MONAI imported")
    results = run_stages(stages, logs, jobs=jobs, threads=threads, isolate=isolate, echo=echo, t0=t0)

    from tools.demo.overview import write_overview
    from tools.demo.summary import collect, format_table

    rows = collect(dirs, chosen)
    captions = {}
    for r in rows:
        captions.setdefault(r.bundle, f"{r.metric}:\nuntrained {r.untrained}, trained {r.trained}")
    picture, missing = write_overview(dirs, dataset_dirs(root, dataset_root), chosen, out / "overview.png", captions)
    total = time.perf_counter() - t0
    summary = {
        "bundles": chosen, "size": size, "jobs": jobs, "threads": threads, "machine": machine_info(),
        "load_average_start": load_start, "load_average_end": _load(), "wall_s": round(total, 1),
        "stages": [{"stage": r.stage.key, "status": r.status, "seconds": round(r.seconds, 1),
                    "cpu_s": None if r.cpu_s is None else round(r.cpu_s, 1), "command": r.stage.command()}
                   for r in results],
        "table": [vars(r) for r in rows], "overview": str(picture), "overview_missing_rows": missing,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    echo("")
    echo(format_table(rows))
    for b, why in missing.items():
        echo(f"overview: no row for {b} ({why})")
    failed = [r for r in results if r.status != "ok"]
    echo(f"\noverview picture: {picture}; numbers and stage times: {out / 'summary.json'}")
    echo(f"demo {'finished' if not failed else 'FAILED'} in {total:.0f} s "
         f"(load average at start {load_start}, at end {_load()})")
    return 1 if failed else 0


def cli() -> None:
    """Command-line entry (fire)."""
    import fire

    codes: list[int] = []
    try:
        fire.Fire(main, serialize=lambda code: codes.append(code))  # keep the exit code, print nothing
    except ValueError as e:  # a bad --bundles / --size: one line, before any work
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    sys.exit(codes[0] if codes and isinstance(codes[0], int) else 0)
