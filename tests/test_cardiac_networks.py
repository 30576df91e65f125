"""Cardiac LDM bundle: joint VAE, latent scale factor in the checkpoint, sampling, encoder transfer."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser
from monai.inferers import LatentDiffusionInferer
from monai.networks.nets import BasicUNet, DiffusionModelUNet
from monai.networks.schedulers import DDIMScheduler

from tools.cardiac.encoder_transfer import BASIC_UNET_ENCODER, load_encoder_weights
from tools.cardiac.latent_scale import LatentScale, compute_scale_factor, load_scale_factor
from tools.cardiac.joint_vae import JointAutoencoderKL

CONFIGS = Path(__file__).resolve().parents[1] / "bundles" / "cardiac_ldm_ssl" / "configs"
K = 9  # background + 8 structures


def tiny_vae(**kw) -> JointAutoencoderKL:
    return JointAutoencoderKL(num_classes=K, channels=(8, 16, 16), norm_num_groups=8, **kw)


def joint_input(b: int = 2, s: int = 16) -> torch.Tensor:
    image = torch.rand(b, 1, s, s, s)
    label = torch.randint(0, K, (b, s, s, s))
    onehot = torch.nn.functional.one_hot(label, K).permute(0, 4, 1, 2, 3).float()
    return torch.cat([image, onehot], 1)


def test_joint_vae_shapes_and_three_channel_latent():
    torch.manual_seed(0)
    vae = tiny_vae()
    x = joint_input()
    recon, z_mu, z_sigma = vae(x)
    assert recon.shape == x.shape  # 1 image channel + 9 label logits
    assert z_mu.shape == z_sigma.shape == (2, 3, 4, 4, 4)  # 3-channel latent, 2 downsamplings
    assert vae.encode_stage_2_inputs(x).shape == (2, 3, 4, 4, 4)
    with pytest.raises(ValueError, match="one-hot label channels"):
        vae.encode(x[:, :5])


def test_joint_vae_sums_the_two_one_layer_encoders():
    torch.manual_seed(0)
    vae = tiny_vae()
    x = joint_input(1)
    image, label = x[:, :1], x[:, 1:]
    fused = vae.embed(image, label)
    # a sum keeps the width of one encoder (8); a concatenation would give 16 channels
    assert fused.shape == (1, 8, 16, 16, 16)
    torch.testing.assert_close(fused, vae.image_encoder(image) + vae.label_encoder(label))
    # each encoder is one convolution layer
    assert sum(isinstance(m, torch.nn.Conv3d) for m in vae.image_encoder.modules()) == 1
    assert sum(isinstance(m, torch.nn.Conv3d) for m in vae.label_encoder.modules()) == 1
    # encode() feeds exactly that sum into the AutoencoderKL encoder (its own first conv is removed)
    assert isinstance(vae.autoencoder.encoder.blocks[0], torch.nn.Identity)
    z_mu, _ = vae.encode(x)
    torch.testing.assert_close(z_mu, vae.autoencoder.encode(fused)[0])
    # additivity: swapping the label changes the fused features by the label branch only
    other = torch.roll(label, 1, dims=1)
    torch.testing.assert_close(vae.embed(image, other) - fused, vae.label_encoder(other) - vae.label_encoder(label),
                               atol=1e-5, rtol=1e-5)


def test_decoder_returns_image_and_label_logits():
    torch.manual_seed(0)
    vae = tiny_vae()
    z = torch.randn(2, 3, 4, 4, 4)
    image, logits = vae.decode_pair(z)
    assert image.shape == (2, 1, 16, 16, 16)
    assert logits.shape == (2, K, 16, 16, 16)
    torch.testing.assert_close(torch.cat([image, logits], 1), vae.decode_stage_2_outputs(z))


def test_gradient_checkpointing_gives_same_output():
    torch.manual_seed(0)
    a = tiny_vae(use_checkpoint=False)
    b = tiny_vae(use_checkpoint=True)
    b.load_state_dict(a.state_dict())
    x = joint_input(1)
    torch.testing.assert_close(a.decode(a.encode(x)[0]), b.decode(b.encode(x)[0]))


class _Scaling(torch.nn.Module):
    """Stand-in autoencoder: latent = 3 * input, decode records what it receives."""

    def __init__(self):
        super().__init__()
        self.received = None

    def encode_stage_2_inputs(self, x):
        return 3.0 * x

    def decode_stage_2_outputs(self, z):
        self.received = z.clone()
        return z


def test_scale_factor_computed_saved_in_and_read_from_checkpoint(tmp_path):
    gen = torch.Generator().manual_seed(0)
    batches = [{"joint": torch.randn(2, 3, 4, 4, 4, generator=gen) * 0.5 + 1.0} for _ in range(4)]
    factor = compute_scale_factor(_Scaling(), batches, input_key="joint")
    all_latents = torch.cat([3.0 * b["joint"] for b in batches]).double()
    assert factor == pytest.approx(1.0 / all_latents.std(unbiased=False).item(), rel=1e-9)

    holder = LatentScale()
    assert not holder.is_set
    holder.set(factor)
    unet = DiffusionModelUNet(spatial_dims=3, in_channels=3, out_channels=3, channels=(8, 8), attention_levels=(False, False),
                              num_res_blocks=1, norm_num_groups=8)
    path = tmp_path / "ldm.pt"
    torch.save({"model": unet.state_dict(), "scale_factor": holder.state_dict()}, path)
    assert load_scale_factor(path) == pytest.approx(factor)
    restored = LatentScale()
    restored.load_state_dict(torch.load(path, weights_only=True)["scale_factor"])
    assert restored.value == pytest.approx(factor)

    # sampling divides by the stored factor before decoding
    sched = DDIMScheduler(num_train_timesteps=10)
    sched.set_timesteps(2)
    inferer = LatentDiffusionInferer(sched, scale_factor=load_scale_factor(path))
    fake = _Scaling()
    noise = torch.randn(1, 3, 4, 4, 4)
    out = inferer.sample(noise, fake, unet, verbose=False)
    torch.testing.assert_close(fake.received, out)
    latent = DiffusionInferer_sample(inferer, noise, unet)
    torch.testing.assert_close(out, latent / factor)

    torch.save({"model": unet.state_dict()}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="scale_factor"):
        load_scale_factor(tmp_path / "bad.pt")
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_scale_factor(tmp_path / "missing.pt")


def DiffusionInferer_sample(inferer, noise, unet):
    from monai.inferers import DiffusionInferer

    return DiffusionInferer.sample(inferer, noise, unet, verbose=False)


def test_sample_decodes_to_image_and_label_volumes():
    torch.manual_seed(0)
    vae = tiny_vae().eval()
    unet = DiffusionModelUNet(spatial_dims=3, in_channels=3, out_channels=3, channels=(8, 8),
                              attention_levels=(False, False), num_res_blocks=1, norm_num_groups=8).eval()
    sched = DDIMScheduler(num_train_timesteps=10)
    sched.set_timesteps(2)
    out = LatentDiffusionInferer(sched, scale_factor=0.7).sample(torch.randn(1, 3, 4, 4, 4), vae, unet, verbose=False)
    image, logits = out[:, :1], out[:, 1:]
    assert image.shape == (1, 1, 16, 16, 16) and logits.shape == (1, K, 16, 16, 16)
    label = logits.argmax(1)
    assert label.min() >= 0 and label.max() < K


def _finetune_network():
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / "common.json"), str(CONFIGS / "train.json")])
    parser["seg_features"] = [8, 8, 16, 16, 32, 8]
    return parser.get_parsed_content("network_def")


def test_finetune_loads_encoder_weights_and_reinitialises_decoder(tmp_path):
    torch.manual_seed(1)
    seg = _finetune_network()
    assert isinstance(seg, BasicUNet)
    # the SSL network: same architecture, restores 1 image channel
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / "common.json"), str(CONFIGS / "pretrain_ssl.json")])
    parser["seg_features"] = [8, 8, 16, 16, 32, 8]
    ssl = parser.get_parsed_content("network_def")
    torch.manual_seed(2)
    for p in ssl.parameters():  # make "pretrained" weights clearly different from any init
        p.data.normal_()
    path = tmp_path / "ssl.pt"
    torch.save({"model": ssl.state_dict()}, path)
    before = {k: v.clone() for k, v in seg.state_dict().items()}
    load_encoder_weights(seg, path, BASIC_UNET_ENCODER)
    pre, after = ssl.state_dict(), seg.state_dict()
    enc = [k for k in after if k.startswith(tuple(p + "." for p in BASIC_UNET_ENCODER))]
    dec = [k for k in after if k not in enc and after[k].is_floating_point()]
    assert enc and dec
    for k in enc:
        torch.testing.assert_close(after[k], pre[k])
    for k in dec:
        torch.testing.assert_close(after[k], before[k])  # decoder keeps its fresh initialisation
        if k in pre and pre[k].shape == after[k].shape and pre[k].numel() > 1:
            assert not torch.equal(after[k], pre[k]), k
    assert load_encoder_weights(seg, None) is seg  # scratch baseline: no-op
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_encoder_weights(seg, tmp_path / "nope.pt")


def test_class_conditioned_unet_from_the_conditional_delta():
    from tools.cardiac.class_conditioned_unet import ClassConditionedDiffusionUNet

    for stage in ("train_ldm.json", "generate.json"):
        parser = ConfigParser()
        parser.read_config([str(CONFIGS / "common.json"), str(CONFIGS / stage), str(CONFIGS / "conditional.json")])
        parser.update({"ldm_channels": [8, 8], "ldm_attention_levels": [False, False], "ldm_num_head_channels": [0, 8],
                       "ldm_norm_groups": 8})
        net = parser.get_parsed_content("network_def")
        assert isinstance(net, ClassConditionedDiffusionUNet)
    cond = parser.get_parsed_content("generator#condition")
    assert cond.tolist() == [[0, 0, 0]]
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / "common.json"), str(CONFIGS / "train_ldm.json"), str(CONFIGS / "conditional.json")])
    add = parser.get_parsed_content("condition_transforms")[0]
    assert add({"sex": 1, "scan_region": 2, "metal_implant": 0})["conditions"].tolist() == [1, 2, 0]
    torch.manual_seed(0)
    for p in net.parameters():  # MONAI zero-initialises the output conv; randomise to see the conditioning
        p.data.normal_(0, 0.1)
    x, t = torch.randn(2, 3, 4, 4, 4), torch.tensor([3, 3])
    a = net(x, t, context=torch.tensor([[0, 1, 0], [0, 1, 0]]))
    b = net(x, t, context=torch.tensor([[[1, 1, 0]], [[0, 2, 1]]]))  # (B, 1, K) as DiffusionPrepareBatch gives
    assert not torch.allclose(a, b)
    emb = net.unet.class_embedding
    codes = torch.tensor([[1, 2, 1]])
    torch.testing.assert_close(emb(codes), emb.tables[0](codes[:, 0]) + emb.tables[1](codes[:, 1]) + emb.tables[2](codes[:, 2]))
    with pytest.raises(ValueError, match="condition 1"):
        emb(torch.tensor([[0, 3, 0]]))


@pytest.mark.parametrize("blocks", [1, 2])
def test_ldm_residual_blocks_per_level_come_from_the_config_key(blocks):
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / "common.json"), str(CONFIGS / "train_ldm.json"), str(CONFIGS / "small.json")])
    parser["ldm_num_res_blocks"] = blocks
    unet = parser.get_parsed_content("diffusion_def")
    assert [len(b.resnets) for b in unet.down_blocks] == [blocks] * 3
    x = torch.randn(2, 3, 8, 8, 8)
    assert unet(x, torch.tensor([0, 999])).shape == x.shape
