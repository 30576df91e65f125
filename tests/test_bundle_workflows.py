"""The bundles as MONAI's bundle API sees them (what ``monai.bundle.load``, model-zoo and MONAI Label do):

* ``ConfigWorkflow.check_properties()`` passes for the train and the infer workflow of every bundle, and
  for the evaluate configs (run as ``eval`` workflows); it instantiates each property (trainer, datasets),
  so it runs at tiny sizes on tiny phantoms;
* ``monai.bundle.load`` returns the network with ``models/model.pt`` loaded *without* ``key_in_ckpt`` (a plain
  state dict, as model-zoo's) and never trains: no checkpoint, no earlier stage, no output appears;
* inference runs from inside a copy of a bundle folder (``bundle_root`` found from the working directory),
  and a config run from a folder with no bundle stops with a message naming ``bundle_root``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser, ConfigWorkflow, load

from test_aortadiff_bundle import TINY as AORTA_TINY
from test_abdomen_bundle import TINY as ABDOMEN_TINY
from test_cardiac_bundle import TINY as CARDIAC_TINY
from tools.data.phantoms import ensure_phantoms
from tools.engines.bundle_root import find_bundle_root

REPO = Path(__file__).resolve().parents[1]
BUNDLES = REPO / "bundles"
PHANTOM = {"phantom_cases": 4, "phantom_size": 32, "phantom_slices": 16}
TINY = {
    "aortadiff_cect": {**AORTA_TINY, "lpips_pretrained_backbone": False, "num_workers": 0, "batch_size": 2,
                       "val_slices_per_case": 1, "val_batch_size": 1, "sampler": "ddim", "num_inference_steps": 2},
    "abdomen_semantic_synthesis": {**ABDOMEN_TINY, **PHANTOM, "val_interval": 2, "iterations": 2},
    "cardiac_ldm_ssl": {**CARDIAC_TINY, **PHANTOM, "device": "$torch.device('cpu')"},
}
ANATOMY = {"aortadiff_cect": "aaa", "abdomen_semantic_synthesis": "abdomen", "cardiac_ldm_ssl": "heart"}
# (workflow type, config files); cardiac's stages are deltas over common.json
WORKFLOWS = {
    "aortadiff_cect": [("train", ["train.json"]), ("infer", ["inference.json"]),
                       ("eval", ["inference.json", "evaluate.json"]),
                       ("train", ["train_aorta_seg.json"]), ("infer", ["inference_aorta_seg.json"])],
    "abdomen_semantic_synthesis": [("train", ["train.json"]), ("infer", ["inference.json"]),
                                   ("eval", ["train.json", "evaluate.json"])],
    "cardiac_ldm_ssl": [("train", ["common.json", "train.json"]), ("infer", ["inference.json"]),
                        ("eval", ["common.json", "train.json", "evaluate.json"])],
}


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory) -> dict[str, str]:
    """Tiny phantom sets (one per anatomy), made once: ``{bundle: dataset_dir}``."""
    root = tmp_path_factory.mktemp("phantoms")
    out = {}
    for bundle, anatomy in ANATOMY.items():
        ds = root / anatomy
        ensure_phantoms(anatomy, ds, cases=PHANTOM["phantom_cases"], seed=0, size=PHANTOM["phantom_size"],
                        slices=PHANTOM["phantom_slices"], **({"unlabeled_fraction": 0.0} if anatomy == "abdomen" else {}))
        out[bundle] = str(ds)
    return out


def _overrides(bundle: str, dataset_dir: str, tmp: Path) -> dict:
    o = {**TINY[bundle], "dataset_dir": dataset_dir, "output_dir": str(tmp / "runs"), "ckpt_dir": str(tmp / "models")}
    if bundle == "cardiac_ldm_ssl":
        first_test = json.loads((Path(dataset_dir) / "datalist.json").read_text())["test"][0]["image"]
        o.update(input_files=[str(Path(dataset_dir) / first_test)], use_synthetic=False, pretrained_checkpoint="",
                 datalist=str(Path(dataset_dir) / "datalist.json"))
    return o


def _copy_bundle(bundle: str, dst_root: Path) -> Path:
    """The bundle folder copied alone, its configs' sizes set to ``TINY`` and random weights of its inference
    network saved as ``models/model.pt`` (a plain state dict)."""
    dst = dst_root / bundle
    shutil.copytree(BUNDLES / bundle, dst, ignore=shutil.ignore_patterns("models", "runs", "eval", "__pycache__"))
    for f in (dst / "configs").glob("*.json"):
        cfg = json.loads(f.read_text())
        if f.name != "metadata.json" and isinstance(cfg, dict):
            cfg.update({k: v for k, v in TINY[bundle].items() if k in cfg})
            f.write_text(json.dumps(cfg, indent=4) + "\n")
    parser = ConfigParser()
    parser.read_config(str(dst / "configs" / "inference.json"))
    parser["bundle_root"] = str(dst)
    torch.manual_seed(0)
    (dst / "models").mkdir()
    torch.save(parser.get_parsed_content("network_def").state_dict(), dst / "models" / "model.pt")
    return dst


def _files(root: Path) -> set[Path]:
    return {p.relative_to(root) for p in root.rglob("*") if "__pycache__" not in p.parts}


@pytest.mark.parametrize("bundle,workflow,configs", [(b, w, c) for b, ws in WORKFLOWS.items() for w, c in ws],
                         ids=lambda v: v if isinstance(v, str) else "+".join(v))
def test_check_properties(bundle, workflow, configs, phantoms, tmp_path):
    cfg = BUNDLES / bundle / "configs"
    wf = ConfigWorkflow(config_file=[str(cfg / c) for c in configs], workflow_type=workflow,
                        logging_file=str(cfg / "logging.conf"), **_overrides(bundle, phantoms[bundle], tmp_path))
    wf.initialize()
    assert wf.check_properties() == []
    assert Path(wf.bundle_root).resolve() == (BUNDLES / bundle).resolve()
    if workflow == "train":
        assert wf.train_inferer is not None and wf.val_interval is not None
    assert not (tmp_path / "models").exists() or not list((tmp_path / "models").iterdir()), "nothing trained"


@pytest.mark.parametrize("bundle", list(WORKFLOWS))
def test_bundle_load_plain_state_dict_never_trains(bundle, tmp_path, monkeypatch):
    """``monai.bundle.load`` without key_in_ckpt gets every variable; it builds, never runs, the workflow."""
    copy = _copy_bundle(bundle, tmp_path / "zoo")
    saved = torch.load(copy / "models" / "model.pt", weights_only=True)
    monkeypatch.chdir(tmp_path)  # neither the repository nor the bundle folder: bundle_root finds '<name>'
    before = _files(tmp_path)
    # cardiac's train.json is a delta over common.json and monai.bundle.load reads configs/train.json alone:
    # its network is loaded through the inference workflow (docs/README.md, "Commands")
    for workflow_type in ["inference"] + ([] if bundle == "cardiac_ldm_ssl" else ["train"]):
        net = load(bundle, bundle_dir=str(tmp_path / "zoo"), workflow_type=workflow_type, device="cpu")
        got = net.state_dict()
        assert got.keys() == saved.keys()
        assert all(torch.equal(got[k], saved[k]) for k in saved), f"{workflow_type}: weights not loaded"
    new = _files(tmp_path) - before
    # abdomen's inference initialize checks its inputs, which makes the default phantom set under cache/
    trained = [p for p in new if p.parts[0] != "cache" or p.suffix == ".pt"]
    assert trained == [], f"monai.bundle.load wrote {trained} (a training or a stage started)"


def test_cardiac_train_workflow_initialize_runs_no_stage(phantoms, tmp_path):
    """Building cardiac's train workflow (what MONAI Label and monai.bundle.load do) runs no earlier stage:
    the missing stages run at the start of ``training`` only."""
    cfg = BUNDLES / "cardiac_ldm_ssl" / "configs"
    o = _overrides("cardiac_ldm_ssl", phantoms["cardiac_ldm_ssl"], tmp_path)
    o.pop("use_synthetic"), o.pop("pretrained_checkpoint")
    wf = ConfigWorkflow(config_file=[str(cfg / "common.json"), str(cfg / "train.json")], workflow_type="train",
                        logging_file=str(cfg / "logging.conf"), **o)
    wf.initialize()
    runner = wf.parser.get_parsed_content("prerequisites")
    assert runner.needed and len(runner.missing()) == 4  # all four earlier stages would be needed ...
    assert not (tmp_path / "models").exists() and not (tmp_path / "runs").exists()  # ... and none ran
    training = wf.parser["training"]  # the input checks, then the missing stages, then this stage
    assert training[0] == "$@checks" and "prerequisites.run()" in training[1]


def test_inference_from_inside_a_copied_bundle_folder(phantoms, tmp_path):
    """``cd <bundle>; python -m monai.bundle run inference --config_file configs/inference.json``."""
    copy = _copy_bundle("cardiac_ldm_ssl", tmp_path / "elsewhere")
    image = _overrides("cardiac_ldm_ssl", phantoms["cardiac_ldm_ssl"], tmp_path)["input_files"][0]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "monai.bundle", "run", "inference", "--config_file", "configs/inference.json",
           "--input_files", f"['{image}']", "--output_dir", "out", "--device", "$torch.device('cpu')"]
    res = subprocess.run(cmd, cwd=copy, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    seg = list((copy / "out").glob("*_seg.nii.gz"))
    assert len(seg) == 1
    src, out = nib.load(image), nib.load(str(seg[0]))
    assert out.shape == src.shape and np.allclose(out.affine, src.affine, atol=1e-4)
    assert "Restored all variables from ./models/model.pt" in res.stdout + res.stderr


def test_config_run_from_a_folder_without_the_bundle_names_bundle_root(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    parser = ConfigParser()
    parser.read_config(str(BUNDLES / "cardiac_ldm_ssl" / "configs" / "inference.json"))
    with pytest.raises(Exception) as info:
        parser.get_parsed_content("model_checkpoint")
    chain, err = [], info.value
    while err is not None:
        chain.append(str(err))
        err = err.__cause__ or err.__context__
    assert any("bundle_root: no bundle 'cardiac_ldm_ssl' found" in m for m in chain), chain


def test_find_bundle_root(tmp_path):
    assert find_bundle_root("aortadiff_cect", REPO) == "bundles/aortadiff_cect"
    assert find_bundle_root("aortadiff_cect", BUNDLES / "aortadiff_cect") == "."
    assert find_bundle_root("aortadiff_cect", BUNDLES) == "aortadiff_cect"
    with pytest.raises(ValueError, match="another bundle's folder"):
        find_bundle_root("aortadiff_cect", BUNDLES / "cardiac_ldm_ssl")
    with pytest.raises(ValueError, match="bundle_root: no bundle 'aortadiff_cect'"):
        find_bundle_root("aortadiff_cect", tmp_path)
