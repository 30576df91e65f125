"""End to end through monai.bundle: train, inference, evaluate (abdomen_semantic_synthesis, tiny sizes)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser, run
from monai.engines import IterationEvents

from tools.figures.training_curves import read_scalars

BUNDLE = Path(__file__).resolve().parents[1] / "bundles" / "abdomen_semantic_synthesis"
CONFIGS = BUNDLE / "configs"
TINY = {
    "image_size": 32,
    "channels": [8, 16],
    "attention_levels": [False, True],
    "num_res_blocks": 1,
    "norm_num_groups": 8,
    "num_head_channels": 8,
    "segmenter_channels": [8, 16, 16, 16],
    "num_workers": 0,
    "batch_size": 2,
    "device": "$torch.device('cpu')",
}


def _fake_abdomen(root: Path) -> Path:
    """Four tiny abdomen cases (RAS and LPS affines) and their datalist."""
    rng = np.random.default_rng(0)
    entries = []
    yy, xx = np.mgrid[:40, :40]
    for c in range(4):
        img = np.full((40, 40, 4), -1000, np.float32)
        lab = np.zeros((40, 40, 4), np.uint8)
        body = ((xx - 20) / 17) ** 2 + ((yy - 20) / 13) ** 2 < 1
        liver = ((xx - 13) / 6) ** 2 + ((yy - 18) / 5) ** 2 < 1
        spleen = ((xx - 28) / 3.5) ** 2 + ((yy - 22) / 3.5) ** 2 < 1
        for k in range(4):
            img[..., k][body] = -80 + rng.normal(0, 10, body.sum())
            img[..., k][liver], lab[..., k][liver] = 60, 6
            img[..., k][spleen], lab[..., k][spleen] = 45, 1
        aff = np.diag([1.5, 1.5, 3.0, 1.0]) if c % 2 == 0 else np.diag([-1.5, -1.5, 3.0, 1.0])
        (root / f"c{c}").mkdir(parents=True)
        nib.save(nib.Nifti1Image(img, aff), root / f"c{c}" / "image.nii.gz")
        nib.save(nib.Nifti1Image(lab, aff), root / f"c{c}" / "label.nii.gz")
        entries.append({"case_id": f"c{c}", "image": f"c{c}/image.nii.gz", "label": f"c{c}/label.nii.gz"})
    path = root / "datalist.json"
    path.write_text(json.dumps({"training": entries[:2], "validation": entries[2:3], "test": entries[3:]}))
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("abdomen_bundle")
    datalist = _fake_abdomen(root / "data")
    common = {**TINY, "datalist": str(datalist), "ckpt_dir": str(root / "models"), "output_dir": str(root / "runs")}
    run(
        "training",
        config_file=[str(CONFIGS / "train.json")],
        logging_file=str(CONFIGS / "logging.conf"),
        iterations=4,
        val_interval=2,
        checkpoint_interval=2,
        num_val_slices=2,
        val_num_inference_steps=2,
        conditioning="edge_guided",
        **common,
    )
    return root, common


def test_train_writes_checkpoints_and_a_plain_model_pt(trained):
    root, _ = trained
    names = sorted(p.name for p in (root / "models").glob("*.pt"))
    assert {"checkpoint_iteration=2.pt", "checkpoint_iteration=4.pt", "model.pt", "model_best_psnr.pt"} <= set(names)
    state = torch.load(root / "models" / "model.pt", weights_only=True)  # model-zoo's: the state dict itself
    assert all(torch.is_tensor(v) for v in state.values())
    assert any("guide_encoder" in k for k in state)  # the edge-guided network was trained
    periodic = torch.load(root / "models" / "checkpoint_iteration=4.pt", weights_only=True)
    assert {"model", "network", "optimizer"} <= set(periodic)  # training checkpoints keep the optimiser
    # improved DDPM samples with the EMA of the weights: model.pt and the checkpoints' "model" are the EMA copy,
    # "network" the raw weights (4 iterations at decay 0.99 or more: the EMA has barely moved from them)
    assert all(torch.equal(state[k], periodic["model"][k]) for k in state)
    raw = periodic["network"]
    assert any(not torch.equal(state[k], raw[k]) for k in state if raw[k].is_floating_point())
    # a second run finds the finished run's state (--resume auto): nothing left to train, nothing overwritten
    with pytest.raises(RuntimeError) as err:
        run("training", config_file=[str(CONFIGS / "train.json")], iterations=2, val_interval=2,
            conditioning="edge_guided", **trained[1])
    assert isinstance(err.value.__cause__, FileExistsError) and "already reached iteration" in str(err.value.__cause__)


def test_training_logs_the_hybrid_loss_terms(trained):
    """LossTermsHandler + scalar_logs in train.json: TensorBoard has the loss and its mse / vb terms."""
    root, _ = trained
    tags = read_scalars(root / "runs")
    assert {"loss", "mse", "vb", "val_psnr", "val_ssim"} <= set(tags)
    loss, mse, vb = (tags[k][1] for k in ("loss", "mse", "vb"))
    np.testing.assert_allclose(loss, mse + vb, rtol=1e-4)  # lambda * T = 0.001 * 1000 = 1: loss = mse + vb_t


def test_inference_keeps_geometry(trained, tmp_path):
    root, common = trained
    src = root / "data" / "c1" / "label.nii.gz"  # an LPS case
    run(
        "inference",
        config_file=[str(CONFIGS / "inference.json")],
        logging_file=str(CONFIGS / "logging.conf"),
        input_files=[str(src)],
        output_dir=str(tmp_path),
        sampler="ddim",
        num_inference_steps=2,
        conditioning="edge_guided",
        **{k: v for k, v in common.items() if k not in ("output_dir", "datalist", "batch_size", "num_workers", "segmenter_channels")},
    )
    out, ref = nib.load(tmp_path / "label_synthetic.nii.gz"), nib.load(src)
    assert out.shape == ref.shape
    np.testing.assert_allclose(out.affine, ref.affine)
    hu = out.get_fdata()
    assert -160.0 - 1e-3 <= hu.min() and hu.max() <= 240.0 + 1e-3 and hu.std() > 0
    assert (tmp_path / "label_grid.png").is_file()


def test_evaluate_several_checkpoints_with_segmenter_dice(trained, tmp_path):
    root, common = trained
    # a downstream segmenter checkpoint (random weights are enough to exercise the Dice path)
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "train.json"))
    parser.update({"segmenter_channels": TINY["segmenter_channels"]})
    torch.save({"model": parser.get_parsed_content("segmenter_def").state_dict()}, tmp_path / "segmenter.pt")
    run(
        "evaluate",
        config_file=[str(CONFIGS / "train.json"), str(CONFIGS / "evaluate.json")],
        logging_file=str(CONFIGS / "logging.conf"),
        eval_dir=str(tmp_path / "eval"),
        segmenter_checkpoint=str(tmp_path / "segmenter.pt"),
        num_eval_slices=2,
        eval_sampler="ddim",
        eval_num_inference_steps=2,
        conditioning="edge_guided",
        **{**common, "checkpoints": [str(root / "models" / "checkpoint_iteration=2.pt"), str(root / "models" / "model.pt")]},
    )
    rows = list(csv.DictReader(open(tmp_path / "eval" / "metrics.csv")))
    assert [r["checkpoint"] for r in rows] == ["real", "checkpoint_iteration=2.pt", "model.pt"]
    for r in rows[1:]:
        assert np.isfinite(float(r["psnr"])) and np.isfinite(float(r["ssim"]))
        assert 0.0 <= float(r["dice_liver"]) <= 1.0
        assert r["fid"] == "nan" or np.isfinite(float(r["fid"]))
    assert (tmp_path / "eval" / "metrics.png").is_file() and (tmp_path / "eval" / "samples_2.png").is_file()


def test_noise_mean_check_on_the_bundle_network(trained, tmp_path, capsys):
    from tools.abdomen.noise_mean import main
    from tools.demo.untrained import save_untrained

    root, common = trained
    configs = [str(CONFIGS / "train.json"), str(CONFIGS / "evaluate.json")]
    keys = {**common, "conditioning": "edge_guided", "num_eval_slices": 2, "eval_sampler": "ddim",
            "eval_num_inference_steps": 2}
    untrained = save_untrained(configs, str(tmp_path / "untrained.pt"), network_key="network", **keys)
    # MONAI's diffusion U-Net starts with a zero output convolution: no mean reaches eps
    report = main(configs, untrained, seeds=2, timesteps=[999, 10], out=str(tmp_path / "r.json"), **keys)
    assert report["dc_gain"] == {999: 0.0, 10: 0.0}
    assert json.loads((tmp_path / "r.json").read_text())["dc_gain"] == {"999": 0.0, "10": 0.0}
    report = main(configs, str(root / "models" / "model.pt"), seeds=2, **keys)
    assert len(report["psnr"]) == len(report["noise_mean"]) == 2 * 2  # seeds x slices
    assert report["positive"]["n"] + report["negative"]["n"] == 4
    assert "Pearson r" in capsys.readouterr().out
    with pytest.raises(FileExistsError, match="r.json exists"):  # refused before any work
        main(configs, "no_such.pt", out=str(tmp_path / "r.json"), **keys)


def test_segmenter_and_augmentation_report_dice_change(trained, tmp_path):
    root, common = trained
    seg_keys = {
        "segmenter_iterations": 2,
        "segmenter_val_interval": 2,
        "segmenter_batch_size": 2,
        "segmenter_num_val_slices": 2,
        "conditioning": "edge_guided",
        **{**common, "ckpt_dir": str(tmp_path / "models"), "output_dir": str(tmp_path / "runs")},
    }
    (tmp_path / "models").mkdir()
    for name in ("model.pt",):  # the trained diffusion model that paints the synthetic slices
        (tmp_path / "models" / name).write_bytes((root / "models" / name).read_bytes())
    seg_cfg = [str(CONFIGS / "train.json"), str(CONFIGS / "train_segmenter.json")]
    run("training", config_file=seg_cfg, logging_file=str(CONFIGS / "logging.conf"), **seg_keys)
    assert "model" in torch.load(tmp_path / "models" / "segmenter.pt", weights_only=True)
    run(
        "training",
        config_file=[*seg_cfg, str(CONFIGS / "augment.json")],
        logging_file=str(CONFIGS / "logging.conf"),
        num_synthetic_slices=2,
        synthetic_num_inference_steps=2,
        **seg_keys,
    )
    assert (tmp_path / "models" / "segmenter_augmented.pt").is_file()
    assert len(torch.load(tmp_path / "runs" / "synthetic_slices.pt", weights_only=True)) == 2
    report = json.loads((tmp_path / "runs" / "augment_report.json").read_text())
    assert set(report["dice"]) == {"real", "real+synthetic"}
    delta = report["delta_vs_real"]["real+synthetic"]["liver"]
    d_real, d_aug = report["dice"]["real"]["liver"], report["dice"]["real+synthetic"]["liver"]
    assert delta == pytest.approx(d_aug - d_real)


# ---------------------------------------------------------------- one source of truth across the config files
# inference.json stays standalone (model-zoo: ckpt_export / verify_net_in_out / MONAI Label read it alone), so
# the blocks it shares with train.json are written twice; this keeps the two copies equal.
SHARED_WITH_INFERENCE = (
    "bundle_root", "ckpt_dir", "dataset_dir", "phantom_cases", "phantom_size", "phantom_slices", "datalist", "overwrite",
    "seed", "device", "amp", "image_size", "a_min", "a_max", "num_classes", "conditioning", "mask_encoding", "num_train_timesteps",
    "beta_start", "beta_end", "sampler", "num_inference_steps", "channels", "guide_channels", "attention_levels",
    "num_res_blocks", "norm_num_groups", "num_head_channels", "network_def", "network", "scheduler", "sampler_def",
)


def test_inference_config_repeats_train_config_blocks_exactly():
    train = json.loads((CONFIGS / "train.json").read_text())
    inference = json.loads((CONFIGS / "inference.json").read_text())
    differ = [k for k in SHARED_WITH_INFERENCE if train.get(k, "<absent>") != inference.get(k, "<absent>")]
    assert not differ, f"train.json and inference.json disagree on {differ}"


def _parser(files: list[str], overrides: dict) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / f) for f in files])
    parser.update(overrides)
    return parser


def test_deltas_sample_with_the_one_sampler_definition():
    """evaluate.json and augment.json use train.json's sampler_def with their own sampler / step count."""
    base = _parser(["train.json"], {})
    sampler = base.get_parsed_content("sampler_def")
    assert (sampler.sampler, len(sampler.timesteps), sampler.seed) == ("ddim", 5, 0)
    paper = _parser(["train.json", "evaluate.json", "paper_sampler.json"], {}).get_parsed_content("sampler_def")
    assert (paper.sampler, len(paper.timesteps)) == ("ddpm", 1000)
    ev = _parser(["train.json", "evaluate.json"], {"eval_sampler": "ddim", "eval_num_inference_steps": 3, "seed": 5})
    assert ev["evaluation"]["runner"]["sampler"] == "@sampler_def"
    sampler = ev.get_parsed_content("sampler_def")
    assert (sampler.sampler, len(sampler.timesteps), sampler.seed) == ("ddim", 3, 5)
    aug = _parser(["train.json", "train_segmenter.json", "augment.json"], {"synthetic_num_inference_steps": 4})
    assert aug["synthetic"]["pairs"]["sampler"] == "@sampler_def"
    assert aug["synthetic"]["label_dataset"]["transform"] == "@validate#preprocessing"
    sampler = aug.get_parsed_content("sampler_def")
    assert (sampler.sampler, len(sampler.timesteps)) == ("ddim", 4)


