"""Cardiac LDM bundle, stage 1: optional patch-adversarial term of the joint VAE
(tools/cardiac/vae_adversarial_iteration.py, MONAI PatchDiscriminator + PatchAdversarialLoss)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser, run
from monai.engines import SupervisedTrainer
from monai.engines.utils import IterationEvents
from monai.handlers import from_engine
from monai.losses import PatchAdversarialLoss
from monai.networks.nets import PatchDiscriminator
from ignite.engine import Events

from tools.data.phantoms import ensure_phantoms
from tools.cardiac.vae_adversarial_iteration import VAEAdversarialIteration, checkpoint_objects
from tools.cardiac.joint_vae_loss import JointVAELoss
from tools.cardiac.joint_vae import JointAutoencoderKL

CONFIGS = Path(__file__).resolve().parents[1] / "bundles" / "cardiac_ldm_ssl" / "configs"
K = 3  # background + 2 structures keep the test small


def _batches(n: int = 2, s: int = 16) -> list[dict]:
    g = torch.Generator().manual_seed(1)
    out = []
    for _ in range(n):
        image = torch.rand(2, 1, s, s, s, generator=g)
        label = torch.randint(0, K, (2, s, s, s), generator=g)
        onehot = torch.nn.functional.one_hot(label, K).permute(0, 4, 1, 2, 3).float()
        out.append({"joint": torch.cat([image, onehot], 1)})
    return out


def _prepare(batch, device=None, non_blocking=False, **kw):
    return batch["joint"].to(device), batch["joint"].to(device)


def _vae() -> JointAutoencoderKL:
    torch.manual_seed(0)
    return JointAutoencoderKL(num_classes=K, channels=(8, 8), norm_num_groups=4)


def _disc() -> PatchDiscriminator:
    torch.manual_seed(1)
    return PatchDiscriminator(spatial_dims=3, channels=8, in_channels=1, num_layers_d=2)


def _train(vae, adversarial: VAEAdversarialIteration | None, iterations: int = 1):
    """Run ``iterations`` steps; return the decoder gradients of the first step and the engine outputs."""
    trainer = SupervisedTrainer(
        device="cpu",
        max_epochs=1,
        train_data_loader=_batches(iterations),
        network=vae,
        optimizer=torch.optim.Adam(vae.parameters(), lr=1e-3),
        loss_function=JointVAELoss(),
        prepare_batch=_prepare,
        iteration_update=adversarial,
        decollate=False,
    )
    record: dict = {"grads": None, "outputs": [], "disc": []}

    @trainer.on(IterationEvents.BACKWARD_COMPLETED)
    def _grads(engine):
        if record["grads"] is None:
            record["grads"] = [p.grad.clone() for p in vae.autoencoder.decoder.parameters()]

    @trainer.on(Events.ITERATION_COMPLETED)
    def _outputs(engine):
        record["outputs"].append({k: v for k, v in engine.state.output.items() if k in
                                  ("loss", "recon_loss", "adv_g_loss", "adv_d_loss")})
        if adversarial is not None:
            record["disc"].append([p.detach().clone() for p in adversarial.discriminator.parameters()])

    torch.manual_seed(123)  # same latent sampling noise in every run
    trainer.run()
    return record


def _adv(weight: float, start: int = 0) -> VAEAdversarialIteration:
    d = _disc()
    return VAEAdversarialIteration(d, torch.optim.Adam(d.parameters(), lr=1e-2), adv_weight=weight,
                                   adversarial_loss=PatchAdversarialLoss(criterion="least_squares"),
                                   start_iteration=start)


def test_adversarial_step_updates_discriminator_and_adds_generator_term():
    base = _vae()
    plain = _train(copy.deepcopy(base), None)
    adv = _adv(0.5)
    d0 = [p.detach().clone() for p in adv.discriminator.parameters()]
    run1 = _train(copy.deepcopy(base), adv)
    run2 = _train(copy.deepcopy(base), _adv(1.0))

    out = run1["outputs"][0]
    # same forward pass: the autoencoder loss equals the plain trainer's loss, the adversarial term is added on top
    assert float(out["recon_loss"]) == pytest.approx(float(plain["outputs"][0]["loss"]), rel=1e-5)
    assert float(out["loss"]) == pytest.approx(float(out["recon_loss"]) + 0.5 * float(out["adv_g_loss"]), rel=1e-5)
    assert float(out["adv_g_loss"]) > 0 and float(out["adv_d_loss"]) > 0
    # the discriminator's weights were updated by its own optimizer
    assert any(not torch.equal(a, b) for a, b in zip(d0, run1["disc"][0]))
    # the decoder gets a different gradient, and the difference is linear in adv_weight
    diff1 = torch.cat([(a - b).flatten() for a, b in zip(run1["grads"], plain["grads"])])
    diff2 = torch.cat([(a - b).flatten() for a, b in zip(run2["grads"], plain["grads"])])
    assert diff1.abs().max() > 1e-6
    torch.testing.assert_close(diff2, 2.0 * diff1, rtol=1e-3, atol=1e-7)


def test_warm_up_trains_the_plain_autoencoder_first():
    base = _vae()
    plain = _train(copy.deepcopy(base), None)
    adv = _adv(0.5, start=1)
    d0 = [p.detach().clone() for p in adv.discriminator.parameters()]
    rec = _train(copy.deepcopy(base), adv, iterations=2)
    # iteration 1 (warm-up): no adversarial term, same decoder gradient as without it, D untouched
    assert "adv_g_loss" not in rec["outputs"][0] and "adv_d_loss" not in rec["outputs"][0]
    for a, b in zip(rec["grads"], plain["grads"]):
        torch.testing.assert_close(a, b)
    assert all(torch.equal(a, b) for a, b in zip(d0, rec["disc"][0]))
    # iteration 2: adversarial on, D updated
    assert "adv_d_loss" in rec["outputs"][1]
    assert any(not torch.equal(a, b) for a, b in zip(rec["disc"][0], rec["disc"][1]))


def test_zero_weight_is_rejected_and_checkpoint_keys():
    with pytest.raises(ValueError, match="adv_weight"):
        _adv(0.0)
    vae, adv = _vae(), _adv(0.1)
    opt = torch.optim.Adam(vae.parameters())
    assert set(checkpoint_objects(vae, opt)) == {"model", "optimizer"}
    objs = checkpoint_objects(vae, opt, adv)
    assert objs["discriminator"] is adv.discriminator and objs["d_optimizer"] is adv.d_optimizer


def _parser(*deltas: str, **overrides) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / "train_autoencoder.json"), str(CONFIGS / "small.json"),
                        *[str(CONFIGS / d) for d in deltas]])
    parser.update(overrides)
    return parser


def test_config_default_builds_no_discriminator():
    parser = _parser()
    assert parser["adv_weight"] == 0.0
    assert parser["train"]["trainer"]["iteration_update"] == "@adversarial_iteration"
    assert parser.get_parsed_content("discriminator_def") is None
    assert parser.get_parsed_content("adversarial_iteration") is None  # -> SupervisedTrainer's own iteration
    assert set(parser.get_parsed_content("checkpoint_objects")) == {"model", "optimizer"}


def test_config_adversarial_delta_builds_patch_discriminator():
    parser = _parser("autoencoder_adversarial.json", device="$torch.device('cpu')")
    adv = parser.get_parsed_content("adversarial_iteration")
    assert isinstance(adv, VAEAdversarialIteration) and adv.adv_weight == parser["adv_weight"] > 0
    assert isinstance(adv.discriminator, PatchDiscriminator)
    assert isinstance(adv.d_optimizer, torch.optim.Adam)
    assert adv.d_optimizer.param_groups[0]["lr"] == parser["d_lr"]
    assert adv.adversarial_loss.criterion == "least_squares"
    assert set(parser.get_parsed_content("checkpoint_objects")) == {"model", "optimizer", "discriminator", "d_optimizer"}


def test_bundle_training_saves_discriminator_in_checkpoint(tmp_path):
    datalist = ensure_phantoms("heart", tmp_path / "data", cases=4, seed=0, size=32, slices=8)
    models = tmp_path / "models"
    run("training", config_file=[str(CONFIGS / "train_autoencoder.json"), str(CONFIGS / "small.json"),
                                 str(CONFIGS / "autoencoder_adversarial.json")],
        image_size=[32, 32, 16], vae_channels=[8, 8, 8], d_channels=8, d_num_layers=2, num_workers=0,
        epochs=1, val_interval=1, ckpt_dir=str(models), output_dir=str(tmp_path / "runs"), datalist=datalist)
    state = torch.load(models / "autoencoder.pt", map_location="cpu", weights_only=True)
    assert {"model", "optimizer", "discriminator", "d_optimizer"} <= set(state)
    disc = PatchDiscriminator(spatial_dims=3, channels=8, in_channels=1, num_layers_d=2)
    disc.load_state_dict(state["discriminator"])


def test_engine_output_is_decollated_so_loss_handlers_work():
    vae = _vae()
    trainer = SupervisedTrainer(device="cpu", max_epochs=1, train_data_loader=_batches(1), network=vae,
                                optimizer=torch.optim.Adam(vae.parameters()), loss_function=JointVAELoss(),
                                prepare_batch=_prepare, iteration_update=_adv(0.1))
    trainer.run()
    out = trainer.state.output
    assert isinstance(out, list) and len(out) == 2  # one dict per batch item, as with SupervisedTrainer
    loss = from_engine(["loss"], first=True)(out)  # what the bundle's StatsHandler logs
    assert torch.as_tensor(loss).ndim == 0 and float(loss) > 0
    assert float(from_engine(["adv_d_loss"], first=True)(out)) > 0
