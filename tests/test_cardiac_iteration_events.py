"""Cardiac LDM bundle: every training stage fires MONAI's ``IterationEvents.LOSS_COMPLETED`` with a finite loss.

The trainers of the stage configs (merged over common.json + small.json, tiny sizes) are built with the
bundle's own handlers and run for one epoch on 32x32x16 heart phantoms: the joint VAE with and without the
patch-adversarial term (tools.cardiac.vae_gan_trainer.VAEGANTrainer), the latent diffusion model, the SSL
pretraining and the fine-tuning (MONAI SupervisedTrainer). A handler attached to ``LOSS_COMPLETED`` sees
``engine.state.output["loss"]``; for the VAE also the loss terms that LossTermsHandler copies there, which
``tools.engines.loss_terms.scalar_logs`` (the StatsHandler / TensorBoardStatsHandler output transform) logs.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser
from monai.engines.utils import IterationEvents
from monai.utils import AdversarialKeys

from test_cardiac_bundle import TINY as BUNDLE_TINY  # the tiny sizes of the end-to-end cardiac test
from tools.data.phantoms import ensure_phantoms
from tools.engines.loss_terms import scalar_logs

CONFIGS = Path(__file__).resolve().parents[1] / "bundles" / "cardiac_ldm_ssl" / "configs"

TINY = {
    **BUNDLE_TINY,
    "d_channels": 8,
    "d_num_layers": 2,
    "val_interval": 2,  # one epoch, no validation: only the training iterations matter here
}

# stage: (config files between common.json and small.json, overrides)
STAGES = {
    "vae": (["train_autoencoder.json"], {}),
    "vae_adversarial": (["train_autoencoder.json", "autoencoder_adversarial.json"], {}),
    "ldm": (["train_ldm.json"], {}),
    "ssl": (["pretrain_ssl.json"], {"ssl_include_synthetic": False, "ssl_include_real": True}),
    "finetune": (["train.json"], {"use_synthetic": False, "pretrained_checkpoint": None, "run_missing_stages": False}),
}
VAE_TERMS = {"l1", "kl", "dice_ce"}


def _parser(files: list[str], **overrides) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / f) for f in ["common.json", *files, "small.json"]])
    parser.update({**TINY, **overrides})
    return parser


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("cardiac_events")
    datalist = ensure_phantoms("heart", root / "data", cases=4, seed=0, size=32, slices=8)
    autoencoder = root / "autoencoder.pt"  # the frozen stage-1 network the LDM stage loads
    torch.manual_seed(0)
    net = _parser(["train_ldm.json"]).get_parsed_content("autoencoder_def")
    torch.save({"model": net.state_dict()}, autoencoder)
    return {"datalist": datalist, "autoencoder": str(autoencoder)}


@pytest.mark.parametrize("stage", list(STAGES))
def test_loss_completed_fires_with_a_finite_loss(stage, data, tmp_path):
    files, overrides = STAGES[stage]
    if stage == "ldm":
        overrides = {**overrides, "autoencoder_checkpoint": data["autoencoder"]}
    parser = _parser(files, datalist=data["datalist"], ckpt_dir=str(tmp_path / "models"),
                     output_dir=str(tmp_path / "runs"), **overrides)
    parser.get_parsed_content("initialize")
    trainer = parser.get_parsed_content("train#trainer")
    seen: list[tuple[float, set[str]]] = []

    @trainer.on(IterationEvents.LOSS_COMPLETED)
    def _loss(engine):
        out = engine.state.output
        seen.append((float(out["loss"].detach()), set(out)))

    trainer.run()
    assert trainer.state.iteration >= 1 and len(seen) == trainer.state.iteration, stage
    assert all(math.isfinite(loss) for loss, _ in seen), seen
    if stage.startswith("vae"):
        # LossTermsHandler (attached by the config, before this handler) put the joint VAE's terms there
        assert all(VAE_TERMS <= keys for _, keys in seen)
        logged = scalar_logs(trainer.state.output)
        assert VAE_TERMS | {"loss"} <= set(logged) and all(math.isfinite(v) for v in logged.values())
        adversarial = {AdversarialKeys.GENERATOR_LOSS, AdversarialKeys.DISCRIMINATOR_LOSS}
        if stage == "vae_adversarial":
            assert AdversarialKeys.GENERATOR_LOSS in seen[0][1] and adversarial <= set(logged)
        else:
            assert not adversarial & set(logged)
