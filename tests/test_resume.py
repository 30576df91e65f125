"""Resumable training: a CPU training subprocess killed with SIGKILL after its first full-state checkpoint is
started again with the same command and continues from that iteration (same optimiser state) to the planned
end, leaving the killed run's files intact; a NaN loss stops a run with the last good state restored; used
run folders are refused."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigWorkflow
from monai.engines import SupervisedTrainer

from tools.data.phantoms import ensure_phantoms
from tools.engines.errors import InputFileError, OutputExistsError
from tools.engines.resume import TrainingState, check_run_folder, state_files

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "bundles" / "aortadiff_cect" / "configs"
ITERATIONS = 8
TINY = {
    "phantom_cases": 4, "phantom_size": 32, "phantom_slices": 8, "image_size": 32, "roi_margin": 2,
    "network_channels": [8, 16], "attention_levels": [False, True], "num_res_blocks": 1, "num_head_channels": 8,
    "norm_num_groups": 8, "use_flash_attention": False, "amp": False, "iterations": ITERATIONS,
    "val_interval": ITERATIONS, "batch_size": 2, "num_workers": 0, "lpips_weight": 0, "val_inference_steps": 1,
    "val_slices_per_case": 1, "val_batch_size": 1, "state_interval": 2,
}


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _cli(overrides: dict) -> list[str]:
    args = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", str(CONFIGS / "train.json"),
            "--logging_file", str(CONFIGS / "logging.conf")]
    for k, v in overrides.items():
        args += [f"--{k}", repr(v) if isinstance(v, (list, bool)) else str(v)]
    return args


def test_sigkill_then_same_command_resumes(tmp_path):
    data = tmp_path / "aaa"
    ensure_phantoms("aaa", data, cases=4, seed=0, size=32, slices=8)
    paths = {"dataset_dir": str(data), "ckpt_dir": str(tmp_path / "models"), "output_dir": str(tmp_path / "runs"),
             "device": "$torch.device('cpu')"}
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen(_cli({**TINY, **paths}), cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.time() + 300
    try:
        while not state_files(paths["ckpt_dir"]) and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, err.decode()[-2000:]
    before = {f: _sha(f) for f in Path(paths["ckpt_dir"]).iterdir() if f.is_file()}
    states = state_files(paths["ckpt_dir"])
    assert states, "no state file before the kill"
    last = torch.load(states[-1], map_location="cpu", weights_only=True)
    killed_at = last["trainer"]["iteration"]
    assert 2 <= killed_at < ITERATIONS and killed_at % 2 == 0

    # the same command again (in-process, to look inside): it continues from the latest state file
    wf = ConfigWorkflow(config_file=str(CONFIGS / "train.json"), workflow_type="train",
                        logging_file=str(CONFIGS / "logging.conf"), **TINY, **paths)
    wf.initialize()
    trainer = wf.parser.get_parsed_content("train#trainer")
    assert trainer.state.iteration == killed_at
    optim = trainer.optimizer.state_dict()
    assert optim["state"].keys() == last["optimizer"]["state"].keys()
    for k, s in optim["state"].items():
        assert int(s["step"]) == killed_at and torch.equal(s["exp_avg"], last["optimizer"]["state"][k]["exp_avg"])
    assert torch.equal(next(iter(trainer.network.state_dict().values())), next(iter(last["network"].values())))
    wf.run()
    assert trainer.state.iteration == ITERATIONS
    assert (Path(paths["ckpt_dir"]) / f"training_state_checkpoint_{ITERATIONS}.pt").is_file()
    assert (Path(paths["ckpt_dir"]) / "model.pt").is_file()
    for f, sha in before.items():  # the killed run's checkpoints are neither deleted nor rewritten
        assert f.is_file() and _sha(f) == sha, f.name

    # once finished, the same command refuses (nothing to continue) and changes nothing
    after = {f: _sha(f) for f in Path(paths["ckpt_dir"]).iterdir()}
    wf = ConfigWorkflow(config_file=str(CONFIGS / "train.json"), workflow_type="train", **TINY, **paths)
    wf.initialize()
    with pytest.raises(Exception) as info:
        wf.parser.get_parsed_content("train#trainer")
    assert f"already reached iteration {ITERATIONS}" in str(info.value.__cause__ or info.value)
    assert {f: _sha(f) for f in Path(paths["ckpt_dir"]).iterdir()} == after


class _NanAfter(torch.nn.Module):
    """MSE loss that turns NaN from call ``n`` on."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n, self.calls = n, 0

    def forward(self, pred, target):
        self.calls += 1
        loss = torch.nn.functional.mse_loss(pred, target)
        return loss * float("nan") if self.calls >= self.n else loss


def _trainer(tmp_path, loss, overwrite=False, epochs=1):
    torch.manual_seed(0)
    net = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    data = [{"image": torch.randn(4, 2), "label": torch.randn(4, 1)} for _ in range(6)]
    state = TrainingState(tmp_path, {"network": net, "optimizer": opt}, interval=1, overwrite=overwrite)
    trainer = SupervisedTrainer(device=torch.device("cpu"), max_epochs=epochs, train_data_loader=data, network=net,
                                optimizer=opt, loss_function=loss, train_handlers=[state], decollate=False)
    return trainer, net


def test_nan_loss_stops_with_last_good_state(tmp_path):
    trainer, net = _trainer(tmp_path, _NanAfter(4))
    trainer.run()
    assert trainer.state.iteration == 4  # stopped at the first NaN iteration
    assert [f.name for f in state_files(tmp_path)] == ["training_state_checkpoint_2.pt", "training_state_checkpoint_3.pt"]
    good = torch.load(tmp_path / "training_state_checkpoint_3.pt", weights_only=True)["network"]
    assert all(torch.isfinite(p).all() for p in net.parameters())
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in good.items())  # weights restored to iteration 3


def test_used_folder_refused_and_resume_true_needs_state(tmp_path):
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "events.out.tfevents.1.host").write_bytes(b"x")
    with pytest.raises(OutputExistsError, match=r"events\.out\.tfevents\.1\.host.*--overwrite True"):
        check_run_folder(tmp_path / "models", [tmp_path / "models" / "model.pt"], [tmp_path / "runs"])
    assert check_run_folder(tmp_path / "models", [], [tmp_path / "runs"], overwrite=True) is None
    with pytest.raises(InputFileError, match=r"--resume True but ckpt_dir '.*models' holds no"):
        check_run_folder(tmp_path / "models", resume=True)
    trainer, _ = _trainer(tmp_path / "models", torch.nn.MSELoss())
    trainer.run()
    assert check_run_folder(tmp_path / "models").endswith("training_state_checkpoint_6.pt")
    # --overwrite True starts a new run: the old run's states go when it starts, so auto cannot pick them later
    trainer, _ = _trainer(tmp_path / "models", _NanAfter(2), overwrite=True)
    assert trainer.state.iteration == 0 and not state_files(tmp_path / "models")