# ---------------------------------------------------------------- the trainers' LOSS_COMPLETED event
LOGGERS = ("LossTermsHandler", "StatsHandler", "TensorBoardStatsHandler")  # handlers kept: no validation, no saving


def _tiny_trainer(tmp_path: Path, files: list[str], trainer_id: str, overrides: dict):
    """The trainer ``trainer_id`` of the merged ``files`` at tiny size, with its logging handlers only."""
    datalist = _fake_abdomen(tmp_path / "data")
    parser = _parser(files, {**TINY, "datalist": str(datalist), "ckpt_dir": str(tmp_path / "models"),
                             "output_dir": str(tmp_path / "runs"), **overrides})
    handlers_id = trainer_id.replace("#trainer", "#handlers")
    parser[handlers_id] = [h for h in parser[handlers_id] if str(h["_target_"]).rsplit(".", 1)[-1] in LOGGERS]
    return parser.get_parsed_content(trainer_id), parser.get_parsed_content(handlers_id)


def _record_loss_completed(trainer) -> list[dict]:
    seen: list[dict] = []

    def record(engine) -> None:
        out = engine.state.output
        seen.append({k: float(torch.as_tensor(out[k]).detach()) for k in ("loss", "mse", "vb") if k in out})

    trainer.add_event_handler(IterationEvents.LOSS_COMPLETED, record)
    return seen


