"""`make demo` (tools/demo): its plan, its runner, and the whole code path at tiny size."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tools.demo.plan import BUNDLES, SIZES, Stage, build_plan
from tools.demo.runner import run_stages
from tools.figures.slices import most_structures_slice

REPO = Path(__file__).resolve().parents[1]


def _config_files(stage: Stage) -> list[str]:
    i = stage.args.index("--config_file")
    return re.findall(r"'([^']+)'", stage.args[i + 1])


@pytest.mark.parametrize("size", sorted(SIZES))
def test_plan_uses_each_bundles_own_configs_with_small_json_last(size):
    stages = build_plan(BUNDLES, "runs/demo", size=size, repo_root=REPO)
    assert {s.bundle for s in stages} == set(BUNDLES)
    keys = {s.key for s in stages}
    for s in stages:
        assert all(f"{s.bundle}.{n}" in keys for n in s.needs), s.key
        if s.module != "monai.bundle":
            continue
        files = _config_files(s)
        assert all((REPO / f).is_file() for f in files), files
        assert files[-1].endswith("small.json") or files[-2].endswith("small.json"), files  # evaluate.json may follow
        assert f"bundles/{s.bundle}/configs" in files[0]
        # the command printed in the log is the one that runs
        assert shlex.split(s.command()) == ["python", "-m", s.module, *s.args]


def test_plan_evaluates_trained_and_untrained_networks_with_a_fast_sampler():
    stages = {s.key: s for s in build_plan(BUNDLES, "out", size="demo", repo_root=REPO)}
    args = {k: dict(zip(s.args[::1], s.args[1::1])) for k, s in stages.items()}
    ab = args["abdomen_semantic_synthesis.evaluate"]
    # the bundle's learned-range DDPM over 100 respaced steps (better than DDIM, and than 25 steps' speckled slices),
    # a tenth of the paper's 1000
    assert ab["--eval_sampler"] == "ddpm" and int(ab["--eval_num_inference_steps"]) <= 100
    assert args["abdomen_semantic_synthesis.training"]["--val_sampler"] == "ddpm"
    assert "checkpoint_iteration=0.pt" in ab["--checkpoints"] and "model.pt" in ab["--checkpoints"]
    assert args["aortadiff_cect.evaluate_untrained"]["--checkpoint"].endswith("untrained.pt")
    assert args["cardiac_ldm_ssl.evaluate_untrained"]["--model_filename"] == "untrained.pt"
    assert stages["cardiac_ldm_ssl.train"].needs == ("pretrain_ssl",)
    # the demo's cardiac stages: generate.json's own sampler; batches of 2 volumes where a stage trains on volumes
    assert "--scheduler#_target_" not in args["cardiac_ldm_ssl.generate"]
    assert args["cardiac_ldm_ssl.train"]["--batch_size"] == "2" == args["cardiac_ldm_ssl.pretrain_ssl"]["--batch_size"]
    with pytest.raises(ValueError, match="unknown bundle"):
        build_plan(["nope"])


def test_figures_show_the_slice_with_the_most_structures_not_a_full_edge_slice():
    label = np.zeros((8, 8, 5), dtype=np.uint8)
    label[..., 0] = 6  # an edge slice labelled in full with one structure (most foreground)
    label[1:3, 1:3, 2], label[4:6, 4:6, 2], label[6, 6, 2] = 1, 2, 3  # three structures, less foreground
    label[1:4, 1:4, 3], label[5:7, 5:7, 3] = 1, 2  # two structures, more foreground than slice 2
    assert most_structures_slice(label) == 2
    label[0, 0, 4] = 1
    label[7, 7, 4], label[7, 6, 4] = 2, 3  # three structures but the least foreground: the tie goes to slice 2
    assert most_structures_slice(label) == 2


def test_runner_reports_a_failed_stage_with_its_log_and_skips_what_needs_it(tmp_path):
    ok_file = tmp_path / "ok.json"
    ok_file.write_text('{"a": 1}')
    stages = [
        Stage("b", "bad", "json.tool", (str(tmp_path / "missing.json"),)),
        Stage("b", "after_bad", "json.tool", (str(ok_file),), needs=("bad",)),
        Stage("b", "good", "json.tool", (str(ok_file),)),
    ]
    lines: list[str] = []
    results = {r.stage.name: r for r in run_stages(stages, tmp_path / "logs", jobs=2, isolate=True, echo=lines.append)}
    assert results["bad"].status == "failed" and results["after_bad"].status == "skipped"
    assert results["good"].status == "ok"
    assert (tmp_path / "logs" / "b.good.log").read_text().startswith("$ python -m json.tool")
    assert '"a": 1' in (tmp_path / "logs" / "b.good.log").read_text()
    text = "\n".join(lines)
    assert "FAILED" in text and "b.bad.log" in text and "missing.json" in text  # the log's tail is shown


def test_unknown_bundle_is_a_one_line_error(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, "-m", "tools.demo", "--bundles", "nope", "--output_dir", str(tmp_path)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and "unknown bundle" in proc.stderr
    assert not any(tmp_path.iterdir())  # nothing written


def test_demo_tiny_end_to_end(tmp_path):
    """`python -m tools.demo --size tiny`: every stage of the three bundles runs; table, overview and summary."""
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.pop("OMP_NUM_THREADS", None)
    out = tmp_path / "demo"
    proc = subprocess.run([sys.executable, "-m", "tools.demo", "--size", "tiny", "--output_dir", str(out),
                           "--dataset_root", str(tmp_path / "data")], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    planned = build_plan(BUNDLES, out, size="tiny", repo_root=REPO)
    assert [s["stage"] for s in summary["stages"]] == [s.key for s in planned]
    assert all(s["status"] == "ok" for s in summary["stages"])
    assert summary["machine"]["cpu"] and summary["machine"]["cpu_capability"]  # timings depend on the CPU's vectors
    # one status line per stage, no warnings on the terminal, the table printed once
    status = [ln for ln in proc.stdout.splitlines() if re.match(r"\[\s*\d+ s\] \S+\.\S+\s+ok\s", ln)]
    assert len(status) == len(planned)
    assert "Warning" not in proc.stdout + proc.stderr
    assert proc.stdout.count("metric (test split)") == 1
    # every bundle has its numbers for both networks and its row in the overview
    table = summary["table"]
    assert {r["bundle"] for r in table} == set(BUNDLES)
    assert all(r["untrained"] != "-" and r["trained"] != "-" for r in table)
    assert summary["overview_missing_rows"] == {}
    from PIL import Image

    with Image.open(out / "overview.png") as im:
        assert im.size[1] > 2.5 * 0.8 * im.size[0] / 6  # three rows of ~square panels, up to 6 per row
    for s in planned:  # each stage's log starts with the command it ran
        assert (out / "logs" / f"{s.key}.log").read_text().startswith(f"$ python -m {s.module} ")
