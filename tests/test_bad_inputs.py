"""Bad inputs end in one line naming the file or config key, raised before any training or sampling (the checks
open the ``training`` / ``inference`` list), with nothing already written changed
(every file under the test folder is hashed before and after, and no file appears).

Each case builds a small folder: tiny phantoms, a datalist, and an earlier run's files; then breaks one thing.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigWorkflow

from tools.data.phantoms import ensure_phantoms
from tools.engines.errors import InputValueError, find_input_error, install_excepthook

REPO = Path(__file__).resolve().parents[1]
BUNDLES = REPO / "bundles"
AORTA = BUNDLES / "aortadiff_cect" / "configs"
ABDOMEN = BUNDLES / "abdomen_semantic_synthesis" / "configs"
CARDIAC = BUNDLES / "cardiac_ldm_ssl" / "configs"
AORTA_TINY = {
    "image_size": 32, "roi_margin": 2, "network_channels": [8, 16], "attention_levels": [False, True],
    "num_res_blocks": 1, "num_head_channels": 8, "norm_num_groups": 8, "use_flash_attention": False, "amp": False,
    "device": "$torch.device('cpu')", "num_workers": 0, "lpips_weight": 0,
}


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory) -> dict[str, Path]:
    """Tiny phantoms of the three bundles, made once (never modified: cases copy what they break)."""
    root = tmp_path_factory.mktemp("bad_inputs_phantoms")
    out = {}
    for anatomy, kw in (("aaa", {}), ("abdomen", {"unlabeled_fraction": 0.0}), ("heart", {})):
        out[anatomy] = Path(ensure_phantoms(anatomy, root / anatomy, cases=4, seed=0, size=32, slices=8, **kw)).parent
    return out


def _tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


class Case:
    """A work folder: ``data/`` (a copy of the phantoms + datalist), ``models/`` and ``runs/`` holding an earlier
    run's files."""

    def __init__(self, tmp: Path, src: Path) -> None:
        self.root = tmp
        self.data = tmp / "data"
        shutil.copytree(src, self.data)
        self.datalist = self.data / "datalist.json"
        self.content = json.loads(self.datalist.read_text())
        self.models, self.runs = tmp / "models", tmp / "runs"
        self.models.mkdir()
        self.runs.mkdir()
        (self.runs / "earlier_run_notes.txt").write_text("results of an earlier run\n")

    def file(self, split: str, i: int, key: str) -> Path:
        return self.data / self.content[split][i][key]

    def write_datalist(self) -> None:
        self.datalist.write_text(json.dumps(self.content, indent=1))

    def resave(self, path: Path, fn: Callable[[np.ndarray], np.ndarray] | None = None, affine=None, dtype=None) -> None:
        img = nib.load(str(path))
        data = np.asarray(img.dataobj)
        data = fn(data) if fn is not None else data
        nib.save(nib.Nifti1Image(data.astype(dtype or data.dtype), img.affine if affine is None else affine), str(path))


def _truncate(path: Path) -> None:
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])


