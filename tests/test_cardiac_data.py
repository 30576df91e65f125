"""Cardiac LDM bundle: augmentation statistics, SSL masking, fragment removal, hold-out split, Dice table."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser

from tools.data.splits import holdout_split
from tools.cardiac.label_cleanup import RemoveSmallFragmentsd, remove_small_fragments
from tools.cardiac.dice_table import TABLE1_ORDER, dice_table, save_dice_table

CONFIGS = Path(__file__).resolve().parents[1] / "bundles" / "cardiac_ldm_ssl" / "configs"


def _parser(name: str, **overrides) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / "common.json"), str(CONFIGS / name)])
    for k, v in overrides.items():
        parser[k] = v
    return parser


def _within(count: int, n: int, p: float, sigmas: float = 4.5) -> bool:
    return abs(count - n * p) <= sigmas * math.sqrt(n * p * (1 - p))


def test_augmentation_flip_and_contrast_probabilities():
    # the VAE, LDM and fine-tuning stages use the same scheme with the paper's probabilities
    for config in ("train_autoencoder.json", "train_ldm.json", "train.json"):
        p = _parser(config)
        assert p["augmentation"]["_target_"] == "tools.cardiac.augment.cardiac_augmentations"
        assert (p["flip_prob"], p["contrast_prob"], p["contrast_shift_hu"]) == (0.2, 0.05, 50.0), config
    parser = _parser("train.json", image_size=[6, 5, 4])
    parser["crop_prob"] = 0.0  # isolate flips and contrast (crop tested below)
    aug = parser.get_parsed_content("augmentation")
    aug.set_random_state(seed=0)
    base = torch.arange(6 * 5 * 4, dtype=torch.float32).reshape(1, 6, 5, 4) * 10.0 - 500.0
    label = (torch.arange(6 * 5 * 4).reshape(1, 6, 5, 4) % 9).float()
    n = 1500
    flips = np.zeros((n, 2), bool)
    boosts = np.zeros(n, bool)
    for i in range(n):
        out = aug({"image": base.clone(), "label": label.clone()})
        img, lab = torch.as_tensor(out["image"]), torch.as_tensor(out["label"])
        found = None
        for fx in (False, True):
            for fy in (False, True):
                dims = [d for d, f in ((1, fx), (2, fy)) if f]
                ref = torch.flip(base, dims) if dims else base
                shift = (img - ref).unique()
                if shift.numel() == 1 and float(shift) in (0.0, 50.0):
                    found = (fx, fy, float(shift) == 50.0)
                    ref_lab = torch.flip(label, dims) if dims else label
                    assert torch.equal(lab, ref_lab), "label must be flipped with the image"
        assert found is not None, "output is not a flip (+ optional 50 HU shift) of the input"
        flips[i] = found[:2]
        boosts[i] = found[2]
    assert _within(flips[:, 0].sum(), n, 0.2), flips[:, 0].mean()
    assert _within(flips[:, 1].sum(), n, 0.2), flips[:, 1].mean()
    assert _within(boosts.sum(), n, 0.05), boosts.mean()
    # the two flips are drawn independently
    assert _within((flips[:, 0] & flips[:, 1]).sum(), n, 0.04)


def test_augmentation_crop_is_resized_back_to_full_size():
    parser = _parser("train.json", image_size=[20, 20, 4], crop_prob=1.0, flip_prob=0.0, contrast_prob=0.0)
    aug = parser.get_parsed_content("augmentation")
    aug.set_random_state(seed=1)
    img = torch.zeros(1, 20, 20, 4)
    img[:, 8:12, 8:12] = 1000.0
    lab = (img > 0).float() * 2
    changed = 0
    for _ in range(30):
        out = aug({"image": img.clone(), "label": lab.clone()})
        assert tuple(out["image"].shape) == (1, 20, 20, 4) and tuple(out["label"].shape) == (1, 20, 20, 4)
        assert set(torch.unique(torch.as_tensor(out["label"])).tolist()) <= {0.0, 2.0}  # nearest for labels
        changed += int((torch.as_tensor(out["label"]) > 0).sum() > (lab > 0).sum())  # zoomed in
    assert changed >= 20


def test_ssl_masking_block_count_size_and_probability():
    parser = _parser("pretrain_ssl.json")
    assert (parser["mask_holes"], parser["mask_min_size"], parser["mask_max_size"], parser["mask_prob"]) == (25, 8, 16, 0.8)
    masking = parser.get_parsed_content("masking")
    masking.set_random_state(seed=0)
    n, applied, sizes_seen = 120, 0, []
    for _ in range(n):
        img = torch.ones(1, 32, 32, 32)
        out = masking({"image": img})["image"]
        dropper = masking.dropper
        if not masking._do_transform:
            assert torch.equal(out, img)
            continue
        applied += 1
        assert len(dropper.hole_coords) == 25
        zero = torch.zeros_like(img, dtype=torch.bool)
        for coords in dropper.hole_coords:
            sizes = [s.stop - s.start for s in coords[1:]]
            assert all(8 <= s <= 16 for s in sizes), sizes
            sizes_seen.append(sizes)
            zero[coords] = True
        assert torch.all(out[zero] == 0) and torch.all(out[~zero] == 1)
    assert _within(applied, n, 0.8)
    # sizes drawn uniformly in 8..16 for every hole (MONAI's own transform drifts towards 16)
    sizes_seen = np.asarray(sizes_seen)
    assert sizes_seen.min() == 8 and sizes_seen.max() == 16
    assert abs(sizes_seen.mean() - 12.0) < 0.3
    last_holes = sizes_seen.reshape(applied, 25, 3)[:, -5:]
    assert abs(last_holes.mean() - 12.0) < 0.5


def test_remove_small_fragments_keeps_largest_component_per_structure():
    lab = np.zeros((20, 20, 20), np.uint8)
    lab[2:10, 2:10, 2:10] = 1          # main LA
    lab[15:17, 15:17, 15:17] = 1       # 8-voxel LA fragment (1.6% of 512): removed
    lab[12:18, 2:8, 2:8] = 2           # LV
    lab[2:6, 14:18, 14:18] = 2         # 64 voxels = 30% of 216: kept with min_fraction 0.1
    lab[19, 19, 19] = 8                # single LAA voxel, its only component: kept
    out = remove_small_fragments(lab, label_ids=range(1, 9), min_fraction=0.1)
    assert out[15:17, 15:17, 15:17].sum() == 0
    assert (out == 1).sum() == 512 and (out == 2).sum() == 216 + 64 and out[19, 19, 19] == 8
    assert (remove_small_fragments(lab, min_fraction=0.5) == 2).sum() == 216
    d = RemoveSmallFragmentsd("label", label_ids=range(1, 9))({"label": torch.as_tensor(lab[None]).float()})
    assert torch.equal(d["label"][0].to(torch.uint8), torch.as_tensor(out))


def test_holdout_split_keeps_a_validation_case():
    entries = [{"i": i} for i in range(5)]
    train, val = holdout_split(entries, 0.1, seed=0)
    assert len(val) == 1 and len(train) == 4 and {e["i"] for e in train + val} == set(range(5))
    assert holdout_split(entries, 0.1, seed=0) == (train, val)
    assert len(holdout_split([{"i": i} for i in range(40)], 0.1)[1]) == 4
    with pytest.raises(ValueError, match="at least 2"):
        holdout_split(entries[:1])


def test_dice_table_layout_and_absent_structure(tmp_path):
    # columns in label order 1 LA, 2 LV, 3 RA, 4 RV, 5 MYO, 6 AO, 7 PA, 8 LAA; LAA absent everywhere
    per_case = np.array([[0.8, 0.9, 0.7, 0.6, 0.5, 0.95, 0.85, np.nan],
                         [0.6, 0.7, 0.5, 0.4, 0.3, 0.75, 0.65, np.nan]])
    table = dice_table(per_case)
    assert list(table) == list(TABLE1_ORDER) == ["Average", "AO", "LAA", "LA", "LV", "MYO", "PA", "RA", "RV"]
    assert table["LAA"] is None and table["AO"] == pytest.approx(0.85) and table["LA"] == pytest.approx(0.7)
    assert table["Average"] == pytest.approx(np.mean([0.7, 0.8, 0.6, 0.5, 0.4, 0.85, 0.75]))
    paths = save_dice_table(table, tmp_path, per_case, ["a", "b"])
    header = paths["csv"].read_text().splitlines()[0]
    assert header == "case,Average,AO,LAA,LA,LV,MYO,PA,RA,RV"
    assert json.loads(paths["json"].read_text())["mean"]["LAA"] is None
    assert paths["png"].stat().st_size > 1000


def test_synthetic_pairs_refuse_to_overwrite_case_files_before_sampling(tmp_path):
    from tools.cardiac.synthetic_pairs import SyntheticPairGenerator

    gen = SyntheticPairGenerator(autoencoder=None, diffusion_model=None, inferer=None, scheduler=None, num_samples=2,
                                 latent_shape=(3, 4, 4, 4), output_dir=tmp_path, affine=np.eye(4))
    assert [p.relative_to(tmp_path).as_posix() for p in gen.case_files()] == [
        "synth_0000/image.nii.gz", "synth_0000/label.nii.gz", "synth_0001/image.nii.gz", "synth_0001/label.nii.gz"]
    (tmp_path / "synth_0001").mkdir()
    (tmp_path / "synth_0001" / "label.nii.gz").write_bytes(b"")  # a case of an earlier run, datalist gone
    with pytest.raises(FileExistsError, match=r"synth_0001/label\.nii\.gz' already exists; pass --overwrite True"):
        gen.run()  # raised before any sampling (the networks here are None)


def test_autoencoder_patches_are_checked_against_the_grid_and_the_downsampling():
    from tools.cardiac.checks import check_vae_patches
    from tools.engines.errors import InputValueError

    check_vae_patches(None, 2, [32, 32, 32], [16, 32, 32])  # whole volumes
    check_vae_patches([16, 16, 16], 2, [32, 32, 32], [16, 32, 32])
    for patch, hint in (([18, 16, 16], "multiple of 4"), ([64, 16, 16], "at most image_size"), ([16, 16], "3 entries")):
        with pytest.raises(InputValueError, match="vae_patch_size") as err:
            check_vae_patches(patch, 2, [32, 32, 32], [16, 32, 32])
        assert hint in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(InputValueError, match="vae_patches_per_volume"):
        check_vae_patches([16, 16, 16], 0, [32, 32, 32], [16, 32, 32])


def test_autoencoder_batches_are_patches_of_the_augmented_volume(tmp_path):
    cfg = Path(__file__).resolve().parents[1] / "bundles" / "cardiac_ldm_ssl" / "configs"
    p = ConfigParser()
    p.read_config([str(cfg / f) for f in ("common.json", "train_autoencoder.json", "small.json")])
    p.update({"dataset_dir": str(tmp_path / "heart"), "phantom_cases": 4, "val_fraction": 0.25,
              "vae_patch_size": [16, 16, 8], "vae_patches_per_volume": 3, "device": "$torch.device('cpu')"})
    batch = next(iter(p.get_parsed_content("train#dataloader")))
    assert tuple(batch["joint"].shape) == (3, 10, 16, 16, 8)  # batch_size 1 x 3 patches, image + 9 one-hot channels
    onehot = batch["joint"][:, 1:]
    assert torch.all(onehot.sum(1) == 1)  # every voxel of a patch keeps exactly one label
