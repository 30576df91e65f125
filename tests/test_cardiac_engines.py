"""Cardiac LDM bundle: early stopping on a scripted validation curve, latent prepare batch, output guard."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from ignite.engine import Engine, Events
from monai.bundle import ConfigParser

from tools.cardiac.latent_prepare_batch import LatentDiffusionPrepareBatch
from tools.cardiac.latent_scale import LatentScale
from tools.engines.output_guard import refuse_overwrite

CONFIGS = Path(__file__).resolve().parents[1] / "bundles" / "cardiac_ldm_ssl" / "configs"


def _early_stop(config: str, patience: int | None = None):
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / "common.json"), str(CONFIGS / config)])
    if patience is not None:
        parser["patience"] = patience
    return parser, parser.get_parsed_content("validate#early_stop")


def _run_with_curve(handler, curve, metric_name, max_epochs=100):
    """Trainer whose per-epoch validation reports ``curve[epoch - 1]`` as ``metric_name``."""
    trainer = Engine(lambda engine, batch: None)
    evaluator = Engine(lambda engine, batch: None)

    @evaluator.on(Events.EPOCH_COMPLETED)  # like MONAI metrics, before the handler
    def _score(engine):
        engine.state.metrics[metric_name] = curve[min(trainer.state.epoch, len(curve)) - 1]

    handler.set_trainer(trainer)
    handler.attach(evaluator)
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda _: evaluator.run([0]))
    trainer.run([0], max_epochs=max_epochs)
    return trainer.state.epoch


def test_finetune_early_stopping_stops_when_validation_dice_stops_improving():
    parser, handler = _early_stop("train.json")
    assert parser["patience"] == 10
    # Dice improves for 6 epochs (best at epoch 6), then plateaus / drops
    curve = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6] + [0.55, 0.6, 0.58, 0.6, 0.59, 0.5, 0.6, 0.4, 0.3, 0.6] + [0.6] * 50
    assert _run_with_curve(handler, curve, "val_mean_dice") == 6 + 10
    # a curve that keeps improving runs to the end
    _, handler = _early_stop("train.json")
    assert _run_with_curve(handler, [i / 100 for i in range(1, 31)], "val_mean_dice", max_epochs=30) == 30


def test_ssl_early_stopping_uses_validation_mse_lower_is_better():
    parser, handler = _early_stop("pretrain_ssl.json", patience=3)
    assert _early_stop("pretrain_ssl.json")[0]["patience"] == 50
    curve = [0.5, 0.4, 0.3, 0.35, 0.29, 0.2, 0.25, 0.26, 0.27, 0.1]  # best at epoch 6, 3 worse after
    assert _run_with_curve(handler, curve, "val_mse") == 6 + 3


class _Enc(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.training_calls = 0

    def encode_stage_2_inputs(self, x):
        return x[:, :3, ::2, ::2, ::2] * 2.0


def test_latent_prepare_batch_scales_latents_and_draws_matching_noise():
    scale = LatentScale()
    pb = LatentDiffusionPrepareBatch(_Enc(), scale, num_train_timesteps=1000)
    batch = {"joint": torch.randn(2, 10, 8, 8, 8)}
    with pytest.raises(ValueError, match="unset"):
        pb(batch)
    scale.set(0.25)
    z, target, args, kwargs = pb(batch, device="cpu")
    torch.testing.assert_close(z, batch["joint"][:, :3, ::2, ::2, ::2] * 2.0 * 0.25)
    assert target.shape == z.shape and torch.equal(target, kwargs["noise"])
    assert kwargs["timesteps"].shape == (2,) and 0 <= int(kwargs["timesteps"].min()) and int(kwargs["timesteps"].max()) < 1000
    with pytest.raises(ValueError, match="joint"):
        pb({"image": torch.zeros(1)})


def test_refuse_overwrite(tmp_path):
    f = tmp_path / "model.pt"
    refuse_overwrite([f])
    f.write_text("x")
    with pytest.raises(FileExistsError, match="model.pt"):
        refuse_overwrite([f])
    refuse_overwrite([f], overwrite=True)


def _write_stage(folder: Path, name: str) -> None:
    """A one-line bundle config that writes its ``out`` file (and appends its name to a log)."""
    import json

    cfg = {
        "out": "",
        "log": "",
        "run": [f"$open(@log, 'a').write('{name} ')", "$open(@out, 'w').write('x')"],
    }
    (folder / f"{name}.json").write_text(json.dumps(cfg))


def test_missing_stage_runner_runs_only_missing_stages_in_order(tmp_path):
    from tools.cardiac.stage_runner import MissingStageRunner

    for name in ("a", "b", "c"):
        _write_stage(tmp_path, name)
    log = tmp_path / "log.txt"
    outs = {n: tmp_path / f"{n}.out" for n in ("a", "b", "c")}
    outs["b"].write_text("exists")  # b already done: skipped
    stages = [(f"{n}.json", str(outs[n])) for n in ("a", "b", "c")]
    # each stage writes its own output: pass it per stage through a delta-free override of "out"
    runner = MissingStageRunner(tmp_path, stages[:1], overrides={"log": str(log), "out": str(outs["a"])})
    assert runner.run() == ["a.json"]
    runner = MissingStageRunner(tmp_path, stages[1:2], overrides={"log": str(log), "out": str(outs["b"])})
    assert runner.run() == []
    runner = MissingStageRunner(tmp_path, stages[2:], overrides={"log": str(log), "out": str(outs["c"])}, needed=False)
    assert runner.run() == [] and not outs["c"].exists()
    assert log.read_text().split() == ["a"]
    runner = MissingStageRunner(tmp_path, stages[2:], overrides={"log": str(log), "out": str(tmp_path / "other")})
    with pytest.raises(FileNotFoundError, match="c.out"):
        runner.run()


def test_missing_stage_runner_merges_base_configs_then_stage_then_deltas(tmp_path):
    import json

    from tools.cardiac.stage_runner import MissingStageRunner

    log, out = tmp_path / "log.txt", tmp_path / "s.out"
    # the base holds what runs; the stage (a delta over it) and the delta file each override the tag
    (tmp_path / "base.json").write_text(json.dumps({
        "out": "", "log": "", "tag": "base",
        "run": ["$open(@log, 'a').write(@tag + ' ')", "$open(@out, 'w').write('x')"]}))
    (tmp_path / "s.json").write_text(json.dumps({"tag": "stage"}))
    (tmp_path / "d.json").write_text(json.dumps({"tag": "delta"}))
    overrides = {"log": str(log), "out": str(out)}
    runner = MissingStageRunner(tmp_path, [("s.json", str(out))], overrides=overrides, base_configs=["base.json"])
    assert runner.config_files("s.json") == [str(tmp_path / "base.json"), str(tmp_path / "s.json")]
    assert runner.run() == ["s.json"] and log.read_text().split() == ["stage"]
    out.unlink()
    runner = MissingStageRunner(tmp_path, [("s.json", str(out))], overrides=overrides, base_configs=["base.json"],
                                deltas=[str(tmp_path / "d.json")])
    assert runner.run() == ["s.json"] and log.read_text().split() == ["stage", "delta"]
    out.unlink()
    with pytest.raises(FileNotFoundError, match="nope.json"):
        MissingStageRunner(tmp_path, [("s.json", str(out))], base_configs=["nope.json"]).run()


def test_train_json_runs_the_earlier_stages_over_common_json():
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / "common.json"), str(CONFIGS / "train.json")])
    parser.update({"ckpt_dir": "/nonexistent/models", "output_dir": "/nonexistent/runs", "datalist": "d.json"})
    runner = parser.get_parsed_content("prerequisites")
    assert runner.base_configs == ["common.json"]
    assert [c for c, _ in runner.stages] == ["train_autoencoder.json", "train_ldm.json", "generate.json",
                                              "pretrain_ssl.json"]
    assert [o for _, o in runner.stages] == ["/nonexistent/models/autoencoder.pt", "/nonexistent/models/ldm.pt",
                                             "/nonexistent/runs/synthetic/datalist.json",
                                             "/nonexistent/models/ssl_pretrained.pt"]
    for config, _ in runner.stages:  # every stage config list exists and merges
        files = runner.config_files(config)
        stage = ConfigParser()
        stage.read_config(files)
        assert "run" in stage.get() and "initialize" in stage.get(), config
