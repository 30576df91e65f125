"""MLflow experiment tracking through MONAI's bundle option ``--tracking mlflow`` (docs/tracking.md).

MONAI's ``run(..., tracking="mlflow")`` appends an ``MLFlowHandler`` to ``train#handlers`` (and
``validate#handlers``) of the bundle config and logs the executed config as an artifact. This test
runs a tiny stock MONAI ``SupervisedTrainer`` config (2 epochs x 2 iterations) with tracking into a
local store under tmp_path and reads the run back with MLflow's client. The static check that every
project bundle exposes those handler ids lives in tests/test_bundle_checks.py.
"""

from __future__ import annotations

import json

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
