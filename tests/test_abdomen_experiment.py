"""The abdomen comparison (python -m tools.experiments abdomen): budget arithmetic, the weight-free distribution
metric, the GAN loss terms, and one --quick run end to end (resumable, results.md section kept apart)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy import ndimage

from tools.abdomen.experiment import METHODS, SECONDS_PER_ITERATION, TRAIN_SHARE, iterations_for_budget
from tools.abdomen.gan import ConditionalGanGeneratorLoss, DiscriminatorAdversarialLoss, GeneratorAdversarialLoss
from tools.abdomen.texture_distance import FEATURE_NAMES, frechet_texture_distance, texture_features
from tools.experiments.__main__ import main


def test_equal_iterations_fit_the_training_share_of_the_budget():
    its = iterations_for_budget(45)
    seconds = its * sum(SECONDS_PER_ITERATION[m] for m in METHODS)
    assert its % 3 == 0 and its > 0
    assert seconds <= 45 * 60 * TRAIN_SHARE < seconds + 3 * sum(SECONDS_PER_ITERATION.values())


def _slices(seed: int, n: int = 24) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    lab = np.zeros((n, 48, 48), int)
    lab[:, 6:42, 4:44] = 16
    lab[:, 14:26, 12:24] = 6
    img = np.where(lab > 0, rng.normal(0.0, 0.3, lab.shape), -1.0)
    return img[:, None], lab


def test_texture_distance_is_zero_for_equal_sets_and_grows_with_blur():
    img, lab = _slices(0)
    real = texture_features(img, lab)
    assert real.shape == (24, len(FEATURE_NAMES))
    assert frechet_texture_distance(real, real) == pytest.approx(0.0, abs=1e-6)
    other = frechet_texture_distance(texture_features(_slices(1)[0], lab), real)  # a fresh draw of the same texture
    blurred = frechet_texture_distance(texture_features(ndimage.gaussian_filter(img, (0, 0, 1.5, 1.5)), lab), real)
    assert blurred > 5 * other
    # the z-score makes it independent of the units of each feature
    scaled = real * np.linspace(1, 100, real.shape[1])
    fake = texture_features(_slices(1)[0], lab)
    assert frechet_texture_distance(fake * np.linspace(1, 100, real.shape[1]), scaled) == pytest.approx(other, rel=1e-6)


def test_gan_loss_terms_match_hand_computed_values():
    real, fake = torch.zeros(2, 1, 4, 4), torch.full((2, 1, 4, 4), 0.5)
    onehot = torch.zeros(2, 3, 4, 4)
    assert ConditionalGanGeneratorLoss(l1_weight=100.0)(fake, (real, onehot)).item() == pytest.approx(50.0)
    disc = torch.nn.Conv2d(4, 2, 1)
    d = lambda x: [disc(x), disc(x).mean(1, keepdim=True)]  # noqa: E731  two "layers", the last the logits
    fm = ConditionalGanGeneratorLoss(d, feature_matching_weight=10.0)
    assert fm(real, (real, onehot)).item() == pytest.approx(0.0)  # fake == real: no feature difference
    logits_real, logits_fake = [torch.full((1, 1, 2, 2), 1.0)], [torch.full((1, 1, 2, 2), 0.5)]
    # least squares: D: ((1 - 1)^2 + (0.5 - 0)^2) / 2; G: (0.5 - 1)^2
    assert DiscriminatorAdversarialLoss("least_squares")(logits_real, logits_fake).item() == pytest.approx(0.125)
    assert GeneratorAdversarialLoss("least_squares")(logits_fake).item() == pytest.approx(0.25)
    # hinge (MONAI bounds the logits with tanh first): D: (relu(1 - tanh 1) + relu(1 + tanh 0.5)) / 2;
    # G: relu(1 - tanh 0.5)
    t1, t5 = np.tanh(1.0), np.tanh(0.5)
    assert DiscriminatorAdversarialLoss("hinge")(logits_real, logits_fake).item() == pytest.approx((1 - t1 + 1 + t5) / 2)
    assert GeneratorAdversarialLoss("hinge")(logits_fake).item() == pytest.approx(1 - t5)


@pytest.mark.slow
def test_quick_experiment_writes_results_and_skips_finished_runs(tmp_path):
    md = tmp_path / "results.md"
    md.write_text("# Results on phantoms\n\n<!-- begin cardiac -->\nkept\n<!-- end cardiac -->\n")
    argv = ["abdomen", "--quick", "--methods", "mask_guided", "--work_dir", str(tmp_path / "work"),
            "--data_dir", str(tmp_path / "data"), "--results_dir", str(tmp_path / "results"), "--results_md", str(md)]
    assert main(argv) == 0
    work = tmp_path / "work"
    assert {p.parent.name for p in work.glob("*/result.json")} == {
        "segmenter_seed0", "mask_guided_seed0", "augment_seed0"}
    rec = json.loads((work / "mask_guided_seed0" / "result.json").read_text())
    assert rec["seed"] == 0 and rec["iterations"] == 3 and rec["machine"]["cores"] >= 1
    assert rec["configs"]["train"] == ["train.json"] and rec["overrides"]["conditioning"] == "mask_guided"
    assert set(rec["wall_time_s"]) == {"train", "evaluate"}
    iters = [r["iteration"] for r in rec["metrics"] if r["checkpoint"] != "real"]
    assert iters == ["1", "2", "3"]  # three checkpoints of the DDPM
    assert all(np.isfinite(r["ftd"]) for r in rec["metrics"] if r["checkpoint"] != "real")
    out = json.loads((tmp_path / "results" / "abdomen.json").read_text())
    assert out["iterations_per_method"] == [3] and out["missing"] == []
    assert set(out["summary"]) == {"mask_guided"} and out["claims"]  # the PSNR sentence and the augmentation
    assert (tmp_path / "results" / "abdomen_samples.png").is_file()
    text = md.read_text()
    assert "kept" in text and "<!-- begin abdomen -->" in text and "| Mask-guided DDPM |" in text
    # a rerun skips every finished run
    stamp = (work / "mask_guided_seed0" / "result.json").stat().st_mtime_ns
    assert main(argv) == 0
    assert (work / "mask_guided_seed0" / "result.json").stat().st_mtime_ns == stamp