def _set_nan(a: np.ndarray) -> np.ndarray:
    a = a.astype(np.float32)
    a[a.shape[0] // 2, a.shape[1] // 2, a.shape[2] // 2] = np.nan
    return a


def _raw(a: np.ndarray) -> np.ndarray:
    """HU -> stored scanner values 0..4095 (rescale intercept -1024 not applied), with bone at the top."""
    a = np.clip(a.astype(np.float32) + 1024.0, 0, 4095)
    a[0, 0, 0] = 4095
    return a


def _shift(img_path: Path) -> np.ndarray:
    affine = nib.load(str(img_path)).affine.copy()
    affine[0, 3] += 5.0
    return affine


# ---- the cases: (bundle configs, command, overrides, how to break the folder, what the message must name) ----
def aorta_train(case: Case, **kw) -> tuple[list[Path], str, dict]:
    over = {**AORTA_TINY, "datalist": str(case.datalist), "ckpt_dir": str(case.models), "output_dir": str(case.runs),
            "iterations": 2, "val_interval": 2, "batch_size": 2, **kw}
    return [AORTA / "train.json"], "training", over


def aorta_infer(case: Case, **kw) -> tuple[list[Path], str, dict]:
    over = {**AORTA_TINY, "datalist": str(case.datalist), "ckpt_dir": str(case.models), "output_dir": str(case.runs),
            "sampler": "ddim", "num_inference_steps": 2, **kw}
    return [AORTA / "inference.json"], "inference", over


def _truncated_gzip(case: Case):
    _truncate(case.file("training", 0, "cect"))
    return aorta_train(case), [str(case.file("training", 0, "cect")), "truncated"]


def _shifted_affine(case: Case):
    path = case.file("training", 1, "aorta")
    case.resave(path, affine=_shift(path))
    return aorta_train(case), [str(path), "different affines"]


def _inplane_shape(case: Case):
    path = case.file("training", 0, "cect")
    case.resave(path, fn=lambda a: a[:, :-2, :])
    return aorta_train(case), [str(path), "not on the same voxel grid"]


def _raw_scanner_values(case: Case):
    path = case.file("training", 0, "ncct")
    case.resave(path, fn=_raw, dtype=np.int16)
    return aorta_train(case), [str(path), "rescale slope and intercept"]


def _nan_training(case: Case):
    path = case.file("validation", 0, "cect")
    case.resave(path, fn=_set_nan)
    return aorta_train(case), [str(path), "NaN"]


def _patient_overlap(case: Case):
    case.content["test"].append(dict(case.content["training"][0]))
    case.write_datalist()
    return aorta_train(case), [str(case.datalist), case.content["training"][0]["case_id"], "'training'", "'test'"]


def _empty_training(case: Case):
    case.content["training"] = []
    case.write_datalist()
    return aorta_train(case), [str(case.datalist), "split 'training' has no usable entries"]


def _negative_image_size(case: Case):
    return aorta_train(case, image_size=-32), ["'image_size'", "-32"]


def _negative_iterations(case: Case):
    return aorta_train(case, iterations=-5), ["'iterations'", "-5"]


def _missing_file(case: Case):
    path = case.file("training", 1, "cect")
    path.unlink()
    return aorta_train(case), [str(path), "does not exist"]


def _used_run_folder(case: Case):
    torch.save({"w": torch.zeros(1)}, case.models / "model.pt")
    return aorta_train(case), [str(case.models / "model.pt"), "--overwrite True"]


def _two_d_training(case: Case):
    path = case.file("training", 0, "ncct")
    case.resave(path, fn=lambda a: a[:, :, 0])
    return aorta_train(case), [str(path), "2D"]


def _unknown_sampler(case: Case):
    return aorta_infer(case, sampler="ddpm"), ["'sampler'", "'ddpm'", "repaint"]


def _nan_inference(case: Case):
    path = case.file("test", 0, "ncct")
    case.resave(path, fn=_set_nan)
    return aorta_infer(case), [str(path), "NaN"]


def _two_d_inference(case: Case):
    path = case.file("test", 0, "ncct")
    case.resave(path, fn=lambda a: a[:, :, 0])
    return aorta_infer(case), [str(path), "2D"]


def _output_not_writable(case: Case):
    blocker = case.runs / "out_is_a_file"
    blocker.write_text("not a folder\n")
    return aorta_infer(case, output_dir=str(blocker)), ["output_dir", str(blocker)]


def _existing_outputs(case: Case):
    cid = case.content["test"][0]["case_id"]
    (case.runs / cid).mkdir()
    (case.runs / cid / "synthetic_cect.nii.gz").write_bytes(b"earlier result")
    return aorta_infer(case), [str(case.runs / cid / "synthetic_cect.nii.gz"), "--overwrite True"]


def _checkpoint_of_another_bundle(case: Case):
    torch.save({"model": {"encoder.conv.weight": torch.zeros(4, 1, 3, 3, 3)}}, case.models / "model.pt")
    return aorta_infer(case), [str(case.models / "model.pt"), "does not fit"]


AORTA_CASES = [_truncated_gzip, _shifted_affine, _inplane_shape, _raw_scanner_values, _nan_training, _patient_overlap,
               _empty_training, _negative_image_size, _negative_iterations, _missing_file, _used_run_folder,
               _two_d_training, _unknown_sampler, _nan_inference, _two_d_inference, _output_not_writable,
               _existing_outputs, _checkpoint_of_another_bundle]


def abdomen_train(case: Case, **kw) -> tuple[list[Path], str, dict]:
    over = {"datalist": str(case.datalist), "ckpt_dir": str(case.models), "output_dir": str(case.runs),
            "image_size": 32, "iterations": 2, "val_interval": 2, "batch_size": 2, "num_workers": 0, **kw}
    return [ABDOMEN / "train.json"], "training", over


def abdomen_infer(case: Case, files: list[Path], **kw) -> tuple[list[Path], str, dict]:
    over = {"input_files": [str(f) for f in files], "ckpt_dir": str(case.models), "output_dir": str(case.runs),
            "image_size": 32, "sampler": "ddim", "num_inference_steps": 2, **kw}
    return [ABDOMEN / "inference.json"], "inference", over


def cardiac_train(case: Case, **kw) -> tuple[list[Path], str, dict]:
    over = {"datalist": str(case.datalist), "ckpt_dir": str(case.models), "output_dir": str(case.runs),
            "image_size": [32, 32, 16], "epochs": 1, "num_workers": 0, **kw}
    return [CARDIAC / "common.json", CARDIAC / "train_autoencoder.json", CARDIAC / "small.json"], "training", over


def cardiac_infer(case: Case, **kw) -> tuple[list[Path], str, dict]:
    over = {"datalist": str(case.datalist), "ckpt_dir": str(case.models), "output_dir": str(case.runs),
            "image_size": [32, 32, 16], **kw}
    return [CARDIAC / "inference.json"], "inference", over


def _abdomen_unknown_label_id(case: Case):
    path = case.file("test", 0, "label")
    case.resave(path, fn=lambda a: np.where(a == a.max(), 23, a))
    return abdomen_infer(case, [path]), [str(path), "[23]", "label_mapping 'amos'"]


def _abdomen_training_label_id(case: Case):
    path = case.file("training", 0, "label")
    case.resave(path, fn=lambda a: np.where(a == a.max(), 40, a))
    return abdomen_train(case), [str(path), "[40]"]


def _abdomen_unknown_val_sampler(case: Case):
    return abdomen_train(case, val_sampler="plms"), ["'val_sampler'", "'plms'"]


def _cardiac_existing_output(case: Case):
    image = case.file("test", 0, "image")
    out = case.runs / image.name.replace(".nii.gz", "_seg.nii.gz")
    out.write_bytes(b"an earlier segmentation")
    return cardiac_infer(case), [str(out), "--overwrite True"]


def _cardiac_label_out_of_range(case: Case):
    path = case.file("training", 0, "label")
    case.resave(path, fn=lambda a: np.where(a == a.max(), 12, a))
    return cardiac_train(case), [str(path), "[12]", "num_classes 9"]


def _cardiac_negative_image_size(case: Case):
    return cardiac_train(case, image_size=[32, -32, 16]), ["'image_size'", "-32"]


def _cardiac_nan_inference(case: Case):
    path = case.file("test", 0, "image")
    case.resave(path, fn=_set_nan)
    return cardiac_infer(case), [str(path), "NaN"]


def _cardiac_two_d_file(case: Case):
    path = case.file("test", 0, "image")
    case.resave(path, fn=lambda a: a[:, :, 3])
    return cardiac_infer(case), [str(path), "2D"]


OTHER_CASES = [("abdomen", f) for f in (_abdomen_unknown_label_id, _abdomen_training_label_id,
                                        _abdomen_unknown_val_sampler)] + \
              [("heart", f) for f in (_cardiac_existing_output, _cardiac_label_out_of_range, _cardiac_negative_image_size,
                                      _cardiac_nan_inference, _cardiac_two_d_file)]


def _expect_error(tmp: Path, configs: list[Path], workflow: str, over: dict, must_name: list[str]) -> str:
    before = _tree(tmp)
    wf = ConfigWorkflow(config_file=[str(c) for c in configs], workflow_type=workflow, **over)
    with pytest.raises(Exception) as info:  # the checks open the run list
        wf.initialize()
        wf.run()
    err = find_input_error(info.value)
    assert err is not None, f"not a bundle input error: {info.value!r}"
    msg = str(err)
    assert "\n" not in msg, msg
    for part in must_name:
        assert part in msg, f"{part!r} not in {msg!r}"
    assert _tree(tmp) == before, "files were written or changed"
    print(f"message: {msg}")  # shown with pytest -s
    return msg


@pytest.mark.parametrize("make", AORTA_CASES, ids=lambda f: f.__name__.strip("_"))
def test_aortadiff_bad_input(make, phantoms, tmp_path):
    case = Case(tmp_path, phantoms["aaa"])
    (configs, workflow, over), must_name = make(case)
    _expect_error(tmp_path, configs, workflow, over, must_name)


@pytest.mark.parametrize("anatomy,make", OTHER_CASES, ids=lambda x: x.__name__.strip("_") if callable(x) else x)
def test_abdomen_cardiac_bad_input(anatomy, make, phantoms, tmp_path):
    case = Case(tmp_path, phantoms[anatomy])
    (configs, workflow, over), must_name = make(case)
    _expect_error(tmp_path, configs, workflow, over, must_name)


def test_entry_point_prints_one_line(phantoms, tmp_path):
    """``python -m monai.bundle run`` prints the error as one line, without the ConfigExpression trace."""
    case = Case(tmp_path, phantoms["aaa"])
    (configs, workflow, over), must_name = _negative_iterations(case)
    args = [sys.executable, "-m", "monai.bundle", "run", workflow, "--config_file", str(configs[0])]
    for k, v in over.items():
        args += [f"--{k}", repr(v) if isinstance(v, (list, bool)) else str(v)]
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    res = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 1
    assert "Traceback" not in res.stderr and "ConfigExpression" not in res.stderr, res.stderr[-3000:]
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("error: config key 'iterations' must be a positive integer, got -5"), last


def test_excepthook_debug_keeps_trace(monkeypatch, capsys):
    """The hook prints one line for a bundle input error in the cause chain; ``debug`` and other errors go to
    the previous hook (the full trace)."""
    seen = []
    monkeypatch.setattr(sys, "excepthook", lambda *a: seen.append(a[1]))
    try:
        try:
            raise InputValueError("config key 'image_size' must be a positive integer, got -1")
        except InputValueError as inner:
            raise RuntimeError("Failed to evaluate ConfigExpression") from inner
    except RuntimeError as e:
        wrapped = e
    install_excepthook(debug=False)
    sys.excepthook(type(wrapped), wrapped, wrapped.__traceback__)
    assert capsys.readouterr().err.startswith("error: config key 'image_size' must be a positive integer, got -1")
    other = KeyError("x")
    sys.excepthook(KeyError, other, None)
    install_excepthook(debug=True)
    sys.excepthook(type(wrapped), wrapped, wrapped.__traceback__)
    assert seen == [other, wrapped] and capsys.readouterr().err == ""
