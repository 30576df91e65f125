"""Cardiac LDM bundle end to end through ``monai.bundle``: train VAE -> train LDM -> generate -> SSL pretrain ->
fine-tune -> evaluate (+ inference), each stage merged over common.json, with tiny overrides on 32x32x16 heart
phantoms; the layout of the configs (one base, stage deltas, a standalone inference.json that matches them)."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser, run

from tools.data.phantoms import ensure_phantoms
from tools.cardiac.latent_scale import load_scale_factor

CONFIGS = Path(__file__).resolve().parents[1] / "bundles" / "cardiac_ldm_ssl" / "configs"
COMMON = str(CONFIGS / "common.json")
SMALL = str(CONFIGS / "small.json")
STAGES = ("train_autoencoder.json", "train_ldm.json", "generate.json", "pretrain_ssl.json", "train.json")

TINY = {
    "image_size": [32, 32, 16],
    "vae_channels": [8, 8, 8],
    "ldm_channels": [8, 8],
    "ldm_attention_levels": [False, True],
    "ldm_num_head_channels": [0, 8],
    "seg_features": [8, 8, 8, 8, 8, 8],
    "num_workers": 0,
    "epochs": 1,
    "val_interval": 1,
}


def _cfg(name: str, *deltas: str) -> list[str]:
    return [COMMON, str(CONFIGS / name), SMALL, *[str(CONFIGS / d) for d in deltas]]


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    root = tmp_path_factory.mktemp("cardiac")
    datalist = ensure_phantoms("heart", root / "data", cases=4, seed=0, size=32, slices=8)
    models = root / "models"
    common = dict(TINY, ckpt_dir=str(models), output_dir=str(root / "runs"), datalist=datalist)
    run("training", config_file=_cfg("train_autoencoder.json"), **common)
    run("training", config_file=_cfg("train_ldm.json"), **common)
    run("run", config_file=_cfg("generate.json"), samples_per_volume=1, num_inference_steps=2, **common)
    run("training", config_file=_cfg("pretrain_ssl.json"), **common)
    run("training", config_file=_cfg("train.json"), **common)
    run("evaluating", config_file=_cfg("train.json", "evaluate.json"), **common)
    return {"root": root, "models": models, "common": common, "datalist": datalist}


def test_stages_write_their_checkpoints_with_model_key(pipeline):
    for name in ("autoencoder.pt", "ldm.pt", "ssl_pretrained.pt"):
        state = torch.load(pipeline["models"] / name, map_location="cpu", weights_only=True)
        assert "model" in state, name
    # the bundle's main network, models/model.pt, is a plain state dict (model-zoo, monai.bundle.load)
    state = torch.load(pipeline["models"] / "model.pt", map_location="cpu", weights_only=True)
    assert state and all(torch.is_tensor(v) for v in state.values()) and "final_conv.bias" in state


def test_ldm_checkpoint_stores_the_scale_factor_used_for_sampling(pipeline):
    value = load_scale_factor(pipeline["models"] / "ldm.pt")
    assert 0 < value < 100
    parser = ConfigParser()
    parser.read_config(_cfg("generate.json"))
    parser.update(pipeline["common"])
    assert parser.get_parsed_content("inferer").scale_factor == pytest.approx(value)


def test_generate_writes_pairs_with_affine_and_datalist(pipeline):
    synth = pipeline["root"] / "runs" / "synthetic"
    entries = json.loads((synth / "datalist.json").read_text())["training"]
    n_train = len(json.loads(Path(pipeline["datalist"]).read_text())["training"])
    assert len(entries) == n_train  # samples_per_volume = 1
    img = nib.load(synth / entries[0]["image"])
    lab = nib.load(synth / entries[0]["label"])
    assert img.shape == lab.shape == (32, 32, 16)
    np.testing.assert_allclose(img.affine, lab.affine)
    spacing = np.linalg.norm(img.affine[:3, :3], axis=0)
    assert np.all(spacing > 1.0) and np.all(spacing < 30.0)  # mm, a real field of view
    assert lab.get_data_dtype() == np.uint8 and set(np.unique(np.asarray(lab.dataobj))) <= set(range(9))
    hu = img.get_fdata()
    assert hu.min() >= -1000.0 - 1e-3 and hu.max() <= 1000.0 + 1e-3
    with pytest.raises(RuntimeError) as err:  # never overwrite unless asked
        run("run", config_file=_cfg("generate.json"), samples_per_volume=1, num_inference_steps=2, **pipeline["common"])
    assert isinstance(err.value.__cause__, FileExistsError) and "datalist.json" in str(err.value.__cause__)


def test_evaluate_writes_table1_layout(pipeline):
    eval_dir = pipeline["root"] / "runs" / "eval" / "ldm_ssl"
    rows = (eval_dir / "dice_table.csv").read_text().splitlines()
    assert rows[0] == "case,Average,AO,LAA,LA,LV,MYO,PA,RA,RV"
    table = json.loads((eval_dir / "dice_table.json").read_text())["mean"]
    assert all(v is None or 0.0 <= v <= 1.0 for v in table.values())
    assert (eval_dir / "dice_bar.png").stat().st_size > 1000


def test_inference_keeps_input_geometry(pipeline):
    test_image = json.loads(Path(pipeline["datalist"]).read_text())["test"][0]["image"]
    src = Path(pipeline["datalist"]).parent / test_image
    out_dir = pipeline["root"] / "inference"
    run("inference", config_file=[str(CONFIGS / "inference.json"), SMALL], input_files=[str(src)],
        output_dir=str(out_dir), ckpt_dir=pipeline["common"]["ckpt_dir"], image_size=TINY["image_size"],
        seg_features=TINY["seg_features"])
    outs = list(out_dir.rglob("*_seg.nii.gz"))
    assert len(outs) == 1
    ref, seg = nib.load(src), nib.load(outs[0])
    assert seg.shape == ref.shape
    np.testing.assert_allclose(seg.affine, ref.affine, atol=1e-4)
    assert set(np.unique(np.asarray(seg.dataobj))) <= set(range(9))


def test_inference_network_and_grid_match_the_training_configs():
    """inference.json is standalone (model-zoo, MONAI Label); it must build the fine-tuned U-Net on the same grid."""
    train, infer = ConfigParser(), ConfigParser()
    train.read_config([COMMON, str(CONFIGS / "train.json")])
    infer.read_config(str(CONFIGS / "inference.json"))
    assert infer["network_def"] == train["unet_def"]
    for key in ("image_size", "fov_fraction", "a_min", "a_max", "num_classes", "seg_features", "ckpt_dir",
                "model_filename", "model_checkpoint", "dataset_dir"):
        assert infer[key] == train[key], key


def test_shared_blocks_are_written_once():
    """Transforms, networks and the phantom datalist live in common.json, not in the stage files."""
    files = {f.name: json.loads(f.read_text()) for f in sorted(CONFIGS.glob("*.json"))
             if f.name not in ("metadata.json", "inference.json")}
    assert set(STAGES) <= set(files) and "common.json" in files
    shared = ("LoadImaged", "Resized", "ScaleIntensityRanged", "ConcatItemsd", "cardiac_augmentations",
              "JointAutoencoderKL", "DiffusionModelUNet", "BasicUNet")
    for name, cfg in files.items():
        text = json.dumps(cfg)
        if name == "common.json":
            assert text.count("ensure_phantoms") == 1 and all(text.count(f'{t}"') == 1 for t in shared)
        else:
            assert "ensure_phantoms" not in text, name
            assert not [t for t in shared if f'{t}"' in text], name
