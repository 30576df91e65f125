"""Cardiac LDM bundle, stage 1: optional patch-adversarial term of the joint VAE trained by MONAI's
``AdversarialTrainer`` (tools/cardiac/vae_gan_trainer.py, MONAI PatchDiscriminator + PatchAdversarialLoss)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from ignite.engine import Events
from monai.bundle import ConfigParser, run
from monai.engines import SupervisedTrainer
from monai.engines.utils import IterationEvents
from monai.handlers import from_engine
from monai.losses import PatchAdversarialLoss
from monai.networks.nets import PatchDiscriminator
from monai.utils import AdversarialKeys

from tools.cardiac.joint_vae import JointAutoencoderKL
from tools.cardiac.joint_vae_loss import JointVAELoss, PatchDiscriminatorLoss, PatchGeneratorLoss
from tools.cardiac.vae_gan_trainer import VAEGANTrainer, checkpoint_objects
from tools.data.phantoms import ensure_phantoms

CONFIGS = Path(__file__).resolve().parents[1] / "bundles" / "cardiac_ldm_ssl" / "configs"
K = 3  # background + 2 structures keep the test small
RECON, GEN = AdversarialKeys.RECONSTRUCTION_LOSS, AdversarialKeys.GENERATOR_LOSS
DISC = AdversarialKeys.DISCRIMINATOR_LOSS


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


def _gan(vae, weight: float | None, start: int = 0, iterations: int = 1, **kw) -> VAEGANTrainer:
    """The VAE-GAN trainer; ``weight=None``: no discriminator (the bundle's default, adv_weight 0)."""
    disc = _disc() if weight is not None else None
    adv = PatchAdversarialLoss(criterion="least_squares")
    return VAEGANTrainer(
        device="cpu", max_epochs=1, train_data_loader=_batches(iterations), g_network=vae,
        g_optimizer=torch.optim.Adam(vae.parameters(), lr=1e-3), recon_loss_function=JointVAELoss(),
        d_network=disc, d_optimizer=torch.optim.Adam(disc.parameters(), lr=1e-2) if disc is not None else None,
        g_loss_function=PatchGeneratorLoss(adv, weight) if disc is not None else None,
        d_loss_function=PatchDiscriminatorLoss(adv) if disc is not None else None,
        adv_start_iteration=start, prepare_batch=_prepare, **kw)


def _plain(vae, iterations: int = 1) -> SupervisedTrainer:
    return SupervisedTrainer(device="cpu", max_epochs=1, train_data_loader=_batches(iterations), network=vae,
                             optimizer=torch.optim.Adam(vae.parameters(), lr=1e-3), loss_function=JointVAELoss(),
                             prepare_batch=_prepare, decollate=False)


def _train(trainer) -> dict:
    """Run ``trainer``; return the decoder gradients of the first step, the outputs and D's weights per step."""
    vae = trainer.network
    disc = getattr(trainer.state, "d_network", None)
    record: dict = {"grads": None, "outputs": [], "disc": [], "d_calls": 0, "d_states": []}

    @trainer.on(IterationEvents.BACKWARD_COMPLETED)
    def _grads(engine):
        if record["grads"] is None:
            record["grads"] = [p.grad.clone() for p in vae.autoencoder.decoder.parameters()]

    @trainer.on(Events.ITERATION_COMPLETED)
    def _outputs(engine):
        record["outputs"].append({k: float(torch.as_tensor(v).detach()) for k, v in engine.state.output.items()
                                  if k in ("loss", RECON, GEN, DISC)})
        if disc is not None:
            record["disc"].append([p.detach().clone() for p in disc.parameters()])
            record["d_calls"] = calls[0]
            record["d_states"].append(len(engine.state.d_optimizer.state))

    calls = [0]
    if disc is not None:
        disc.register_forward_hook(lambda *a: calls.__setitem__(0, calls[0] + 1))
    torch.manual_seed(123)  # same latent sampling noise in every run
    trainer.run()
    return record


def test_adversarial_step_updates_discriminator_and_adds_generator_term():
    base = _vae()
    plain = _train(_plain(copy.deepcopy(base)))
    half = _gan(copy.deepcopy(base), 0.5, decollate=False)
    d0 = [p.detach().clone() for p in half.state.d_network.parameters()]
    run1 = _train(half)
    run2 = _train(_gan(copy.deepcopy(base), 1.0, decollate=False))

    out = run1["outputs"][0]
    # same forward pass: the autoencoder loss equals the plain trainer's loss, the adversarial term is added on top
    assert float(out[RECON]) == pytest.approx(float(plain["outputs"][0]["loss"]), rel=1e-5)
    assert float(out["loss"]) == pytest.approx(float(out[RECON]) + float(out[GEN]), rel=1e-5)
    assert float(out[GEN]) > 0 and float(out[DISC]) > 0
    # the term is adv_weight * PatchAdversarialLoss (same D, same reconstruction: twice the weight, twice the term)
    assert float(run2["outputs"][0][GEN]) == pytest.approx(2.0 * float(out[GEN]), rel=1e-5)
    # the discriminator's weights were updated by its own optimizer
    assert any(not torch.equal(a, b) for a, b in zip(d0, run1["disc"][0]))
    # the decoder gets a different gradient, and the difference is linear in adv_weight
    diff1 = torch.cat([(a - b).flatten() for a, b in zip(run1["grads"], plain["grads"])])
    diff2 = torch.cat([(a - b).flatten() for a, b in zip(run2["grads"], plain["grads"])])
    assert diff1.abs().max() > 1e-6
    # float32 rounding of the gradients differs with the thread count: tolerate it relative to the largest change
    torch.testing.assert_close(diff2, 2.0 * diff1, rtol=1e-3, atol=1e-3 * float(diff1.abs().max()))


def test_discriminator_sees_the_image_channel_only():
    trainer = _gan(_vae(), 0.5, decollate=False)
    shapes = []
    trainer.state.d_network.register_forward_pre_hook(lambda m, args: shapes.append(tuple(args[0].shape)))
    trainer.run()
    assert shapes == [(2, 1, 16, 16, 16)] * 3  # generator step (fakes), then reals and fakes


def test_warm_up_trains_the_plain_autoencoder_first():
    base = _vae()
    plain = _train(_plain(copy.deepcopy(base)))
    gan = _gan(copy.deepcopy(base), 0.5, start=1, iterations=2, decollate=False)
    d0 = [p.detach().clone() for p in gan.state.d_network.parameters()]
    rec = _train(gan)
    # iteration 1 (warm-up): no adversarial term, same decoder gradient as without it, D neither run nor updated
    assert GEN not in rec["outputs"][0] and DISC not in rec["outputs"][0]
    assert float(rec["outputs"][0]["loss"]) == pytest.approx(float(plain["outputs"][0]["loss"]), rel=1e-6)
    for a, b in zip(rec["grads"], plain["grads"]):
        torch.testing.assert_close(a, b)
    assert all(torch.equal(a, b) for a, b in zip(d0, rec["disc"][0]))
    assert rec["d_states"][0] == 0  # D's Adam did not step: no moments, no step count
    # iteration 2: adversarial on (3 discriminator passes, none in warm-up), D updated
    assert rec["d_calls"] == 3 and rec["d_states"][1] > 0
    assert DISC in rec["outputs"][1] and GEN in rec["outputs"][1]
    assert any(not torch.equal(a, b) for a, b in zip(rec["disc"][0], rec["disc"][1]))


def test_without_discriminator_trains_exactly_like_supervised_trainer():
    """adv_weight 0 (no discriminator): the same losses and weights as MONAI's SupervisedTrainer."""
    base = _vae()
    plain_vae, gan_vae = copy.deepcopy(base), copy.deepcopy(base)
    plain = _train(_plain(plain_vae, iterations=2))
    gan = _train(_gan(gan_vae, None, iterations=2, decollate=False))
    assert [float(o["loss"]) for o in gan["outputs"]] == [float(o["loss"]) for o in plain["outputs"]]
    for a, b in zip(gan["grads"], plain["grads"]):
        assert torch.equal(a, b)
    for a, b in zip(gan_vae.parameters(), plain_vae.parameters()):
        assert torch.equal(a, b)


def test_zero_weight_incomplete_discriminator_and_checkpoint_keys():
    adv = PatchAdversarialLoss(criterion="least_squares")
    with pytest.raises(ValueError, match="adv_weight"):
        PatchGeneratorLoss(adv, 0.0)
    vae, disc = _vae(), _disc()
    with pytest.raises(ValueError, match="d_optimizer"):
        VAEGANTrainer(device="cpu", max_epochs=1, train_data_loader=_batches(1), g_network=vae,
                      g_optimizer=torch.optim.Adam(vae.parameters()), recon_loss_function=JointVAELoss(),
                      d_network=disc, g_loss_function=PatchGeneratorLoss(adv, 0.1),
                      d_loss_function=PatchDiscriminatorLoss(adv))
    with pytest.raises(ValueError, match="adv_start_iteration"):
        _gan(vae, 0.1, start=-1)
    opt, d_opt = torch.optim.Adam(vae.parameters()), torch.optim.Adam(disc.parameters())
    assert set(checkpoint_objects(vae, opt)) == {"model", "optimizer"}
    objs = checkpoint_objects(vae, opt, disc, d_opt)
    assert objs["discriminator"] is disc and objs["d_optimizer"] is d_opt


def _parser(tmp_path: Path, *deltas: str, **overrides) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / "common.json"), str(CONFIGS / "train_autoencoder.json"),
                        str(CONFIGS / "small.json"), *[str(CONFIGS / d) for d in deltas]])
    parser.update({"train#dataloader": "$[]", "validate#dataloader": "$[]",  # no data needed here
                   "output_dir": str(tmp_path / "runs"), "ckpt_dir": str(tmp_path / "models"), **overrides})
    return parser


