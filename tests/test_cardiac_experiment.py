"""The cardiac Table 1 rerun (python -m tools.experiments cardiac): budget arithmetic, the paper's crop along z,
generated pairs kept out of the field-of-view crop, pair-quality Dice, the seed summary, and one --quick run end to
end (resumable, results.md section kept apart). No test asserts that a claim of the paper reproduces."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from tools.cardiac.experiment import SECONDS_PER_EPOCH, SHARES, epochs_for_budget
from tools.cardiac.field_of_view import FieldOfViewCropd
from tools.cardiac.pair_quality import per_structure_dice
from tools.cardiac.results import _verdict, summarise
from tools.cardiac.synthetic_pairs import resized_ras_affine
from tools.experiments.__main__ import main

CONFIGS = Path(__file__).resolve().parents[1] / "bundles" / "cardiac_ldm_ssl" / "configs"


def test_epochs_fit_the_shares_of_the_budget():
    e = epochs_for_budget(30, n_seeds=2)
    budget = 30 * 60
    assert e["autoencoder"] * SECONDS_PER_EPOCH["autoencoder"] <= budget * SHARES["autoencoder"]
    assert (e["autoencoder"] + 1) * SECONDS_PER_EPOCH["autoencoder"] > budget * SHARES["autoencoder"]
    per_epoch = 2 * (2 * SECONDS_PER_EPOCH["finetune_real"] + SECONDS_PER_EPOCH["finetune_mixed"])
    assert e["finetune"] * per_epoch <= budget * SHARES["finetune"] < (e["finetune"] + 1) * per_epoch
    assert epochs_for_budget(30, n_seeds=4)["finetune"] < e["finetune"]  # more seeds: fewer epochs each
    assert min(epochs_for_budget(0.01, 2).values()) == 2
    assert sum(SHARES.values()) < 1.0  # something is left for generation and evaluation


def test_per_structure_dice_matches_hand_computed_values():
    pred = np.zeros((4, 4, 4), int)
    lab = np.zeros((4, 4, 4), int)
    pred[:2] = 1            # 32 voxels
    lab[:1] = 1             # 16 voxels, all inside pred: 2 * 16 / 48
    lab[3, 0, 0] = 2        # class 2 only in the label: 0
    d = per_structure_dice(pred, lab)
    assert d[0] == pytest.approx(2 / 3)
    assert d[1] == 0.0
    assert np.isnan(d[2:]).all()  # in neither volume


def test_field_of_view_crop_skips_generated_pairs_and_drops_the_flag():
    crop = FieldOfViewCropd(["image", "label"], fov_fraction=0.5)
    real = {"image": torch.zeros(1, 8, 8, 6), "label": torch.zeros(1, 8, 8, 6)}
    out = crop(real)
    assert out["image"].shape == (1, 4, 4, 6) and out["label"].shape == (1, 4, 4, 6)
    gen = crop({"image": torch.zeros(1, 8, 8, 6), "label": torch.zeros(1, 8, 8, 6), "synthetic": True})
    assert gen["image"].shape == (1, 8, 8, 6) and "synthetic" not in gen
    with pytest.raises(ValueError, match="fov_fraction"):
        FieldOfViewCropd("image", fov_fraction=0.0)


def test_generated_affine_keeps_the_slice_spacing_of_the_z_crop(tmp_path):
    ref = tmp_path / "ref.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((64, 64, 48), np.float32), np.diag([0.5, 0.5, 2.0, 1.0])), ref)
    resized = resized_ras_affine(ref, [32, 32, 32], fov_fraction=0.5)
    kept = resized_ras_affine(ref, [32, 32, 32], fov_fraction=0.5, keep_slice_spacing=True)
    # in-plane: 0.5 of 64 voxels of 0.5 mm on 32 voxels -> 0.5 mm; z: 48 slices squeezed into 32 vs kept at 2 mm
    assert np.diag(resized)[:3] == pytest.approx([0.5, 0.5, 3.0])
    assert np.diag(kept)[:3] == pytest.approx([0.5, 0.5, 2.0])
    centre = lambda a: a[:3, :3] @ np.array([15.5, 15.5, 15.5]) + a[:3, 3]  # noqa: E731
    assert centre(kept) == pytest.approx(centre(resized))  # both centred on the reference's centre


def _pipelines(tmp_path):
    from monai.bundle import ConfigParser

    img = np.full((40, 40, 48), -1000.0, np.float32)
    img[10:30, 10:30, :] = 300.0
    lab = np.zeros((40, 40, 48), np.uint8)
    lab[15:25, 15:25, :] = 2
    aff = np.diag([1.0, 1.0, 2.0, 1.0])
    nib.save(nib.Nifti1Image(img, aff), tmp_path / "img.nii.gz")
    nib.save(nib.Nifti1Image(lab, aff), tmp_path / "lab.nii.gz")
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / f) for f in ("common.json", "train.json", "small.json")])
    parser.update({"datalist": "$None", "fov_fraction": 1.0, "crop_prob": 0.0, "flip_prob": 0.0})
    entry = {"image": str(tmp_path / "img.nii.gz"), "label": str(tmp_path / "lab.nii.gz")}
    return parser, entry


def test_training_crops_a_random_block_along_z_and_validation_keeps_every_slice(tmp_path):
    parser, entry = _pipelines(tmp_path)
    train = parser.get_parsed_content("train#preprocessing")
    val = parser.get_parsed_content("validate#preprocessing")
    v = val(dict(entry))
    assert tuple(v["image"].shape) == (1, 32, 32, 48)  # in-plane resized to the grid, all 48 slices kept
    for seed in range(3):
        train.set_random_state(seed)
        t = train(dict(entry))
        assert tuple(t["image"].shape) == (1, 32, 32, 32) and tuple(t["label"].shape) == (1, 32, 32, 32)
    # the block's position varies: compare crops of a volume whose slices are numbered
    nz = np.arange(48, dtype=np.float32)[None, None, None, :] * np.ones((1, 32, 32, 1), np.float32)
    crop = parser.get_parsed_content("z_crop")
    starts = set()
    for seed in range(8):
        crop.set_random_state(seed)
        starts.add(int(crop({"image": torch.as_tensor(nz), "label": torch.as_tensor(nz)})["image"][0, 0, 0, 0]))
    assert len(starts) > 1 and all(0 <= s <= 16 for s in starts)


def test_seed_summary_mean_std_and_verdicts():
    recs = [{"kind": "method", "method": "scratch", "seed": s, "epochs": 3,
             "dice": {"mean": {"Average": a, "LA": a, "LV": None}}} for s, a in ((0, 0.5), (1, 0.7))]
    t = summarise(recs, ["scratch", "ours"])
    assert list(t) == ["scratch"]
    assert t["scratch"]["Average"]["mean"] == pytest.approx(0.6) and t["scratch"]["Average"]["std"] == pytest.approx(0.1)
    assert t["scratch"]["LV"]["mean"] is None
    assert "**reproduced**" in _verdict((0.05, 0.01), "x", "p")
    assert "not conclusive" in _verdict((0.01, 0.01), "x", "p")
    assert "not reproduced" in _verdict((-0.02, 0.01), "x", "p")


@pytest.mark.slow
def test_quick_experiment_writes_results_and_skips_finished_steps(tmp_path):
    md = tmp_path / "results.md"
    md.write_text("# Results on phantoms\n\n<!-- begin abdomen -->\nkept\n<!-- end abdomen -->\n")
    argv = ["cardiac", "--quick", "--seeds", "0", "--work_dir", str(tmp_path / "work"), "--data_dir",
            str(tmp_path / "data"), "--results_dir", str(tmp_path / "results"), "--results_md", str(md)]
    assert main(argv) == 0
    work = tmp_path / "work"
    assert {p.parent.name for p in work.glob("*/result.json")} == {
        "autoencoder", "ldm", "generate", "ssl", "scratch_seed0", "medical_diffusion_seed0", "ours_seed0",
        "pair_quality", "samplers"}
    ssl = json.loads((work / "ssl" / "result.json").read_text())
    assert ssl["overrides"]["ssl_include_real"] is False  # the paper: SSL on generated images
    ours = json.loads((work / "ours_seed0" / "result.json").read_text())
    md_rec = json.loads((work / "medical_diffusion_seed0" / "result.json").read_text())
    # the two pretrained recipes share one SSL checkpoint and differ only in the fine-tuning data
    assert ours["overrides"]["pretrained_checkpoint"] == md_rec["overrides"]["pretrained_checkpoint"]
    assert md_rec["configs"][-1] == "medical_diffusion.json" and "medical_diffusion.json" not in ours["configs"]
    assert set(ours["dice"]["mean"]) >= {"Average", "LA", "LV", "RA", "RV", "MYO", "AO", "PA", "LAA"}
    out = json.loads((tmp_path / "results" / "cardiac.json").read_text())
    assert set(out["dice_test"]) == {"scratch", "medical_diffusion", "ours"}
    assert 0.0 <= out["pair_quality"]["mean"] <= 1.0
    assert (tmp_path / "results" / "cardiac_pairs.png").stat().st_size > 0
    rows = out["samplers"]["rows"]  # the same seed and number of pairs for every setting, calls = steps
    assert [r["calls_per_volume"] for r in rows] == [4, 2] and len({r["pairs"] for r in rows}) == 1
    assert out["samplers"]["fastest_within_0.01"] in {r["sampler"] for r in rows} | {None}
    assert 0.0 <= out["samplers"]["real_labels_leave_one_out"] <= 1.0
    text = md.read_text()
    assert "kept" in text and "<!-- begin cardiac -->" in text and "Claims:" in text
    # a rerun finds every step finished and trains nothing
    before = (work / "ours_seed0" / "result.json").stat().st_mtime
    assert main(argv) == 0
    assert (work / "ours_seed0" / "result.json").stat().st_mtime == before


def test_sampler_choice_is_the_fewest_calls_within_the_margin_and_label_scores_by_hand():
    from tools.cardiac.sampler_comparison import fastest_within, nearest_label_dice, structures_present

    key = "nearest_real_label_dice"
    rows = [{"sampler": "DDPM 1000", "calls_per_volume": 1000, key: 0.50},
            {"sampler": "DDIM 50", "calls_per_volume": 50, key: 0.52},
            {"sampler": "DDIM 10", "calls_per_volume": 10, key: 0.495},
            {"sampler": "DDIM 5", "calls_per_volume": 5, key: 0.48}]  # 0.02 below: out
    assert fastest_within(rows)["sampler"] == "DDIM 10"
    assert fastest_within(rows, max_drop=0.03)["sampler"] == "DDIM 5"
    assert fastest_within([{"sampler": "x", "calls_per_volume": 1, key: None}]) is None
    a, b = np.zeros((4, 4, 4), np.int64), np.zeros((4, 4, 4), np.int64)
    a[0, 0, :2], a[1, 1, 1], a[2, 2, 2] = 1, 5, 8  # three structures
    b[0, 0, 0] = 1  # one: LA 1 voxel of a's 2
    assert structures_present([a, b]) == 2.0
    # b against a: LA Dice 2 * 1 / 3, the other structures absent from b score 0 -> mean (2/3 + 0 + 0) / 3
    assert nearest_label_dice([b], [a, np.zeros_like(a)]) == pytest.approx(2 / 9)
    assert nearest_label_dice([a, a], [a, a], leave_one_out=True) == pytest.approx(1.0)


def test_a_step_is_claimed_once_by_live_processes(tmp_path):
    import os
    import subprocess

    from tools.cardiac.experiment import Experiment, parse_args

    exp = Experiment(parse_args(["--quick", "--work_dir", str(tmp_path / "work")]))
    assert exp._claim("ssl")  # free: ours
    assert exp._claim("ssl")  # ours already
    (tmp_path / "work" / "ssl" / "running.pid").write_text(str(os.getppid()))  # another live process
    assert not exp._claim("ssl")
    gone = subprocess.Popen(["true"])
    gone.wait()
    (tmp_path / "work" / "ssl" / "running.pid").write_text(str(gone.pid))  # a process that has ended
    assert exp._claim("ssl")
    assert (tmp_path / "work" / "ssl" / "running.pid").read_text() == str(os.getpid())
