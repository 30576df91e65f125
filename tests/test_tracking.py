"""MLflow experiment tracking through MONAI's bundle option ``--tracking mlflow`` (docs/tracking.md).

MONAI's ``run(..., tracking="mlflow")`` appends an ``MLFlowHandler`` to ``train#handlers`` (and
``validate#handlers``) of the bundle config and logs the executed config as an artifact. This test
runs a tiny stock MONAI ``SupervisedTrainer`` config (2 epochs x 2 iterations) with tracking into a
local store under tmp_path and reads the run back with MLflow's client. The static check that every
project bundle exposes those handler ids lives in tests/test_bundle_checks.py. A second test trains the
AortaDiff bundle at tiny size with settings whose trainer handler logs the loss terms as well.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

mlflow = pytest.importorskip("mlflow", reason="mlflow not installed: pip install -e '.[tracking]'")

TRAIN = {
    "imports": ["$import torch", "$import monai"],
    "bundle_root": ".",
    "output_dir": "$@bundle_root + '/out'",
    "device": "$torch.device('cpu')",
    "epochs": 2,
    "network_def": {"_target_": "BasicUNet", "spatial_dims": 2, "in_channels": 1, "out_channels": 2,
                    "features": [4, 4, 4, 4, 4, 4]},
    "network": "$@network_def.to(@device)",
    "loss": {"_target_": "DiceCELoss", "to_onehot_y": True, "softmax": True},
    "optimizer": {"_target_": "torch.optim.Adam", "params": "$@network.parameters()", "lr": 0.01},
    "train": {
        "dataset": {"_target_": "Dataset", "data": "$[{'image': torch.rand(1, 32, 32), "
                    "'label': (torch.rand(1, 32, 32) > 0.5).float()} for _ in range(4)]"},
        "dataloader": {"_target_": "DataLoader", "dataset": "@train#dataset", "batch_size": 2},
        "handlers": [{"_target_": "StatsHandler", "tag_name": "train_loss",
                      "output_transform": "$monai.handlers.from_engine(['loss'], first=True)"}],
        "trainer": {"_target_": "SupervisedTrainer", "max_epochs": "@epochs", "device": "@device",
                    "train_data_loader": "@train#dataloader", "network": "@network", "loss_function": "@loss",
                    "optimizer": "@optimizer", "train_handlers": "@train#handlers"},
    },
    "training": ["$@train#trainer.run()"],
}


def test_bundle_run_tracking_mlflow_writes_local_store(tmp_path):
    from monai.bundle import run
    from monai.utils import path_to_sqlite_uri

    cfg = tmp_path / "configs" / "train.json"
    cfg.parent.mkdir()
    cfg.write_text(json.dumps(TRAIN))
    out = tmp_path / "out"
    # same as: python -m monai.bundle run training --config_file configs/train.json --tracking mlflow
    #          --bundle_root <tmp> --experiment_name ct_tracking_test --run_name tiny
    run("training", config_file=str(cfg), bundle_root=str(tmp_path), tracking="mlflow",
        experiment_name="ct_tracking_test", run_name="tiny")

    db = out / "mlruns.db"
    assert db.is_file(), "MONAI's default tracking_uri is sqlite:///<output_dir>/mlruns.db"
    client = mlflow.MlflowClient(tracking_uri=path_to_sqlite_uri(str(db)))
    exp = client.get_experiment_by_name("ct_tracking_test")
    assert exp is not None
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1 and runs[0].info.run_name == "tiny" and runs[0].info.status == "FINISHED"
    history = client.get_metric_history(runs[0].info.run_id, "train_loss")
    assert len(history) == 4  # 2 epochs x 2 iterations, one point per iteration
    assert all(0.0 < m.value < 10.0 for m in history)
    # executed config logged as an artifact in the local "mlruns" folder next to the db
    artifacts = list((out / "mlruns").rglob("config_*.json"))
    assert artifacts, f"no config artifact under {out / 'mlruns'}"
    assert json.loads(artifacts[0].read_text())["epochs"] == 2


AORTADIFF = Path(__file__).resolve().parents[1] / "bundles" / "aortadiff_cect"


def test_aortadiff_loss_terms_reach_mlflow(tmp_path):
    """MONAI's default MLflow settings with the trainer handler's ``output_transform`` set to
    ``tools.engines.loss_terms.scalar_logs`` (the one train.json gives StatsHandler / TensorBoardStatsHandler):
    the AortaDiff loss and every term that LossTermsHandler put into the output, s1 and s2 included."""
    from monai.bundle import run
    from monai.bundle.utils import DEFAULT_MLFLOW_SETTINGS
    from monai.utils import path_to_sqlite_uri

    settings = copy.deepcopy(DEFAULT_MLFLOW_SETTINGS)
    settings["configs"]["trainer"]["output_transform"] = "$tools.engines.loss_terms.scalar_logs"
    out = tmp_path / "out"
    run("training", config_file=[str(AORTADIFF / "configs" / "train.json"), str(AORTADIFF / "configs" / "small.json")],
        bundle_root=str(AORTADIFF), tracking=settings, experiment_name="aortadiff_terms", run_name="tiny",
        dataset_dir=str(tmp_path / "phantoms"), ckpt_dir=str(tmp_path / "models"), output_dir=str(out),
        phantom_cases=4, phantom_size=32, phantom_slices=8, image_size=32, roi_margin=2, network_channels=[8, 16],
        attention_levels=[False, True], num_res_blocks=1, num_head_channels=8, norm_num_groups=8,
        use_flash_attention=False, amp=False, device="$torch.device('cpu')", iterations=2, val_interval=2,
        batch_size=4, num_workers=0, lpips_pretrained_backbone=False, val_at_start=False, val_inference_steps=1,
        val_slices_per_case=1, val_batch_size=1)

    client = mlflow.MlflowClient(tracking_uri=path_to_sqlite_uri(str(out / "mlruns.db")))
    runs = client.search_runs([client.get_experiment_by_name("aortadiff_terms").experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    run_id = runs[0].info.run_id
    for name in ("loss", "loss_img", "loss_mse", "loss_lpips", "loss_mask", "n_labeled", "s1", "s2", "w_img", "w_mask"):
        history = client.get_metric_history(run_id, name)
        assert [m.step for m in history] == [1, 2], name  # one point per iteration
    assert client.get_metric_history(run_id, "s1")[0].value == 0.0  # Kendall log-variance, initialised at 0
    assert client.get_metric_history(run_id, "val_lumen_dice")  # validation metrics as before