def test_config_default_builds_no_discriminator(tmp_path):
    parser = _parser(tmp_path)
    assert parser["adv_weight"] == 0.0
    assert parser.get_parsed_content("discriminator_def") is None
    assert parser.get_parsed_content("discriminator") is None
    trainer = parser.get_parsed_content("train#trainer")
    assert isinstance(trainer, VAEGANTrainer) and trainer.state.d_network is None  # the autoencoder alone
    assert trainer.state.d_optimizer is None and trainer.state.g_loss_function is None
    assert set(parser.get_parsed_content("checkpoint_objects")) == {"model", "optimizer"}


def test_config_adversarial_delta_builds_patch_discriminator(tmp_path):
    parser = _parser(tmp_path, "autoencoder_adversarial.json", device="$torch.device('cpu')")
    trainer = parser.get_parsed_content("train#trainer")
    assert isinstance(trainer, VAEGANTrainer)
    disc = trainer.state.d_network
    assert isinstance(disc, PatchDiscriminator) and disc is parser.get_parsed_content("discriminator")
    assert disc.initial_conv.conv.in_channels == 1  # the image channel
    assert isinstance(trainer.state.d_optimizer, torch.optim.Adam)
    assert trainer.state.d_optimizer.param_groups[0]["lr"] == parser["d_lr"]
    assert {id(p) for p in trainer.state.d_optimizer.param_groups[0]["params"]} == {id(p) for p in disc.parameters()}
    g_loss = trainer.state.g_loss_function
    assert isinstance(g_loss, PatchGeneratorLoss) and g_loss.weight == parser["adv_weight"] > 0
    assert g_loss.adversarial_loss.criterion == "least_squares"
    assert isinstance(trainer.state.d_loss_function, PatchDiscriminatorLoss)
    assert trainer.adv_start_iteration == parser["adv_start_iteration"]
    saved = parser.get_parsed_content("checkpoint_objects")
    assert set(saved) == {"model", "optimizer", "discriminator", "d_optimizer"} and saved["discriminator"] is disc


