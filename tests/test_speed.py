"""Speed work: batched samples, image-only calls, the cached training pipeline, GPU switches, tools.bench."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from monai.networks.schedulers import DDPMScheduler
from monai.transforms import Compose, Resized, ScaleIntensityRanged

from tools.aortadiff.inferers import AortaDDIMInferer, AortaRePaintInferer, count_denoising_calls, repaint_schedule
from tools.aortadiff.network import TwoHeadDiffusionUNet
from tools.aortadiff.transforms import AortaROId, SignedDistanced
from tools.bench.counting import CallCounter
from tools.data.phantoms import ensure_phantoms
from tools.data.transforms import ExtractSliced
from tools.engines.gpu import prepare_network

REPO = Path(__file__).resolve().parents[1]
TINY = dict(channels=(8, 16), attention_levels=(False, True), num_res_blocks=1, num_head_channels=8, norm_num_groups=8)


def _tiny_net() -> TwoHeadDiffusionUNet:
    torch.manual_seed(0)
    net = TwoHeadDiffusionUNet(**TINY).eval()
    torch.nn.init.normal_(net.image_head[-1].conv.weight, std=0.1)  # non-degenerate x0 head
    return net


def test_image_only_is_the_image_channel_of_the_full_output():
    net = _tiny_net()
    x, t = torch.randn(3, 2, 16, 16), torch.tensor([0, 500, 999])
    with torch.no_grad():
        full, image = net(x, t), net(x, t, image_only=True)
    assert full.shape == (3, 2, 16, 16) and image.shape == (3, 1, 16, 16)
    torch.testing.assert_close(image, full[:, :1])


def test_samples_share_network_calls_and_only_the_last_call_runs_the_mask_head():
    net = CallCounter(_tiny_net())
    steps, samples, batch = 3, 3, 2
    inferer = AortaDDIMInferer(DDPMScheduler(1000), num_inference_steps=steps, num_samples=samples,
                               slice_batch_size=batch, seed=0, progress=False)
    x = torch.zeros(4, 2, 16, 16)
    x[:, 0] = torch.rand(4, 16, 16) * 2 - 1
    x[:, 1, 4:12, 4:12] = 1
    out = inferer(x, net)
    assert net.calls == math.ceil(4 / batch) * steps  # the same as one sample
    assert net.batch_sizes == [batch * samples] * net.calls  # slices x samples in one network batch
    image_only = [k.get("image_only", False) for k in net.kwargs]
    assert image_only == [True, True, False] * 2  # mask head at the last call of each batch only
    assert out.shape == (4, 4, 16, 16)  # image, SDF, image std, lumen vote
    roi = x[:, 1] > 0.5
    assert (out[:, 2][roi] > 0).float().mean() > 0.5  # the samples differ: per-pixel std from 3 samples
    assert torch.all(out[:, 2][~roi] == 0)
    assert torch.all(out[:, 1].abs() <= 1) and not torch.all(out[:, 1] == 1)  # SDF from the mask head


def test_cached_training_pipeline_gives_the_samples_of_slicing_first(tmp_path):
    """train.json caches windowing, in-plane resizing, ROI and per-slice SDF of whole volumes before the
    random slice; every sample equals slicing first and transforming the 2D slice (the former order)."""
    datalist = ensure_phantoms("aaa", tmp_path / "aaa", cases=4, seed=0, size=32, slices=8)
    parser = ConfigParser()
    parser.read_config(str(REPO / "bundles/aortadiff_cect/configs/train.json"))
    parser.update({"datalist": datalist, "image_size": 24, "roi_margin": 2})
    files = parser.get_parsed_content("train#files")
    pipeline = parser.get_parsed_content("train#preprocessing")
    names = [type(t).__name__ for t in pipeline.transforms]
    assert names.index("RandSliced") == len(names) - 1  # only the slice draw after the cache
    keys = ["ncct", "cect", "aorta", "lumen"]
    slice_first = Compose([*pipeline.transforms[:4], ExtractSliced(keys),
                           ScaleIntensityRanged(["ncct", "cect"], -200.0, 600.0, -1.0, 1.0, clip=True),
                           Resized(["ncct", "cect"], (24, 24), mode="bilinear"),
                           Resized(["aorta", "lumen"], (24, 24), mode="nearest"),
                           AortaROId("aorta", "roi", margin=2), SignedDistanced("lumen", "lumen_sdf")])
    pipeline.set_random_state(seed=1)
    for entry in files[:2]:
        for _ in range(2):
            got = pipeline(entry)
            ref = slice_first({**entry, "slice_index": got["slice_index"]})
            for k in ("ncct", "cect", "aorta", "lumen", "roi", "lumen_sdf"):
                assert got[k].shape == (1, 24, 24), k
                np.testing.assert_allclose(np.asarray(got[k]), np.asarray(ref[k]), atol=1e-5, err_msg=k)


def test_prepare_network_channels_last_keeps_outputs_and_state_dict():
    net = _tiny_net()
    x, t = torch.randn(2, 2, 16, 16), torch.tensor([3, 700])
    with torch.no_grad():
        before = net(x, t)
    keys = list(net.state_dict())
    net = prepare_network(net, "cpu", channels_last=True)
    conv = net.image_head[-1].conv.weight
    assert conv.is_contiguous(memory_format=torch.channels_last)
    assert list(net.state_dict()) == keys
    with torch.no_grad():
        torch.testing.assert_close(net(x, t), before, atol=1e-5, rtol=1e-4)


def _default_calls(bundle: str, files: list[str]) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config([str(REPO / "bundles" / bundle / "configs" / f) for f in files])
    return parser


def test_bench_quick_json_counts_the_default_calls():
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "tools.bench", "--quick", "--json"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout)  # stdout holds the JSON only (engine logs go to stderr)
    # AortaDiff: 100 ROI slices in batches of slice_batch_size, each batch one schedule
    a = _default_calls("aortadiff_cect", ["inference.json"])
    per_batch = (count_denoising_calls(repaint_schedule(a["num_inference_steps"], a["jump_length"], a["jump_n_sample"]))
                 if a["sampler"] == "repaint" else a["num_inference_steps"])
    assert result["aortadiff_cect"]["calls_per_100_slice_volume"] == math.ceil(100 / a["slice_batch_size"]) * per_batch
    assert result["aortadiff_cect"]["mask_head_calls_per_100_slice_volume"] == math.ceil(100 / a["slice_batch_size"])
    b = _default_calls("abdomen_semantic_synthesis", ["inference.json"])
    assert result["abdomen_semantic_synthesis"]["calls_per_100_slice_volume"] == \
        math.ceil(100 / b["slice_batch_size"]) * b["num_inference_steps"]
    c = _default_calls("cardiac_ldm_ssl", ["common.json", "generate.json"])
    assert result["cardiac_ldm_ssl"]["calls_per_100_slice_volume"] == c["num_inference_steps"]
    rows = {r["setting"]: r for r in result["aortadiff_cect"]["samplers"]}
    slices = rows["DDIM 2"]["eval_slices"]
    assert rows["DDIM 2"]["eval_calls"] == 2 * math.ceil(slices / a["slice_batch_size"])
    assert rows["DDIM 1 (x0 at t = T-1)"]["calls_per_100_slice_volume"] == math.ceil(100 / a["slice_batch_size"])
    assert rows["RePaint 10, jump 5 x 2"]["eval_calls"] == count_denoising_calls(repaint_schedule(10, 5, 2))
    for r in rows.values():
        assert -100 < r["roi_psnr"] < 100 and 0 <= r["lumen_dice"] <= 1
    t = result["aortadiff_cect"]["training"]
    assert t["bundle_img_per_s"] > 0 and t["bare_img_per_s"] > 0
    assert t["bundle_over_bare_step"] == pytest.approx(t["bare_img_per_s"] / t["bundle_img_per_s"])
    # abdomen: sampler settings through the bundle's sampler_def on the held-out slices (one network batch)
    ab = result["abdomen_semantic_synthesis"]
    assert ab["paper_sampler_calls_per_100_slice_volume"] == math.ceil(100 / b["slice_batch_size"]) * 1000
    for r in ab["samplers"]:
        assert r["eval_calls"] == r["num_inference_steps"]
        assert r["calls_per_100_slice_volume"] == math.ceil(100 / b["slice_batch_size"]) * r["num_inference_steps"]
        assert 0 < r["psnr"] < 100 and -1 <= r["ssim"] <= 1
    assert ab["fastest_within_tolerance"] in {r["setting"] for r in ab["samplers"]}


def test_abdomen_segmenter_dice_by_hand():
    from tools.bench.abdomen import segmenter_dice

    # 2 slices of 4 x 4, classes: 0 background, 1-2 organs, 3 body (counts as background for the segmenter)
    lab = torch.zeros(2, 4, 4, dtype=torch.long)
    lab[0, :2, :2] = 1  # organ 1 in slice 0 only (4 px)
    lab[1, 2:, 2:] = 2  # organ 2 in slice 1 only (4 px)
    lab[0, 2:, :] = 3   # body
    onehot = torch.nn.functional.one_hot(lab, 4).permute(0, 3, 1, 2).float()

    class Seg(torch.nn.Module):  # 3 output channels: background + 2 organs; predicts organ 1 on the top-left 2 x 4
        def forward(self, x):
            out = torch.zeros(x.shape[0], 3, 4, 4)
            out[:, 0] = 1.0
            out[:, 1, :2, :] = 2.0
            return out

    # slice 0, organ 1: 4 px true, 8 predicted, 4 overlap -> 2 * 4 / 12; organ 2 (slice 1): none predicted -> 0
    assert segmenter_dice(Seg(), torch.zeros(2, 1, 4, 4), onehot) == pytest.approx((8 / 12 + 0.0) / 2)


def test_abdomen_fastest_setting_within_tolerance():
    from tools.bench.abdomen import choose_fastest

    rows = [{"setting": "paper", "psnr": 20.0, "dice": 0.80, "calls_per_100_slice_volume": 13000},
            {"setting": "a", "psnr": 19.6, "dice": 0.795, "calls_per_100_slice_volume": 650},
            {"setting": "b", "psnr": 19.4, "dice": 0.85, "calls_per_100_slice_volume": 26},  # PSNR 0.6 dB below
            {"setting": "c", "psnr": 21.0, "dice": 0.785, "calls_per_100_slice_volume": 13},  # Dice 0.015 below
            {"setting": "real", "psnr": float("inf"), "dice": 0.9, "calls_per_100_slice_volume": 0,
             "reference_only": True}]
    assert choose_fastest(rows, "paper")["setting"] == "a"
    assert choose_fastest(rows, "missing") is None
    nan_ref = [dict(r, dice=float("nan")) for r in rows]  # no segmenter: PSNR alone decides
    assert choose_fastest(nan_ref, "paper")["setting"] == "c"


def test_progress_bar_reads_the_loss_every_n_iterations_only():
    from ignite.engine import Engine

    from tools.engines.progress import InteractiveProgressBar

    reads = []
    handler = InteractiveProgressBar(enabled=True, every=3)
    original = handler._scalar
    handler._scalar = lambda output: reads.append(output) or original(output)
    engine = Engine(lambda engine, batch: {"loss": torch.tensor(float(batch))})
    handler.attach(engine)
    engine.run(list(range(6)), max_epochs=1)
    assert len(reads) == 2  # iterations 3 and 6
    with pytest.raises(ValueError, match="every"):
        InteractiveProgressBar(every=0)
