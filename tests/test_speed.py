"""Speed work: batched samples, image-only calls, the cached training pipeline, GPU switches, tools.bench."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from monai.engines.utils import IterationEvents
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


def test_fused_ema_handler_gives_the_stock_handlers_weights():
    """FusedEMAHandler (multi-tensor mul_/add_) against ignite's EMAHandler: the same EMA weights, bit for bit,
    through warm-up and after it."""
    from ignite.engine import Engine
    from ignite.handlers import EMAHandler

    from tools.engines.ema import FusedEMAHandler

    def run(handler_cls):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Conv2d(2, 4, 3), torch.nn.GroupNorm(2, 4), torch.nn.Conv2d(4, 1, 1))
        handler = handler_cls(model, momentum=0.01, momentum_warmup=0.1, warmup_iters=3)

        def step(engine, batch):  # a stand-in for the optimiser step: the same updates in both runs
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(torch.randn_like(p) * 0.1)

        engine = Engine(step)
        handler.attach(engine)
        engine.run(range(6), max_epochs=1)
        return list(handler.ema_model.parameters()), list(model.parameters())

    stock, model = run(EMAHandler)
    fused, _ = run(FusedEMAHandler)
    assert all(torch.equal(a, b) for a, b in zip(stock, fused))
    assert not all(torch.equal(a, m) for a, m in zip(stock, model))  # the EMA lags behind the model


def test_lpips_channels_last_gives_the_same_distance_and_gradient():
    """ROILPIPSLoss(channels_last=True), as train.json builds it, against the default layout on a fixed batch."""
    from tools.aortadiff.lpips_loss import ROILPIPSLoss

    torch.manual_seed(0)
    default = ROILPIPSLoss(pretrained_backbone=False)
    fast = ROILPIPSLoss(pretrained_backbone=False, channels_last=True)
    fast.load_state_dict(default.state_dict())
    g = torch.Generator().manual_seed(1)
    pred0 = torch.rand(3, 1, 32, 32, generator=g) * 2 - 1
    target = torch.rand(3, 1, 32, 32, generator=g) * 2 - 1
    roi = torch.zeros(3, 1, 32, 32)
    roi[:, :, 8:24, 6:20] = 1
    results = []
    for loss in (default, fast):
        pred = pred0.clone().requires_grad_(True)
        value = loss(pred, target, roi)
        value.backward()
        results.append((value.detach(), pred.grad))
    (v0, g0), (v1, g1) = results
    assert float(v0) > 0 and g0.abs().sum() > 0
    torch.testing.assert_close(v1, v0, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(g1, g0, rtol=1e-4, atol=1e-5 * float(g0.abs().max()))


def test_kendall_on_device_mask_flag_equals_the_python_bool():
    """The mask term dropped by torch.where (tensor flag, no host sync) gives the loss and the gradients of the
    former Python-bool branch, with and without labeled samples, learnable and fixed weights."""
    from tools.aortadiff.kendall import KendallUncertaintyWeighting

    for learnable in (True, False):
        for valid in (True, False):
            grads, losses = [], []
            for flag in (valid, torch.tensor(valid)):
                w = KendallUncertaintyWeighting(learnable=learnable, fixed_weights=(1.0, 0.3), init_log_vars=(0.4, -0.2))
                img, mask = torch.tensor(0.7, requires_grad=True), torch.tensor(0.05, requires_grad=True)
                loss = w(img, mask, mask_valid=flag)
                loss.backward()
                losses.append(loss.detach())
                grads.append([torch.zeros(()) if v is None else v  # a term left out of the graph: no gradient
                              for v in (img.grad, mask.grad, w.log_vars.grad if learnable else None)])
            assert torch.equal(losses[0], losses[1]), (learnable, valid)
            assert all(torch.equal(a, b) for a, b in zip(*grads)), (learnable, valid)


def test_aortadiff_loss_terms_stay_tensors_until_logged():
    """train.json's loss on a fixed batch: the same total loss as the former computation (Python-bool mask flag,
    LPIPS in the default layout); the terms reach the trainer output as one-element tensors (no float() per
    iteration) and read as the same floats."""
    from tools.engines.loss_terms import LossTermsHandler, scalar_logs

    parser = ConfigParser()
    parser.read_config([str(REPO / "bundles/aortadiff_cect/configs/train.json")])
    parser.update({"lpips_pretrained_backbone": False, "device": "$torch.device('cpu')"})
    loss_fn = parser.get_parsed_content("loss")
    assert loss_fn.lpips_loss.channels_last
    g = torch.Generator().manual_seed(0)
    b, s = 3, 32
    roi = torch.zeros(b, 1, s, s)
    roi[:, :, 8:24, 8:24] = 1
    target = {"x_start": torch.rand(b, 1, s, s, generator=g) * 2 - 1, "noise": torch.randn(b, 1, s, s, generator=g),
              "timesteps": torch.tensor([10, 400, 900]), "roi": roi,
              "lumen_sdf": torch.rand(b, 1, s, s, generator=g) * 2 - 1, "labeled": torch.tensor([1.0, 0.0, 1.0])}
    pred = torch.rand(b, 2, s, s, generator=g) * 2 - 1
    loss = loss_fn(pred, target)

    # the former computation: LPIPS in the default layout with the same weights, the mask flag as a Python bool
    from tools.aortadiff.labeled_mse import labeled_mse
    from tools.aortadiff.lpips_loss import ROILPIPSLoss

    old_lpips = ROILPIPSLoss(pretrained_backbone=False)
    old_lpips.load_state_dict(loss_fn.lpips_loss.state_dict())
    loss_fn.lpips_loss = old_lpips
    loss_img, _ = loss_fn.image_loss(pred[:, :1], target)
    loss_mask, n = labeled_mse(pred[:, 1:], target["lumen_sdf"], target["labeled"])
    old = loss_fn.loss_weighting(loss_img, loss_mask, mask_valid=bool(n > 0))
    torch.testing.assert_close(loss, old, rtol=1e-6, atol=1e-7)

    engine = SimpleNamespace(state=SimpleNamespace(output={"loss": loss.detach()}))
    LossTermsHandler(loss_fn)(engine)  # what it does at IterationEvents.LOSS_COMPLETED
    seen = engine.state.output
    terms = {k: v for k, v in seen.items() if k != "loss"}
    assert set(terms) == set(loss_fn.last_terms) and terms
    assert all(torch.is_tensor(v) and v.numel() == 1 for v in terms.values())
    logged = scalar_logs(seen)
    assert all(isinstance(v, float) for v in logged.values())
    assert {k: logged[k] for k in terms} == loss_fn.last_terms
    assert logged["n_labeled"] == 2.0 and logged["w_img"] == 0.5


def test_every_trained_parameter_gets_a_gradient_so_set_to_none_changes_nothing(tmp_path):
    """train.json zeroes gradients with set_to_none (as the bare step does): AdamW then skips a parameter whose
    gradient is None, where zeroed gradients would still decay it. After a bundle iteration every parameter of
    the optimiser (network and Kendall s1, s2) has a gradient, so the updates are those of zeroed gradients."""
    datalist = ensure_phantoms("aaa", tmp_path / "aaa", cases=4, seed=0, size=32, slices=8)
    parser = ConfigParser()
    parser.read_config([str(REPO / "bundles/aortadiff_cect/configs/train.json"),
                        str(REPO / "bundles/aortadiff_cect/configs/small.json")])
    parser.update({"datalist": datalist, "image_size": 32, "roi_margin": 2, "network_channels": [8, 16],
                   "attention_levels": [False, True], "num_head_channels": 8, "batch_size": 2, "iterations": 1,
                   "val_interval": 1, "val_at_start": False, "lpips_pretrained_backbone": False,
                   "ckpt_dir": str(tmp_path / "models"), "output_dir": str(tmp_path / "runs"),
                   "device": "$torch.device('cpu')", "val_slices_per_case": 1, "val_inference_steps": 1})
    trainer = parser.get_parsed_content("train#trainer")
    assert trainer.optim_set_to_none
    grads = {}
    trainer.add_event_handler(IterationEvents.BACKWARD_COMPLETED, lambda e: grads.update(
        {i: p.grad is not None for i, p in enumerate(p for g in e.optimizer.param_groups for p in g["params"])}))
    trainer.run()
    assert grads and all(grads.values())


def test_abdomen_training_slices_as_plain_tensors_equal_the_metatensor_pipeline(tmp_path):
    """train.json drops MONAI metadata from the cached volumes before the random slice: the same samples as
    the pipeline without that step, as plain tensors, and the cached volume is not changed by drawing."""
    from monai.data import MetaTensor

    datalist = ensure_phantoms("abdomen", tmp_path / "abd", cases=3, seed=0, size=32, slices=8)
    parser = _default_calls("abdomen_semantic_synthesis", ["train.json"])
    parser.update({"datalist": datalist, "image_size": 24})
    files = parser.get_parsed_content("train#files")
    pipeline = parser.get_parsed_content("train#preprocessing")
    names = [type(t).__name__ for t in pipeline.transforms]
    slicer = names.index("RandSliced")
    plain_at = slicer - 1
    assert names[plain_at] == "EnsureTyped" and pipeline.transforms[plain_at].converter.track_meta is False
    with_meta = Compose([*pipeline.transforms[:plain_at], ExtractSliced(["image", "label", "body"]),
                         *pipeline.transforms[slicer + 1:]])  # the same slice, drawn before: MetaTensors throughout
    cached = pipeline.transforms[:plain_at + 1]  # what CacheDataset keeps: up to the first random transform
    volume = Compose(cached)(files[0])
    assert all(type(volume[k]) is torch.Tensor for k in ("image", "label", "body"))  # cached without metadata
    assert isinstance(Compose(cached[:-1])(files[0])["image"], MetaTensor)
    before = {k: volume[k].clone() for k in ("image", "label", "body")}
    pipeline.set_random_state(seed=3)
    for _ in range(3):
        got = pipeline(files[0])
        ref = with_meta({**files[0], "slice_index": got["slice_index"]})
        assert got["image"].shape == (1, 24, 24) and got["label"].shape == (17, 24, 24)
        for k in ("image", "label"):
            np.testing.assert_allclose(np.asarray(got[k]), np.asarray(ref[k]), atol=1e-6, err_msg=k)
    rest = Compose(pipeline.transforms[slicer:])
    rest.set_random_state(seed=3)
    for _ in range(3):
        rest(dict(volume))  # what a sample does to the cache's copy: must not write into the cached arrays
    for k, v in before.items():
        assert torch.equal(volume[k], v), k


def test_abdomen_sdpa_switch_reaches_the_attention_and_keeps_the_output():
    """configs' top-level use_flash_attention picks PyTorch SDPA in MONAI's attention blocks; same weights, same
    output as the einsum path (it runs on the CPU too)."""
    nets = []
    for flash in (False, True):
        parser = _default_calls("abdomen_semantic_synthesis", ["train.json", "small.json"])
        parser.update({"use_flash_attention": flash, "channels": [8, 16, 32], "norm_num_groups": 4,
                       "num_head_channels": 8})
        nets.append(parser.get_parsed_content("network_def").eval())
    attn = [m for m in nets[1].modules() if hasattr(m, "use_flash_attention")]
    assert attn and all(m.use_flash_attention for m in attn)
    assert not any(m.use_flash_attention for m in nets[0].modules() if hasattr(m, "use_flash_attention"))
    nets[1].load_state_dict(nets[0].state_dict())
    x = torch.cat([torch.randn(2, 1, 32, 32),
                   torch.nn.functional.one_hot(torch.randint(0, 17, (2, 32, 32)), 17).permute(0, 3, 1, 2).float()], 1)
    t = torch.tensor([10, 900])
    with torch.no_grad():
        torch.testing.assert_close(nets[1](x, t), nets[0](x, t), atol=1e-5, rtol=1e-4)