def test_bundle_training_saves_discriminator_in_checkpoint(tmp_path):
    datalist = ensure_phantoms("heart", tmp_path / "data", cases=4, seed=0, size=32, slices=8)
    models = tmp_path / "models"
    run("training", config_file=[str(CONFIGS / "common.json"), str(CONFIGS / "train_autoencoder.json"),
                                 str(CONFIGS / "small.json"), str(CONFIGS / "autoencoder_adversarial.json")],
        image_size=[32, 32, 16], vae_channels=[8, 8, 8], d_channels=8, d_num_layers=2, num_workers=0,
        epochs=1, val_interval=1, ckpt_dir=str(models), output_dir=str(tmp_path / "runs"), datalist=datalist)
    state = torch.load(models / "autoencoder.pt", map_location="cpu", weights_only=True)
    assert {"model", "optimizer", "discriminator", "d_optimizer"} <= set(state)
    disc = PatchDiscriminator(spatial_dims=3, channels=8, in_channels=1, num_layers_d=2)
    disc.load_state_dict(state["discriminator"])


def test_engine_output_is_decollated_so_loss_handlers_work():
    trainer = _gan(_vae(), 0.1)
    trainer.run()
    out = trainer.state.output
    assert isinstance(out, list) and len(out) == 2  # one dict per batch item, as with SupervisedTrainer
    loss = from_engine(["loss"], first=True)(out)  # what the bundle's StatsHandler and MONAI's MLflow read
    assert torch.as_tensor(loss).ndim == 0 and float(loss) > 0
    assert float(from_engine([DISC], first=True)(out)) > 0
