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
from tools.engines.errors import InputFileError, OutputExistsError, find_input_error
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

    # once finished, the same command refuses before training (nothing to continue) and writes nothing, not
    # even a TensorBoard event file
    def files():
        return {f: _sha(f) for d in (paths["ckpt_dir"], paths["output_dir"]) for f in Path(d).rglob("*") if f.is_file()}

    after = files()
    wf = ConfigWorkflow(config_file=str(CONFIGS / "train.json"), workflow_type="train", **TINY, **paths)
    with pytest.raises(Exception) as info:
        wf.initialize()
        wf.run()
    err = find_input_error(info.value)
    assert isinstance(err, OutputExistsError) and f"already reached iteration {ITERATIONS} of {ITERATIONS}" in str(err)
    assert files() == after


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


def test_aortadiff_writer_leaves_no_half_written_case(tmp_path, monkeypatch):
    """A failure while a case is written (here: in the preview) leaves neither the case folder nor a partial one."""
    import nibabel as nib
    import numpy as np

    import tools.aortadiff.writer as writer

    ref = tmp_path / "ncct.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 4), np.float32), np.diag([0.7, 0.7, 2.0, 1.0])), str(ref))
    vol = torch.zeros(1, 8, 8, 4)
    data = {"synthetic_cect": vol, "lumen": vol, "thrombus": vol, "pred": vol, "ncct_path": str(ref), "case_id": "c1"}
    out = tmp_path / "out"

    def broken(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(writer, "preview_png", broken)
    with pytest.raises(OSError, match="disk full"):
        writer.WriteAortaDiffOutputsd(str(out))(data)
    assert list(out.iterdir()) == []
    monkeypatch.undo()
    writer.WriteAortaDiffOutputsd(str(out))(data)
    assert sorted(p.name for p in (out / "c1").iterdir()) == sorted(p.name for p in writer.case_outputs(out, "c1"))
    assert [p.name for p in out.iterdir()] == ["c1"]


def test_atomic_nifti_writer_through_saveimage(tmp_path, monkeypatch):
    """SaveImage with AtomicNibabelWriter writes the final file only by a rename; a failed write leaves nothing."""
    import nibabel as nib
    import numpy as np
    from monai.data import MetaTensor
    from monai.transforms import SaveImage

    from tools.data.nifti_io import AtomicNibabelWriter

    affine = torch.diag(torch.tensor([0.8, 0.8, 2.5, 1.0]))
    img = MetaTensor(torch.arange(4 * 5 * 3, dtype=torch.float32).reshape(1, 4, 5, 3), affine=affine,
                     meta={"filename_or_obj": str(tmp_path / "case.nii.gz")})
    save = SaveImage(output_dir=str(tmp_path / "out"), output_postfix="seg", separate_folder=False, resample=False,
                     writer=AtomicNibabelWriter, print_log=False)
    save(img)
    written = nib.load(str(tmp_path / "out" / "case_seg.nii.gz"))
    assert np.allclose(written.affine, affine.numpy()) and written.shape == (4, 5, 3)
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["case_seg.nii.gz"]

    def broken(obj, filename):
        Path(filename).write_bytes(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(nib, "save", broken)
    img.meta["filename_or_obj"] = str(tmp_path / "other.nii.gz")
    with pytest.raises(Exception):
        save(img)
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["case_seg.nii.gz"]
