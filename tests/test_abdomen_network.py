"""The three conditionings of the mask-to-CT U-Net (abdomen_semantic_synthesis bundle)."""

from __future__ import annotations

import pytest
import torch

from monai.networks.nets import SPADEDiffusionModelUNet

from tools.abdomen.network import (
    MaskGuidedUNet,
    SPADEDiffusionUNetAdapter,
    build_semantic_unet,
    label_index_channel,
    semantic_edge_map,
)

K = 17  # background, 15 AMOS organs, body
KW = dict(channels=(16, 32), attention_levels=(False, True), num_res_blocks=1, norm_num_groups=8, num_head_channels=16)


def _onehot(labels: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.one_hot(labels, K).permute(0, 3, 1, 2).float()


def _randomise(net: torch.nn.Module) -> None:
    """MONAI zero-initialises the output convs; give every weight a value so that signals propagate."""
    torch.manual_seed(0)
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0.0, 0.1)


def _labels(seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    lab = torch.zeros(2, 32, 32, dtype=torch.long)
    lab[:, 4:28, 4:28] = 16  # body
    lab[:, 8:16, 8:20] = torch.randint(1, 16, (1,), generator=g).item()
    lab[:, 18:26, 12:24] = torch.randint(1, 16, (1,), generator=g).item()
    return lab


@pytest.mark.parametrize("conditioning", ["concat", "mask_guided", "edge_guided", "sdm"])
def test_each_conditioning_builds_and_runs(conditioning):
    net = build_semantic_unet(conditioning, image_channels=1, num_classes=K, **KW)
    _randomise(net)
    x_t = torch.randn(2, 1, 32, 32)
    inp = torch.cat([x_t, _onehot(_labels(0))], 1)
    out = net(inp, torch.tensor([0, 999]))
    assert out.shape == (2, 2, 32, 32)  # eps + variance value
    assert torch.isfinite(out).all()
    # the mask is used: another label map gives another output
    out2 = net(torch.cat([x_t, _onehot(_labels(5))], 1), torch.tensor([0, 999]))
    assert not torch.allclose(out, out2)


def test_edge_map_marks_label_boundaries():
    lab = torch.zeros(1, 8, 8, dtype=torch.long)
    lab[:, 2:6, 2:6] = 3
    edge = semantic_edge_map(_onehot(lab))[0, 0]
    assert edge[2, 3] == 1 and edge[1, 3] == 1  # both sides of the boundary
    assert edge[3, 3] == 0 and edge[0, 0] == 0  # interior and far background


def test_edge_map_matches_a_hand_computed_4_neighbour_border():
    lab = torch.zeros(1, 10, 10, dtype=torch.long)
    lab[:, 2:5, 2:5] = 1
    lab[:, 2:5, 5:8] = 2
    edge = semantic_edge_map(_onehot(lab))[0, 0]
    expected = set()
    for y in range(10):
        for x in range(10):
            for dy, dx in ((0, 1), (1, 0), (0, -1), (-1, 0)):
                yy, xx = y + dy, x + dx
                if 0 <= yy < 10 and 0 <= xx < 10 and lab[0, y, x] != lab[0, yy, xx]:
                    expected.add((y, x))
    assert {tuple(p) for p in torch.nonzero(edge).tolist()} == expected


@pytest.mark.parametrize("guide", ["mask", "edge"])
def test_guide_features_reach_encoder_and_decoder(guide):
    net = MaskGuidedUNet(2, 1, K, guide=guide, **KW)
    _randomise(net)
    net.eval()
    inp = torch.cat([torch.randn(2, 1, 32, 32), _onehot(_labels(0))], 1)
    t = torch.tensor([10, 500])
    seen: dict[str, tuple] = {}

    def record(name):
        def hook(module, args, output):
            h, g = args
            seen[name] = (tuple(h.shape), tuple(g.shape))

        return hook

    handles = [m.register_forward_hook(record(f"enc{i}")) for i, m in enumerate(net.enc_inject)]
    handles += [m.register_forward_hook(record(f"dec{i}")) for i, m in enumerate(net.dec_inject)]
    ref = net(inp, t)
    for h in handles:
        h.remove()
    # guide features arrive at every level of both paths, at the matching resolution
    for i, size in enumerate((32, 16)):
        for path in ("enc", "dec"):
            h_shape, g_shape = seen[f"{path}{i}"]
            assert h_shape[-2:] == g_shape[-2:] == (size, size)
            assert g_shape[1] == KW["channels"][i]

    def zero_guide(module, args, output):  # drop the guide part of the concatenation
        g = args[1]
        out = output.clone()
        out[:, -g.shape[1] :] = 0
        return out

    for path in ("enc_inject", "dec_inject"):
        handles = [m.register_forward_hook(zero_guide) for m in getattr(net, path)]
        ablated = net(inp, t)
        for h in handles:
            h.remove()
        # removing the guide features from only this path changes the prediction: both paths matter
        assert (ablated - ref).abs().max() > 1e-3, path
    # and the conditioning map changes the output through the guide encoder
    inp2 = inp.clone()
    inp2[:, 1:] = _onehot(_labels(7))
    assert not torch.allclose(net(inp2, t), ref)


def test_mask_guided_gradient_flows_to_guide_encoder():
    net = MaskGuidedUNet(2, 1, K, guide="mask", **KW)
    _randomise(net)
    inp = torch.cat([torch.randn(2, 1, 32, 32), _onehot(_labels(0))], 1)
    net(inp, torch.tensor([1, 2])).square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.guide_encoder.parameters())


