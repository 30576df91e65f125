"""AortaDiff beyond the paper: lumen pseudo-labels from the CECT (training with zero lumen labels) and the
uncertainty maps, scores and flag from N samples; ``num_samples 0`` is a one-line error before any work."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser, ConfigWorkflow
from monai.data import MetaTensor
from monai.networks.schedulers import DDPMScheduler

from tools.aortadiff.decode import DecodeAortaDiffd
from tools.aortadiff.inferers import AortaDDIMInferer
from tools.aortadiff.pseudo_lumen import PseudoLumenLabeld, pseudo_lumen
from tools.aortadiff.uncertainty import binary_entropy, flag_study, read_scores, spearman, threshold_at_false_alarm
from tools.engines.errors import find_input_error

CONFIGS = Path(__file__).resolve().parents[1] / "bundles" / "aortadiff_cect" / "configs"


# ----------------------------------------------------------------------------- pseudo-labels
def _hand_case(size: int = 40):
    """Aorta disk (r 14) with thrombus 40 HU, an eccentric lumen disk (r 7) at 300 HU, a calcified arc at 900 HU on
    the wall and a one-voxel 300 HU speck inside the thrombus; fat around it."""
    yy, xx = np.mgrid[:size, :size]
    r2 = (yy - 20) ** 2 + (xx - 20) ** 2
    aorta = r2 <= 14 ** 2
    lumen = (yy - 17) ** 2 + (xx - 22) ** 2 <= 7 ** 2
    calc = aorta & (r2 >= 12 ** 2) & (yy > 26)
    cect = np.full((size, size), -100.0, np.float32)
    cect[aorta] = 40.0
    cect[lumen] = 300.0
    cect[calc] = 900.0
    cect[25, 14] = 300.0  # in the thrombus, not connected to the lumen
    assert aorta[25, 14] and not lumen[25, 14] and not calc[25, 14]
    return cect, aorta, lumen, calc


def test_pseudo_lumen_recovers_the_hand_built_lumen():
    cect, aorta, lumen, calc = _hand_case()
    vol, a3 = np.stack([cect, cect + 5.0], -1), np.stack([aorta, aorta], -1)
    p = pseudo_lumen(vol, a3)
    assert p.shape == vol.shape and p.dtype == bool
    np.testing.assert_array_equal(p[..., 0], lumen)  # speck removed, calcium not lumen, lumen exact
    np.testing.assert_array_equal(p[..., 1], lumen)
    # without the calcium cap the calcified arc becomes lumen-bright: it is what max_hu keeps out
    assert pseudo_lumen(cect, aorta, max_hu=2000.0, opening_radius=0)[calc].any()
    assert not pseudo_lumen(cect, aorta)[calc].any()
    assert not pseudo_lumen(cect, aorta)[~aorta].any()


def test_pseudo_lumen_uses_the_enhancement_against_smeared_calcium():
    """Calcium smeared into the wall (500 HU in both phases, below max_hu) outshines a weakly enhanced lumen
    (250 HU) on the CECT alone; on CECT - NCCT it does not enhance and the lumen is found."""
    cect, aorta, lumen, calc = _hand_case()
    ncct = np.where(aorta, 38.0, -100.0).astype(np.float32)
    cect = cect.copy()
    cect[lumen] = 250.0
    ncct[lumen] = 45.0
    cect[calc], ncct[calc] = 500.0, 500.0
    cect[25, 14] = 40.0
    thick = aorta & (np.mgrid[:40, :40][0] > 24) & ~lumen  # a wide smeared band, not removed by the opening
    cect[thick], ncct[thick] = 500.0, 500.0
    cect_only = pseudo_lumen(cect, aorta)
    assert (cect_only & thick).sum() > 100  # the band joins the lumen class (and wins the largest component)
    np.testing.assert_array_equal(pseudo_lumen(cect, aorta, ncct), lumen)
    with pytest.raises(ValueError, match="NCCT shape"):
        pseudo_lumen(cect, aorta, ncct[:-1])


def test_pseudo_lumen_is_empty_without_enhancement_and_checks_shapes():
    cect, aorta, _, _ = _hand_case()
    flat = np.where(aorta, 40.0, -100.0).astype(np.float32)
    flat[aorta] += np.linspace(0, 20, int(aorta.sum()))  # 20 HU spread, below min_contrast_hu
    assert not pseudo_lumen(flat, aorta).any()
    with pytest.raises(ValueError, match="differs"):
        pseudo_lumen(cect, aorta[:-1])


def test_pseudo_lumen_transform_replaces_any_lumen_label():
    cect, aorta, lumen, _ = _hand_case()
    ref = MetaTensor(torch.from_numpy(np.stack([aorta] * 3, -1)[None].astype(np.float32)), affine=torch.eye(4))
    d = {"cect": torch.from_numpy(np.stack([cect] * 3, -1)[None]), "aorta": ref,
         "ncct": torch.from_numpy(np.stack([np.where(aorta, 40.0, -100.0)] * 3, -1)[None].astype(np.float32)),
         "lumen": torch.ones_like(ref)}  # a wrong label in the datalist: replaced
    out = PseudoLumenLabeld("lumen")(d)
    assert out["labeled"].item() == 1.0 and isinstance(out["lumen"], MetaTensor)
    np.testing.assert_array_equal(out["lumen"][0, ..., 1].numpy() > 0, lumen)
    out = PseudoLumenLabeld("lumen")({k: v for k, v in d.items() if k != "lumen"})  # unlabeled case: gets one too
    assert out["labeled"].item() == 1.0 and out["lumen"].sum() == 3 * lumen.sum()


def test_zero_lumen_labels_config_swaps_only_the_label_transform():
    files = [str(CONFIGS / "train.json")]
    base = ConfigParser(ConfigParser.load_config_files(files))
    zero = ConfigParser(ConfigParser.load_config_files(files + [str(CONFIGS / "zero_lumen_labels.json")]))
    tb, tz = base["train"]["preprocessing"]["transforms"], zero["train"]["preprocessing"]["transforms"]
    assert len(tb) == len(tz)
    diff = [i for i, (a, b) in enumerate(zip(tb, tz)) if a != b]
    assert diff == [3] and tb[3]["_target_"].endswith("LabeledFlagd")
    assert tz[3]["_target_"] == "tools.aortadiff.pseudo_lumen.PseudoLumenLabeld"
    zero.parse()
    assert zero.get_parsed_content("train#preprocessing").transforms[3].__class__ is PseudoLumenLabeld


# ----------------------------------------------------------------------------- uncertainty
def test_binary_entropy_and_threshold_and_flag_study():
    h = binary_entropy(torch.tensor([0.0, 1.0, 0.5, 0.25]))
    torch.testing.assert_close(h, torch.tensor([0.0, 0.0, 1.0, 0.811278]), atol=1e-5, rtol=0)
    val = [0.1, 0.2, 0.3, 0.4, 0.5]
    assert threshold_at_false_alarm(val, 0.2) == 0.4  # 1 of 5 validation cases above it
    assert threshold_at_false_alarm(val, 0.0) == 0.5
    with pytest.raises(ValueError):
        threshold_at_false_alarm(val, 1.0)
    scores = [0.9, 0.1, 0.8, 0.2, 0.3, 0.05, 0.85, 0.15, 0.4, 0.25]
    errors = [0.5, 0.0, 0.1, 0.05, 0.45, 0.02, 0.6, 0.03, 0.04, 0.01]  # worst 3: cases 6, 0, 4
    f = flag_study(scores, errors, worst_fraction=0.3, false_alarm_rate=0.2)
    # others' scores sorted: .05 .1 .15 .2 .25 .4 .8; 80 % of 7 -> 6th -> threshold 0.4; flagged .9 .8 .85
    assert (f["n_worst"], f["threshold"], f["caught"], f["false_alarms"]) == (3, 0.4, 2, 1)
    g = flag_study(scores, errors, worst_fraction=0.3, threshold=0.2)
    assert (g["caught"], g["false_alarms"], g["threshold_from"]) == (3, 3, "given")
    r = spearman(scores, errors)
    assert r["n"] == 10 and -1 <= r["rho"] <= 1
    assert spearman([1.0, float("nan")], [1.0, 2.0]) is None


class _TwoWayNet(torch.nn.Module):
    """Image = input noise passed through (samples differ); SDF < 0 on the left half for odd sample rows."""

    has_mask_head = False
    prediction_type = "sample"

    def forward(self, x, t, **kw):
        sdf = torch.ones_like(x[:, :1])
        n = x.shape[0] // 2  # two samples: rows [0, n) sample 0, [n, 2n) sample 1
        sdf[n:, :, :, : x.shape[-1] // 2] = -1.0
        return torch.cat([x[:, :1], sdf], 1)


def test_inferer_lumen_vote_and_decoded_entropy():
    inferer = AortaDDIMInferer(DDPMScheduler(1000), num_inference_steps=2, num_samples=2, slice_batch_size=3, seed=0,
                               progress=False)
    x = torch.zeros(3, 2, 8, 8)
    x[:, 1] = 1.0
    out = inferer(x, _TwoWayNet())
    assert out.shape == (3, 4, 8, 8)
    torch.testing.assert_close(out[:, 3, :, :4], torch.full((3, 8, 4), 0.5))  # one of the two samples votes lumen
    torch.testing.assert_close(out[:, 3, :, 4:], torch.zeros(3, 8, 4))
    assert (out[:, 2] > 0).float().mean() > 0.5  # image std of two noise samples (equal where both clip to +-1)
    aorta = torch.zeros(1, 8, 8)
    aorta[:, 2:6, 2:6] = 1
    pred = out[0]  # (4, H, W)
    d = DecodeAortaDiffd()({"pred": pred, "aorta": aorta, "roi": torch.ones(1, 8, 8), "ncct_hu": torch.zeros(1, 8, 8)})
    ent = d["mask_entropy"][0]
    torch.testing.assert_close(ent[2:6, 2:4], torch.ones(4, 2))  # half and half: 1 bit
    assert ent[2:6, 4:6].abs().max() == 0 and ent[aorta[0] == 0].abs().max() == 0
    assert d["mask_uncertainty_score"] == pytest.approx(0.5)  # half the aorta at 1 bit
    one = DecodeAortaDiffd()({"pred": pred[:3], "aorta": aorta, "roi": torch.ones(1, 8, 8)})
    assert one["mask_entropy"].abs().max() == 0  # no vote channel: the mask itself, no entropy


def test_read_scores(tmp_path):
    for i, s in enumerate((0.1, 0.3)):
        (tmp_path / f"c{i}").mkdir()
        (tmp_path / f"c{i}" / "uncertainty.json").write_text(json.dumps(
            {"case_id": f"c{i}", "mask_entropy": s, "image_std_hu": 10 * s}))
    assert read_scores(tmp_path) == {"c0": 0.1, "c1": 0.3}
    assert read_scores(tmp_path, "image_std_hu") == {"c0": 1.0, "c1": 3.0}
    with pytest.raises(ValueError, match="measure"):
        read_scores(tmp_path, "variance")


# ----------------------------------------------------------------------------- bad input
def _tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*"))
            if p.is_file()}


@pytest.mark.parametrize("configs,run_id", [(["inference.json"], "inference"),
                                            (["inference.json", "evaluate.json"], "evaluate")])
def test_num_samples_zero_is_a_one_line_error_before_any_work(configs, run_id, tmp_path, monkeypatch):
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "earlier.txt").write_text("kept\n")
    monkeypatch.chdir(tmp_path)  # a relative cache folder would be made here
    before = _tree(tmp_path)
    wf = ConfigWorkflow(config_file=[str(CONFIGS / c) for c in configs], workflow_type="inference", run_id=run_id,
                        dataset_dir=str(tmp_path / "no_phantoms_here"),
                        ckpt_dir=str(tmp_path / "models"), output_dir=str(tmp_path / "runs"), num_samples=0,
                        device="$torch.device('cpu')", amp=False, use_flash_attention=False)
    with pytest.raises(Exception) as info:
        wf.initialize()
        wf.run()
    err = find_input_error(info.value)
    assert err is not None, repr(info.value)
    assert str(err) == "config key 'num_samples' must be a positive integer, got 0"
    assert _tree(tmp_path) == before and not (tmp_path / "no_phantoms_here").exists()  # no phantom made
