"""The comparison methods as bundle configs (SDM, SPADE, Pix2Pix): train a few iterations, evaluate, infer."""

from __future__ import annotations

import csv
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import run

from test_abdomen_bundle import CONFIGS, TINY, _fake_abdomen

LOG = str(CONFIGS / "logging.conf")
# method -> (delta configs, keys that shrink it to the tiny test size)
BASELINES = {
    "sdm": (["sdm.json"], {}),
    "spade": (["gan.json", "spade.json"], {"generator_channels": [16, 8], "spade_hidden_channels": 8,
                                           "discriminator_channels": 8, "discriminator_layers": 2}),
    "pix2pix": (["gan.json", "pix2pix.json"], {"generator_channels": [8, 16], "discriminator_channels": 8,
                                               "discriminator_layers": 2}),
}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return _fake_abdomen(tmp_path_factory.mktemp("abdomen_baselines") / "data")


@pytest.mark.parametrize("method", sorted(BASELINES))
def test_baseline_trains_evaluates_and_infers(method, data, tmp_path):
    deltas, size = BASELINES[method]
    deltas = [str(CONFIGS / d) for d in deltas]
    keys = {**TINY, **size, "datalist": str(data), "ckpt_dir": str(tmp_path / "models"), "output_dir": str(tmp_path / "runs")}

    run("training", config_file=[str(CONFIGS / "train.json"), *deltas], logging_file=LOG,
        iterations=2, val_interval=2, checkpoint_interval=1, save_initial_checkpoint=True, num_val_slices=2,
        val_num_inference_steps=2, **keys)
    models = tmp_path / "models"
    assert {"checkpoint_iteration=0.pt", "checkpoint_iteration=1.pt", "model.pt"} <= {p.name for p in models.glob("*.pt")}
    first = torch.load(models / "checkpoint_iteration=0.pt", weights_only=True)["model"]
    last = torch.load(models / "model.pt", weights_only=True)  # the generator's plain state dict
    assert first.keys() == last.keys()
    assert any(not torch.equal(first[k], last[k]) for k in first if first[k].is_floating_point())  # it trained
    if method == "sdm":
        assert any("mlp_gamma" in k for k in last)  # SPADE normalisation in the diffusion U-Net (decoder, as SDM)
    else:
        state = torch.load(models / "checkpoint_iteration=1.pt", weights_only=True)  # training checkpoints: all of it
        assert {"model", "discriminator", "g_optimizer", "d_optimizer"} <= set(state)
        assert list(models.glob("training_state_checkpoint_*.pt"))  # resumable

    run("evaluate", config_file=[str(CONFIGS / "train.json"), str(CONFIGS / "evaluate.json"), *deltas], logging_file=LOG,
        eval_dir=str(tmp_path / "eval"), checkpoints=[str(models / "model.pt")], eval_sampler="ddim",
        eval_num_inference_steps=2, **keys)
    rows = list(csv.DictReader(open(tmp_path / "eval" / "metrics.csv")))
    assert [r["checkpoint"] for r in rows] == ["model.pt"]  # no segmenter checkpoint: no "real" Dice row
    assert int(rows[0]["num_slices"]) == 4  # the whole test split: every slice of the test case
    for name in ("psnr", "ssim", "ftd"):
        assert np.isfinite(float(rows[0][name]))
    samples = np.load(tmp_path / "eval" / "samples_model.npz")
    assert samples["synthetic"].shape == samples["real"].shape and np.abs(samples["synthetic"]).max() <= 1.0

    src = data.parent / "c1" / "label.nii.gz"
    infer_keys = {k: v for k, v in keys.items() if k not in ("output_dir", "datalist", "batch_size", "num_workers", "segmenter_channels")}
    run("inference", config_file=[str(CONFIGS / "inference.json"), *deltas], logging_file=LOG,
        input_files=[str(src)], output_dir=str(tmp_path / "inference"), sampler="ddim", num_inference_steps=2, **infer_keys)
    out, ref = nib.load(tmp_path / "inference" / "label_synthetic.nii.gz"), nib.load(src)
    assert out.shape == ref.shape
    np.testing.assert_allclose(out.affine, ref.affine)
    assert out.get_fdata().std() > 0