def test_diffusion_training_fires_loss_completed_with_finite_loss_and_terms(tmp_path):
    from monai.handlers import StatsHandler, TensorBoardStatsHandler

    trainer, handlers = _tiny_trainer(tmp_path, ["train.json"], "train#trainer", {"iterations": 2, "val_interval": 2})
    seen = _record_loss_completed(trainer)
    trainer.run()
    assert len(seen) == 2
    for s in seen:
        assert math.isfinite(s["loss"]) and s["loss"] > 0
        assert s["loss"] == pytest.approx(s["mse"] + s["vb"], rel=1e-5)  # terms of this very iteration
    loggers = [h for h in handlers if isinstance(h, (StatsHandler, TensorBoardStatsHandler))]
    assert len(loggers) == 2
    for h in loggers:  # what StatsHandler prints and TensorBoardStatsHandler writes, from the decollated output
        logged = h.output_transform(trainer.state.output)
        assert set(logged) == {"loss", "mse", "vb"} and logged["mse"] == pytest.approx(seen[-1]["mse"])
    assert {"loss", "mse", "vb"} <= set(read_scalars(tmp_path / "runs"))


def test_segmenter_training_fires_loss_completed_with_finite_loss(tmp_path):
    trainer, _ = _tiny_trainer(
        tmp_path, ["train.json", "train_segmenter.json"], "segmenter_train#trainer",
        {"segmenter_iterations": 2, "segmenter_val_interval": 2, "segmenter_batch_size": 2},
    )
    seen = _record_loss_completed(trainer)
    trainer.run()
    assert len(seen) == 2 and all(math.isfinite(s["loss"]) and s["loss"] > 0 for s in seen)
