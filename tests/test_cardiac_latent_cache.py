"""Cardiac LDM bundle: latents cached once (``cache_latents`` of train_ldm.json, tools.cardiac.latent_cache).

The cached posteriors are the frozen VAE's encoding of the volumes (weights read from the checkpoint), the LDM
trainer built from the bundle config trains on them without running the encoder again, its loss goes down,
and the scale factor is 1 / std of the latents drawn from the cache.
"""

from __future__ import annotations

from pathlib import Path

import torch
from ignite.engine import Events
from monai.bundle import ConfigParser
from monai.handlers import from_engine

from test_cardiac_bundle import TINY
from tools.cardiac.latent_cache import CachedLatents
from tools.data.phantoms import ensure_phantoms

CONFIGS = Path(__file__).resolve().parents[1] / "bundles" / "cardiac_ldm_ssl" / "configs"


def _parser(**overrides) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / f) for f in ["common.json", "train_ldm.json", "small.json"]])
    parser.update({**TINY, **overrides})
    return parser


def test_cached_latents_equal_the_vae_encoding_of_the_volumes(tmp_path):
    torch.manual_seed(0)
    trained = _parser().get_parsed_content("autoencoder_def")
    torch.save({"model": trained.state_dict()}, tmp_path / "autoencoder.pt")
    torch.manual_seed(1)
    fresh = _parser().get_parsed_content("autoencoder_def")  # other weights until the checkpoint is loaded
    volumes = [{"joint": torch.randn(1 + trained.num_classes, 16, 16, 16)} for _ in range(3)]  # image + one-hot
    cache = CachedLatents(fresh, volumes, copies=2, checkpoint=tmp_path / "autoencoder.pt")
    assert len(cache) == 6
    trained.eval()
    with torch.no_grad():
        for i, item in enumerate(cache):
            mu, sigma = trained.encode(volumes[i % 3]["joint"][None])
            torch.testing.assert_close(item["z_mu"], mu[0])
            torch.testing.assert_close(item["z_sigma"], sigma[0])


def test_ldm_trains_from_the_cached_latents_with_its_loss_going_down(tmp_path):
    datalist = ensure_phantoms("heart", tmp_path / "data", cases=4, seed=0, size=32, slices=8)
    torch.manual_seed(0)
    torch.save({"model": _parser().get_parsed_content("autoencoder_def").state_dict()}, tmp_path / "autoencoder.pt")
    parser = _parser(datalist=datalist, ckpt_dir=str(tmp_path / "models"), output_dir=str(tmp_path / "runs"),
                     autoencoder_checkpoint=str(tmp_path / "autoencoder.pt"), cache_latents=True, latent_copies=4,
                     epochs=8, lr=0.002)
    parser.get_parsed_content("initialize")
    trainer = parser.get_parsed_content("train#trainer")
    cache = parser.get_parsed_content("train#latent_dataset")
    assert isinstance(trainer.data_loader.dataset, CachedLatents)
    n_cases = len(parser.get_parsed_content("real_files"))
    assert len(cache) == 4 * n_cases
    autoencoder = parser.get_parsed_content("autoencoder")
    encoded = len(cache)  # builds the cache (4 encodings per case)
    calls = []
    autoencoder.register_forward_pre_hook(lambda *_: calls.append(1))
    original_encode = autoencoder.encode
    autoencoder.encode = lambda x: (calls.append(1), original_encode(x))[1]
    losses = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: losses.append(float(from_engine(["loss"], first=True)(e.state.output))))
    trainer.run()
    assert encoded == 4 * n_cases and not calls  # no encoder call while training
    assert len(losses) == 8 * 4 * n_cases
    assert sum(losses[-12:]) / 12 < 0.7 * sum(losses[:4]) / 4, losses
    scale = parser.get_parsed_content("latent_scale").value
    mu = torch.stack([c["z_mu"] for c in cache]).double()
    sigma = torch.stack([c["z_sigma"] for c in cache]).double()
    expected = 1.0 / float((mu.var() + sigma.pow(2).mean()).sqrt())  # std of z_mu + z_sigma * eps
    assert abs(scale - expected) < 0.05 * expected, (scale, expected)


def test_cached_posterior_draws_are_plain_tensors_with_the_posterior_statistics():
    from monai.data import MetaTensor

    from tools.cardiac.latent_prepare_batch import sample_cached

    torch.manual_seed(0)
    mu, sigma = MetaTensor(torch.full((4000, 1), 2.0)), MetaTensor(torch.full((4000, 1), 0.5))
    z = sample_cached({"z_mu": mu, "z_sigma": sigma})
    # a MetaTensor would send every network operation through its __torch_function__
    assert type(z) is torch.Tensor
    assert abs(float(z.mean()) - 2.0) < 0.05 and abs(float(z.std()) - 0.5) < 0.05