def test_bad_input_channels_raise():
    net = MaskGuidedUNet(2, 1, K, guide="mask", **KW)
    with pytest.raises(ValueError, match="label channels"):
        net(torch.randn(1, 5, 32, 32), torch.tensor([1]))
    with pytest.raises(ValueError, match="conditioning"):
        build_semantic_unet("oasis", **KW)


def test_label_index_channel_is_the_class_id_scaled_to_unit_range():
    lab = torch.tensor([[[0, 8], [16, 4]]])
    expected = torch.tensor([[[[-1.0, 0.0], [1.0, -0.5]]]])  # 2 k / 16 - 1
    assert torch.allclose(label_index_channel(_onehot(lab)), expected)


@pytest.mark.parametrize("mask_encoding, in_channels", [("index", 2), ("onehot", 1 + K)])
def test_concat_reads_the_mask_in_one_channel_or_one_hot(mask_encoding, in_channels):
    net = build_semantic_unet("concat", mask_encoding=mask_encoding, **KW)
    assert net.conv_in.conv.in_channels == in_channels and net.guide_encoder is None


def test_the_three_conditionings_share_one_main_unet():
    """Equal depth and width: the same ResNet blocks per level with the same output widths; only the input
    convolution and the channels added by the guide injections differ."""
    nets = {c: build_semantic_unet(c, **KW) for c in ("concat", "mask_guided", "edge_guided")}

    def layout(net):
        return [[b.out_channels for b in level] for level in (*net.enc_blocks, *net.dec_blocks)]

    assert layout(nets["concat"]) == layout(nets["mask_guided"]) == layout(nets["edge_guided"])
    assert nets["mask_guided"].conv_in.conv.in_channels == 1  # x_t only; the mask goes to the guide encoder
    assert nets["edge_guided"].conv_in.conv.in_channels == 2  # x_t + the mask channel


def test_sdm_is_monai_spade_diffusion_unet_with_the_common_call():
    net = build_semantic_unet("sdm", **KW)
    assert isinstance(net, SPADEDiffusionUNetAdapter) and isinstance(net.unet, SPADEDiffusionModelUNet)
    _randomise(net)
    x_t = torch.randn(2, 1, 32, 32)
    out = net(torch.cat([x_t, _onehot(_labels(0))], 1), torch.tensor([3, 500]))
    assert out.shape == (2, 2, 32, 32)
    assert not torch.allclose(out, net(torch.cat([x_t, _onehot(_labels(5))], 1), torch.tensor([3, 500])))
