"""Multi-GPU training configs on CPU: ``torchrun --nproc_per_node=2`` with the ``gloo`` backend.

For each bundle: ``train.json`` (+ variant) + ``small.json`` + ``multi_gpu_train.json`` with a few
iterations (cardiac: each stage merged over ``common.json``; also its stage 1 with the patch-adversarial
term, whose discriminator is DDP-wrapped as well), phantoms made beforehand in tmp_path (both ranks then
reuse them). A test delta adds a ``finalize`` line writing each rank's iteration count and a checksum of
the weights of its network(s) to ``rank<r>_done.txt``, and makes ``ckpt_dir``/``output_dir`` rank-specific
(``..._rank<RANK>``). Checked:

* both ranks trained: each reported the expected iteration count, and the weight checksums are
  equal (DistributedDataParallel kept the replicas in sync, the discriminator's too);
* only rank 0 wrote the checkpoint: ``ckpt_rank0`` holds it, rank 1 wrote no ``.pt`` file anywhere;
* the bundles that sample with an EMA of the weights (AortaDiff, abdomen) kept updating it under the multi-GPU
  handler list: with an EMA decay of 1e-6 the EMA copy must equal the trained weights (an EMA copy that was never
  updated holds the initial weights, whose checksum differs from the trained ones by far more).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BUNDLES = REPO / "bundles"

FINALIZE = [
    # no "import" in this expression: MONAI ast-parses expressions containing that word as import statements
    "$open('{report}' % torch.distributed.get_rank(), 'w').write(' '.join(['%d' % @train#trainer.state.iteration] + "
    "['%.9e' % float(sum(p.detach().double().abs().sum() for p in net.parameters())) for net in [{networks}]]))",
    "$torch.distributed.is_initialized() and torch.distributed.destroy_process_group()",
]
NETWORKS = "@train#trainer.network"  # the trained network of each spec (default)
WITH_EMA = "@train#trainer.network, @ema_network"  # trained weights, then their EMA copy
NO_EMA_LAG = {"ema_decay": 1e-6, "ema_warmup_decay": 1e-6, "ema_warmup_iters": 1}  # EMA copy = trained weights

# per bundle: config files (merged in order), anatomy of its phantoms, CLI overrides, checkpoint file name
SPECS = {
    "aortadiff_cect": {
        "configs": ["train.json", "small.json", "multi_gpu_train.json"],
        "anatomy": "aaa",
        "overrides": {"iterations": 2, "val_interval": 2, "batch_size": 2, "phantom_cases": 5, "phantom_slices": 8,
                      "val_slices_per_case": 1, "val_inference_steps": 2, "val_batch_size": 2, "lpips_weight": 0.0,
                      "log_interval": 1, **NO_EMA_LAG},
        "iterations": 2,
        "checkpoint": "model.pt",
        "networks": WITH_EMA,
    },
    "abdomen_semantic_synthesis": {
        "configs": ["train.json", "small.json", "multi_gpu_train.json"],
        "anatomy": "abdomen",
        "overrides": {"iterations": 2, "val_interval": 2, "checkpoint_interval": 2, "batch_size": 2,
                      "phantom_cases": 5, "phantom_slices": 8, "num_val_slices": 2, "val_num_inference_steps": 2,
                      "save_initial_checkpoint": False, "cache_rate": 0.0, **NO_EMA_LAG},
        "iterations": 2,
        "checkpoint": "model.pt",
        "networks": WITH_EMA,
    },
    "cardiac_ldm_ssl": {
        "configs": ["common.json", "train.json", "scratch.json", "small.json", "multi_gpu_train.json"],
        "anatomy": "heart",
        "overrides": {"epochs": 1, "val_interval": 1, "phantom_cases": 6, "phantom_slices": 16, "val_fraction": 0.34},
        "iterations": None,  # one epoch over the rank's share of the training cases
        "checkpoint": "model_scratch.pt",
    },
    "cardiac_ldm_ssl_vae_adversarial": {  # stage 1 with the discriminator: its gradients averaged over ranks
        "bundle": "cardiac_ldm_ssl",
        "configs": ["common.json", "train_autoencoder.json", "autoencoder_adversarial.json", "small.json",
                    "multi_gpu_train.json"],
        "anatomy": "heart",
        "overrides": {"epochs": 1, "val_interval": 1, "phantom_cases": 6, "phantom_slices": 16, "val_fraction": 0.34,
                      "image_size": [32, 32, 16], "vae_channels": [8, 8, 8], "d_channels": 8, "d_num_layers": 2},
        "iterations": None,
        "checkpoint": "autoencoder.pt",
        "networks": "@train#trainer.network, @train#trainer.state.d_network",
    },
}


def _merged(files: list[Path]) -> dict:
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(f) for f in files])
    return parser


def _arg(v) -> str:
    return json.dumps(v) if not isinstance(v, str) else v


@pytest.mark.parametrize("case", sorted(SPECS))
def test_torchrun_two_ranks_gloo(case, tmp_path):
    spec = SPECS[case]
    bundle = spec.get("bundle", case)
    cfg_dir = BUNDLES / bundle / "configs"
    files = [cfg_dir / f for f in spec["configs"]]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        pytest.fail(f"{bundle}: missing config file(s) {missing}")
    parser = _merged(files)
    ov = spec["overrides"]
    # phantoms made once here; both ranks find them through ensure_phantoms (same parameters)
    from tools.data.phantoms import ensure_phantoms

    data_dir = tmp_path / "phantoms"
    ensure_phantoms(spec["anatomy"], data_dir, cases=ov.get("phantom_cases", parser["phantom_cases"]),
                    seed=parser["seed"], size=ov.get("phantom_size", parser["phantom_size"]),
                    slices=ov.get("phantom_slices", parser["phantom_slices"]))
    delta = tmp_path / "test_delta.json"
    delta.write_text(json.dumps({
        "ckpt_dir": f"$'{tmp_path}/ckpt_rank' + __import__('os').environ['RANK']",
        "output_dir": f"$'{tmp_path}/out_rank' + __import__('os').environ['RANK']",
        "finalize": [FINALIZE[0].replace("{report}", f"{tmp_path}/rank%d_done.txt")
                     .replace("{networks}", spec.get("networks", NETWORKS)), FINALIZE[1]],
    }))
    config_file = json.dumps([str(f) for f in files] + [str(delta)])
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={_free_port()}", "-m", "monai.bundle", "run", "training",
           "--config_file", config_file, "--bundle_root", str(BUNDLES / bundle), "--dist_backend", "gloo",
           "--dataset_dir", str(data_dir), "--num_workers", "0"]
    for k, v in ov.items():
        cmd += [f"--{k}", _arg(v)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "CUDA_VISIBLE_DEVICES": ""}
    r = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False)
    log = r.stdout + r.stderr
    assert r.returncode == 0, f"torchrun failed ({r.returncode}):\n{log[-6000:]}"
    done = {}
    for rank in (0, 1):
        report = tmp_path / f"rank{rank}_done.txt"
        if report.is_file():
            it, *w = report.read_text().split()
            done[rank] = (int(it), [float(v) for v in w])
    assert sorted(done) == [0, 1], f"both ranks must finish training:\n{log[-4000:]}"
    (it0, w0), (it1, w1) = done[0], done[1]
    assert it0 == it1 >= 1, f"iterations per rank {it0} / {it1}"
    if spec["iterations"] is not None:
        assert it0 == spec["iterations"]
    assert len(w0) == len(w1) == len(spec.get("networks", NETWORKS).split(","))
    assert w0 == pytest.approx(w1, rel=1e-6), "DDP ranks ended with different weights"
    if spec.get("networks") == WITH_EMA:
        assert w0[1] == pytest.approx(w0[0], rel=1e-8), "the EMA copy was not updated during multi-GPU training"
    ckpt0 = tmp_path / "ckpt_rank0" / spec["checkpoint"]
    assert ckpt0.is_file(), f"rank 0 did not write {ckpt0}: {sorted(p.name for p in ckpt0.parent.glob('*'))}"
    rank1_pt = [str(p) for d in ("ckpt_rank1", "out_rank1") for p in (tmp_path / d).rglob("*.pt")]
    assert not rank1_pt, f"rank 1 wrote checkpoints: {rank1_pt}"


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
