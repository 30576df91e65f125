"""AortaDiff bundle end to end through ``monai.bundle`` (tiny phantoms, tiny net, 2 iterations, CPU)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from ignite.engine import Events
from monai.bundle import ConfigParser
from monai.bundle import run as bundle_run
from monai.bundle.utils import DEFAULT_MLFLOW_SETTINGS
from monai.engines import IterationEvents, default_prepare_batch
from monai.handlers import StatsHandler, TensorBoardStatsHandler
from monai.networks.schedulers import DDPMScheduler

from tools.aortadiff.inputs import check_aorta_inputs
from tools.aortadiff.loss import TERM_NAMES, AortaDiffLoss
from tools.data.phantoms import ensure_phantoms

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "bundles" / "aortadiff_cect" / "configs"
SHARED = REPO.parent / "shared"
TINY = {
    "phantom_cases": 4, "phantom_size": 32, "phantom_slices": 8, "image_size": 32, "roi_margin": 2,
    "network_channels": [8, 16], "attention_levels": [False, True], "num_res_blocks": 1, "num_head_channels": 8,
    "norm_num_groups": 8, "use_flash_attention": False, "amp": False, "device": "$torch.device('cpu')",
}


@pytest.fixture(scope="module")
def phantom_dir(tmp_path_factory) -> Path:
    """Tiny AAA phantoms (the TINY parameters), made once for the module."""
    out = tmp_path_factory.mktemp("aortadiff_phantoms") / "aaa"
    ensure_phantoms("aaa", out, cases=TINY["phantom_cases"], seed=0, size=TINY["phantom_size"],
                    slices=TINY["phantom_slices"])
    return out


@pytest.fixture(scope="module")
def trained(tmp_path_factory, phantom_dir):
    """Train 2 iterations (validation once) with a random-backbone LPIPS; returns the folders used."""
    root = tmp_path_factory.mktemp("aortadiff")
    paths = {"dataset_dir": str(phantom_dir), "ckpt_dir": str(root / "models"), "output_dir": str(root / "runs")}
    bundle_run("training", config_file=[str(CONFIGS / "train.json")], logging_file=str(CONFIGS / "logging.conf"),
               **TINY, **paths, iterations=2, val_interval=2, batch_size=4, num_workers=0,
               lpips_pretrained_backbone=False, val_inference_steps=2, val_slices_per_case=1, val_batch_size=1)
    return root, paths


def _infer(paths: dict, out: Path, **kw) -> None:
    kw = {"num_inference_steps": 2, **kw}
    bundle_run("inference", config_file=[str(CONFIGS / "inference.json")], logging_file=str(CONFIGS / "logging.conf"),
               **TINY, dataset_dir=paths["dataset_dir"], ckpt_dir=paths["ckpt_dir"], output_dir=str(out),
               sampler="ddim", progress=False, **kw)


def test_training_writes_plain_model_pt_and_a_full_checkpoint(trained):
    root, paths = trained
    model = torch.load(Path(paths["ckpt_dir"]) / "model.pt", map_location="cpu", weights_only=True)
    assert all(torch.is_tensor(v) for v in model.values())  # model-zoo's models/model.pt: the EMA state dict
    assert any(k.startswith("mask_head.") for k in model) and any(k.startswith("image_head.") for k in model)
    full = sorted(Path(paths["ckpt_dir"]).glob("training_state_checkpoint_*.pt"))
    others = {p.name for p in Path(paths["ckpt_dir"]).glob("*.pt")} - {p.name for p in full}
    assert full and "model.pt" in others and others <= {"model.pt", "model_best.pt"}, others  # one full-state kind
    ckpt = torch.load(full[-1], map_location="cpu", weights_only=True)
    assert {"network", "ema_network", "optimizer", "lr_scheduler", "loss_weighting", "trainer"} <= set(ckpt)
    assert all(torch.equal(ckpt["ema_network"][k], model[k]) for k in model)
    # the EMA weights differ from the online weights after training steps
    diff = sum(float((ckpt["ema_network"][k].float() - ckpt["network"][k].float()).abs().sum()) for k in model)
    assert diff > 0
    assert "log_vars" in ckpt["loss_weighting"]  # learnable Kendall s1, s2 are saved
    assert list(Path(paths["output_dir"]).glob("events.out.tfevents*"))  # TensorBoard
    with pytest.raises(Exception) as info:  # never overwrite unless asked
        bundle_run("training", config_file=[str(CONFIGS / "train.json")], logging_file=str(CONFIGS / "logging.conf"),
                   **TINY, **paths, iterations=1, val_interval=1, lpips_pretrained_backbone=False)
    chain, err = [], info.value
    while err is not None:
        chain.append(err)
        err = err.__cause__
    # the finished run's state is found (--resume auto) and there is nothing left to train
    assert any(isinstance(e, FileExistsError) and "already reached iteration 2" in str(e) for e in chain)


def test_inference_and_evaluate_keep_geometry(trained):
    root, paths = trained
    datalist = json.loads((Path(paths["dataset_dir"]) / "datalist.json").read_text())
    case = datalist["test"][0]
    ref = nib.load(str(Path(paths["dataset_dir"]) / case["ncct"]))
    out = root / "infer"
    _infer(paths, out, num_samples=2)
    cdir = out / Path(case["case_id"]).name
    for name in ("synthetic_cect", "lumen", "thrombus", "label", "std_hu", "lumen_vote", "mask_entropy"):
        img = nib.load(str(cdir / f"{name}.nii.gz"))
        assert img.shape == ref.shape and np.array_equal(img.affine, ref.affine), name
    aorta = np.asarray(nib.load(str(Path(paths["dataset_dir"]) / case["aorta"])).dataobj) > 0
    label = np.asarray(nib.load(str(cdir / "label.nii.gz")).dataobj)
    assert np.array_equal(label > 0, aorta) and set(np.unique(label)) <= {0, 1, 2}
    assert (cdir / "preview.png").stat().st_size > 1000
    unc = json.loads((cdir / "uncertainty.json").read_text())
    assert unc["uncertainty_measure"] == "mask_entropy" and unc["uncertainty_score"] == unc["mask_entropy"] >= 0
    assert unc["image_std_hu"] > 0 and "low_confidence" not in unc  # no threshold given: no flag
    entropy = np.asarray(nib.load(str(cdir / "mask_entropy.nii.gz")).dataobj)
    assert entropy.min() >= 0 and entropy.max() <= 1 and not entropy[~aorta].any()

    ev = root / "eval"
    bundle_run("evaluate", config_file=[str(CONFIGS / "inference.json"), str(CONFIGS / "evaluate.json")],
               logging_file=str(CONFIGS / "logging.conf"), **TINY, dataset_dir=paths["dataset_dir"],
               ckpt_dir=paths["ckpt_dir"], output_dir=str(ev), sampler="ddim", num_inference_steps=2,
               num_samples=2, progress=False, uncertainty_threshold=-1.0)
    for f in ("metrics_per_slice.csv", "metrics_per_case.csv", "metrics_summary.json", "bland_altman_diameters.png",
              "dice_boxplot.png"):
        assert (ev / f).is_file(), f
    rows = list(csv.DictReader(open(ev / "metrics_per_slice.csv")))
    assert rows and {"psnr", "ssim_roi", "dice_lumen", "diam_max_abs_err_mm", "thrombus_area_err_pct"} <= set(rows[0])
    summary = json.loads((ev / "metrics_summary.json").read_text())
    assert summary["n_cases"] == len(datalist["test"]) and summary["mean"]["psnr"] > 0
    assert summary["lpips"].startswith(("skipped", "computed"))
    assert summary["uncertainty"]["flagged_cases"] == [Path(case["case_id"]).name]  # threshold -1 flags every case
    assert json.loads((ev / "predictions" / Path(case["case_id"]).name / "uncertainty.json").read_text())["low_confidence"]


def test_inference_on_real_lps_cta(trained, tmp_path):
    real = SHARED / "realdata" / "ts_aorta_cta"
    if not real.is_dir():
        pytest.skip(f"real CTA not found at {real} (expected ../shared/realdata beside the checkout)")
    root, paths = trained
    _infer(paths, tmp_path, input_ncct=str(real / "ct_cropped.nii.gz"), input_aorta=str(real / "aorta.nii.gz"),
           slice_batch_size=64, preview=False, num_inference_steps=1)
    ref = nib.load(str(real / "ct_cropped.nii.gz"))
    aorta = np.asarray(nib.load(str(real / "aorta.nii.gz")).dataobj) > 0
    for name in ("synthetic_cect", "lumen", "thrombus", "label"):
        img = nib.load(str(tmp_path / "ct_cropped" / f"{name}.nii.gz"))
        assert img.shape == ref.shape and np.array_equal(img.affine, ref.affine)
        assert nib.aff2axcodes(img.affine) == ("L", "P", "S")
    label = np.asarray(nib.load(str(tmp_path / "ct_cropped" / "label.nii.gz")).dataobj)
    assert np.array_equal(label > 0, aorta)  # orientation round trip: masks land exactly on the input's aorta
    syn = np.asarray(nib.load(str(tmp_path / "ct_cropped" / "synthetic_cect.nii.gz")).dataobj)
    ncct = np.asarray(ref.dataobj).astype(np.float32)
    no_aorta = ~aorta.any((0, 1))
    np.testing.assert_array_equal(syn[..., no_aorta], ncct[..., no_aorta])  # slices without aorta: the NCCT itself
    assert (syn == ncct).mean() > 0.9  # outside the aorta ROI the fusion keeps the NCCT HU exactly


def test_input_errors_name_the_file(tmp_path):
    aff = np.diag([0.8, 0.8, 2.0, 1.0])
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 4), np.float32), aff), str(tmp_path / "ncct.nii.gz"))
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 4), np.uint8), aff), str(tmp_path / "empty.nii.gz"))
    nib.save(nib.Nifti1Image(np.ones((8, 8, 5), np.uint8), aff), str(tmp_path / "other.nii.gz"))
    with pytest.raises(FileNotFoundError, match="missing.nii.gz"):
        check_aorta_inputs(tmp_path / "ncct.nii.gz", tmp_path / "missing.nii.gz")
    with pytest.raises(FileNotFoundError, match="no aorta mask"):
        check_aorta_inputs(tmp_path / "ncct.nii.gz", None)
    with pytest.raises(ValueError, match="other.nii.gz.*not on the grid"):
        check_aorta_inputs(tmp_path / "ncct.nii.gz", tmp_path / "other.nii.gz")
    with pytest.raises(ValueError, match="empty.nii.gz.*empty"):
        check_aorta_inputs(tmp_path / "ncct.nii.gz", tmp_path / "empty.nii.gz")


# ----------------------------------------------------------------------------- the stock SupervisedTrainer iteration
def _parser(configs: list[str], phantom_dir: Path, out: Path, **overrides) -> ConfigParser:
    """train.json + deltas at TINY size, 3 iterations in one epoch, validation once (1 DDIM step, 1 slice)."""
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / c) for c in configs])
    parser.update({**TINY, "dataset_dir": str(phantom_dir), "ckpt_dir": str(out / "models"), "output_dir": str(out / "runs"),
                   "iterations": 3, "val_interval": 3, "batch_size": 4, "num_workers": 0, "log_interval": 1,
                   "lpips_pretrained_backbone": False, "val_at_start": False, "val_inference_steps": 1,
                   "val_slices_per_case": 1, "val_batch_size": 1, **overrides})
    parser.get_parsed_content("initialize")
    return parser


def test_prepare_batch_and_inferer_of_train_json():
    """Noise first, then timesteps (the RNG order of the former iteration); the target carries what the loss needs;
    DiffusionInferer calls network(cat([x_t, ncct]), t) with x_t = scheduler.add_noise(cect, eps, t)."""
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "train.json"))
    prepare_batch = parser.get_parsed_content("train#prepare_batch")
    batch = {"cect": torch.rand(2, 1, 8, 8), "ncct": torch.rand(2, 1, 8, 8), "roi": torch.ones(2, 1, 8, 8),
             "lumen_sdf": torch.zeros(2, 1, 8, 8), "labeled": torch.tensor([1, 0]), "aorta": torch.ones(2, 1, 8, 8)}
    torch.manual_seed(3)
    images, target, args, kwargs = prepare_batch(batch, torch.device("cpu"))
    torch.manual_seed(3)
    noise = torch.randn(2, 1, 8, 8)
    t = torch.randint(0, 1000, (2,))
    assert set(target) == {"x_start", "noise", "timesteps", "roi", "lumen_sdf", "labeled"} and args == ()
    assert torch.equal(images, batch["cect"]) and torch.equal(target["x_start"], batch["cect"])
    assert torch.equal(target["noise"], noise) and torch.equal(target["timesteps"], t)
    assert target["labeled"].dtype == torch.float32 and target["labeled"].tolist() == [1.0, 0.0]
    assert kwargs["mode"] == "concat" and torch.equal(kwargs["condition"], batch["ncct"])
    with pytest.raises(ValueError, match="lumen_sdf"):
        prepare_batch({k: v for k, v in batch.items() if k != "lumen_sdf"}, torch.device("cpu"))

    seen = {}

    def network(x, timesteps, context=None):
        seen.update(x=x, timesteps=timesteps)
        return x[:, :1]

    parser.get_parsed_content("train#inferer")(images, network, **kwargs)
    x_t = DDPMScheduler(1000).add_noise(batch["cect"], noise, t)
    torch.testing.assert_close(seen["x"], torch.cat([x_t, batch["ncct"]], 1))
    assert torch.equal(seen["timesteps"], t)


def test_stock_trainer_reports_the_loss_and_its_terms(phantom_dir, tmp_path):
    """train.json + small.json: MONAI's own SupervisedTrainer iteration fires IterationEvents; the loss in the
    output is what AortaDiffLoss returned; its terms (s1, s2 included) reach StatsHandler and TensorBoard."""
    parser = _parser(["train.json", "small.json"], phantom_dir, tmp_path)
    trainer = parser.get_parsed_content("train#trainer")
    loss_fn = parser.get_parsed_content("loss")
    assert trainer.loss_function is loss_fn and isinstance(loss_fn, AortaDiffLoss)
    weighting = parser.get_parsed_content("loss_weighting")
    assert any(p is weighting.log_vars for g in trainer.optimizer.param_groups for p in g["params"])
    handlers = parser.get_parsed_content("train#handlers")
    stats = next(h for h in handlers if isinstance(h, StatsHandler))
    board = next(h for h in handlers if isinstance(h, TensorBoardStatsHandler))

    returned, at_loss, logged = [], [], []
    loss_fn.register_forward_hook(lambda module, args, out: returned.append(out.detach().clone()))

    @trainer.on(IterationEvents.LOSS_COMPLETED)
    def _at_loss(engine):
        out = engine.state.output
        at_loss.append((out["loss"].detach().clone(), returned[-1], {k: out.get(k) for k in ("s1", "s2")}))

    @trainer.on(Events.ITERATION_COMPLETED)
    def _logged(engine):
        logged.append(stats.output_transform(engine.state.output))

    trainer.run()
    board.close()
    assert len(at_loss) == len(logged) == 3
    for loss, ret, kendall in at_loss:
        assert torch.equal(loss, ret)  # engine.state.output["loss"] is the loss module's return value
        # LossTermsHandler added s1, s2 as one-element tensors (no host sync per iteration; logged as floats)
        assert all(torch.is_tensor(v) and v.numel() == 1 for v in kendall.values())
    for (loss, _, _), scalars in zip(at_loss, logged):
        assert {"loss", *TERM_NAMES} <= set(scalars)
        assert all(np.isfinite(v) for v in scalars.values())
        assert scalars["loss"] == pytest.approx(float(loss))
        assert scalars["loss_lpips"] > 0 and scalars["n_labeled"] >= 1
    assert logged[0]["s1"] == 0.0 and logged[-1]["s1"] != 0.0  # s1 is learned by the trainer's optimiser
    read_loss = ConfigParser({"t": DEFAULT_MLFLOW_SETTINGS["configs"]["trainer"]["output_transform"]}).get_parsed_content("t")
    assert read_loss(trainer.state.output) == pytest.approx(logged[-1]["loss"])  # what --tracking mlflow logs

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "runs")).Reload()
    tags = set(events.Tags()["scalars"])
    assert {"loss", "s1", "s2", "loss_img", "loss_mask"} <= tags
    assert [e.step for e in events.Scalars("s2")] == [1, 2, 3]


@pytest.mark.parametrize("variant", ["train_cdm.json", "train_seg_unet.json"])
def test_baselines_train_on_the_stock_trainer(variant, phantom_dir, tmp_path):
    parser = _parser(["train.json", variant, "small.json"], phantom_dir, tmp_path, seg_channels=[8, 16, 16, 32])
    trainer = parser.get_parsed_content("train#trainer")
    losses = []
    trainer.add_event_handler(IterationEvents.LOSS_COMPLETED, lambda e: losses.append(float(e.state.output["loss"].detach())))
    trainer.run()
    assert len(losses) == 3 and all(np.isfinite(losses))
    if variant == "train_cdm.json":
        assert trainer.network.mask_head is None and trainer.network.out_channels == 1
        terms = parser.get_parsed_content("loss").last_terms
        assert "loss_mask" not in terms and terms["w_mask"] == 0.0 and terms["w_img"] == 1.0
        assert losses[-1] == pytest.approx(terms["loss_img"])  # fixed weights (1, 0): the image term alone
    else:
        assert trainer.prepare_batch is default_prepare_batch
        assert (tmp_path / "models" / "model.pt").is_file()
