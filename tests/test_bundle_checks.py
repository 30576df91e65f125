"""Model-zoo style checks of every bundle under bundles/ (what the MONAI model-zoo CI runs).

* every config file resolves: each id's references (``@x``, also inside ``$`` expressions) exist, each
  ``_target_`` is importable, each ``$`` expression compiles. A delta file (one that does not resolve on
  its own, or has no ``training``/``inference``/``evaluating``/``run`` entry) is checked merged over the
  base configs its ``_comment`` names, else over ``train.json`` / ``inference.json``;
* ``large_files.yml`` lists ``models/model.pt`` in the format tools/download_weights.py reads;
* the trainers keep the model-zoo handler ids that ``--tracking mlflow`` patches (docs/tracking.md);
* ``verify_metadata`` against the offline copy of MONAI's schema in ``../shared/monai_schema/``;
* ``verify_net_in_out`` on the inference ``network_def`` (bundle's ``small.json`` sizes, small spatial shape);
* ``ckpt_export`` of the inference network. MONAI's ``ckpt_export`` traces with ONE example input, so the
  diffusion U-Nets, whose forward is ``(x, timesteps)``, cannot go through it (the test asserts that
  limit, see docs/export.md); they are exported with the function ckpt_export uses,
  ``monai.networks.utils.convert_to_torchscript(net, use_trace=True, inputs=[x, t])``; the traced
  module must reproduce the network's output.
"""

from __future__ import annotations

import inspect
import json
import re
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser, ckpt_export, verify_metadata, verify_net_in_out
from monai.bundle.config_item import ConfigComponent, ConfigExpression
from monai.networks.utils import convert_to_torchscript
from monai.utils.module import locate

REPO = Path(__file__).resolve().parents[1]
BUNDLES = REPO / "bundles"
SCHEMA = REPO.parent / "shared" / "monai_schema" / "meta_schema_20240725.json"
RUN_KEYS = ("training", "inference", "evaluating", "run")
REF = re.compile(r"@([\w#:]+)")
JSON_NAME = re.compile(r"([\w\-]+\.json)")
SMALL_2D, SMALL_3D = [32, 32], [32, 32, 32]


def _bundle_names() -> list[str]:
    return sorted(d.name for d in BUNDLES.iterdir() if (d / "configs").is_dir()) if BUNDLES.is_dir() else []


def _config_files(bundle: str) -> list[Path]:
    return sorted(f for f in (BUNDLES / bundle / "configs").glob("*.json") if f.name != "metadata.json")


def _all_config_ids() -> list[str]:
    return [f"{b}/{f.name}" for b in _bundle_names() for f in _config_files(b)]


def resolve_problems(files: list[Path]) -> list[str]:
    """Every id of the merged ``files``: missing references, unknown ``_target_``, bad ``$`` syntax."""
    parser = ConfigParser()
    try:
        parser.read_config([str(f) for f in files])
    except KeyError as e:  # a delta's "a#b" key whose base "a" is absent
        return [f"reading: {e}"]
    parser.parse(reset=True)
    resolver = parser.ref_resolver
    problems = []
    for id_ in list(resolver.items):
        try:
            resolver.get_resolved_content(id_, instantiate=False, eval_expr=False)
        except Exception as e:
            problems.append(f"{id_}: {e}")
    for id_, item in resolver.items.items():
        if isinstance(item, ConfigComponent):
            target = item.get_config().get("_target_")
            if isinstance(target, str) and not target.startswith(("$", "@")):
                if locate(item.resolve_module_name()) is None:
                    problems.append(f"{id_}: _target_ {target!r} is not importable")
        elif isinstance(item, ConfigExpression):
            src = REF.sub("_ref", str(item.get_config())[1:])
            try:
                compile(src, id_, "exec" if src.lstrip().startswith(("import ", "from ")) else "eval")
            except SyntaxError as e:
                problems.append(f"{id_}: expression does not compile: {e.msg}: {src[:120]}")
    return problems


def _is_delta(f: Path, standalone: list[str]) -> bool:
    return bool(standalone) or not any(k in json.loads(f.read_text()) for k in RUN_KEYS)


def compositions(f: Path) -> list[list[Path]]:
    """Config lists to check a delta with: over each base its _comment names, then the chain of them all."""
    cfgs = {c.name: c for c in _config_files(f.parent.parent.name)}
    comment = str(json.loads(f.read_text()).get("_comment", ""))
    mentioned = [m for m in dict.fromkeys(JSON_NAME.findall(comment)) if m in cfgs and m != f.name]
    out = [[cfgs[m], f] for m in mentioned]
    if len(mentioned) > 1:
        out.append([cfgs[m] for m in mentioned] + [f])
    out += [[cfgs[m], f] for m in ("train.json", "inference.json") if m in cfgs and m not in mentioned]
    return out


@pytest.mark.parametrize("config_id", _all_config_ids())
def test_config_resolves(config_id):
    bundle, name = config_id.split("/")
    f = BUNDLES / bundle / "configs" / name
    standalone = resolve_problems([f])
    if not _is_delta(f, standalone):
        return
    tried = {}
    for files in compositions(f):
        key = " + ".join(p.name for p in files)
        tried[key] = resolve_problems(files)
        if not tried[key]:
            return
    report = "\n".join(f"  [{k}] {len(v)} problem(s): " + "; ".join(v[:4]) for k, v in tried.items())
    pytest.fail(f"{config_id} does not resolve standalone ({'; '.join(standalone[:3]) or 'no run entry'}) nor "
                f"merged:\n{report}")


@pytest.mark.parametrize("bundle", _bundle_names())
def test_tracking_handler_ids(bundle):
    """``--tracking mlflow`` appends its handler to ``train#handlers`` / ``validate#handlers``."""
    for f in _config_files(bundle):
        cfg = json.loads(f.read_text())
        trainer = cfg.get("train", {}).get("trainer") if isinstance(cfg.get("train"), dict) else None
        if not isinstance(trainer, dict):
            continue
        assert isinstance(cfg["train"].get("handlers"), list), f"{f}: train#handlers must be a list"
        assert "@train#handlers" in str(trainer.get("train_handlers")), f"{f}: train#trainer must use @train#handlers"
        evaluator = cfg.get("validate", {}).get("evaluator") if isinstance(cfg.get("validate"), dict) else None
        if isinstance(evaluator, dict):
            assert "@validate#handlers" in str(evaluator.get("val_handlers")), f"{f}: use @validate#handlers"


def _meta(bundle: str) -> Path:
    meta = BUNDLES / bundle / "configs" / "metadata.json"
    if not meta.is_file():
        pytest.fail(f"{meta} is missing (model-zoo bundles need configs/metadata.json)")
    return meta


@pytest.mark.parametrize("bundle", _bundle_names())
def test_large_files_listed(bundle):
    """large_files.yml in model-zoo format, readable by tools/download_weights.py, listing models/model.pt."""
    from tools.download_weights import read_large_files

    yml, entries = read_large_files(BUNDLES / bundle)
    for e in entries:
        assert e.get("hash_type", "sha256") in ("md5", "sha1", "sha256", "sha512"), f"{yml}: hash_type of {e['path']}"
        assert str(e["url"]).startswith(("https://", "http://")), f"{yml}: url of {e['path']}"
    assert "models/model.pt" in {str(e["path"]) for e in entries}, f"{yml} does not list models/model.pt"


@pytest.mark.parametrize("bundle", _bundle_names())
def test_verify_metadata(bundle, tmp_path):
    if not SCHEMA.is_file():
        pytest.skip(f"offline MONAI schema not found at {SCHEMA} (../shared/monai_schema beside the checkout)")
    verify_metadata(meta_file=str(_meta(bundle)), filepath=str(SCHEMA))


def _small_inference(bundle: str) -> tuple[list[str], dict, ConfigParser, torch.nn.Module]:
    """Inference config (+ small.json if it composes) with the metadata's input shape made small."""
    cfg_dir = BUNDLES / bundle / "configs"
    if not (cfg_dir / "inference.json").is_file():
        pytest.fail(f"{cfg_dir / 'inference.json'} is missing")
    files = [cfg_dir / "inference.json"]
    if (cfg_dir / "small.json").is_file() and not resolve_problems(files + [cfg_dir / "small.json"]):
        files.append(cfg_dir / "small.json")
    meta = json.loads(_meta(bundle).read_text())
    shape = meta["network_data_format"]["inputs"]["image"]["spatial_shape"]
    small = SMALL_3D if len(shape) == 3 else SMALL_2D
    override = {"_meta_#network_data_format#inputs#image#spatial_shape": small}
    parser = ConfigParser()
    parser.read_config([str(f) for f in files])
    parser.read_meta(str(_meta(bundle)))
    torch.manual_seed(0)
    net = parser.get_parsed_content("network_def")
    return [str(f) for f in files], override, parser, net


def _takes_timesteps(net: torch.nn.Module) -> bool:
    return "timesteps" in inspect.signature(net.forward).parameters


def _example_inputs(parser: ConfigParser, net: torch.nn.Module) -> list[torch.Tensor]:
    fmt = parser["_meta_"]["network_data_format"]["inputs"]["image"]
    shape = SMALL_3D if len(fmt["spatial_shape"]) == 3 else SMALL_2D
    x = torch.rand(1, int(fmt["num_channels"]), *shape)
    return [x, torch.tensor([10])] if _takes_timesteps(net) else [x]


@pytest.mark.parametrize("bundle", _bundle_names())
def test_verify_net_in_out(bundle):
    files, override, _, net = _small_inference(bundle)
    extra = {"timesteps": torch.tensor([10])} if _takes_timesteps(net) else {}
    verify_net_in_out(net_id="network_def", meta_file=str(_meta(bundle)), config_file=files, device="cpu",
                      extra_forward_args=extra, **override)


@pytest.mark.parametrize("bundle", _bundle_names())
def test_ckpt_export(bundle, tmp_path):
    files, override, parser, net = _small_inference(bundle)
    ckpt = tmp_path / "model.pt"
    torch.save(net.state_dict(), ckpt)  # models/model.pt: a plain state dict
    inputs = _example_inputs(parser, net)
    kwargs = dict(net_id="network_def", filepath=str(tmp_path / "model.ts"), ckpt_file=str(ckpt),
                  meta_file=str(_meta(bundle)), config_file=files, use_trace=True,
                  input_shape=list(inputs[0].shape), bundle_root=str(BUNDLES / bundle),
                  converter_kwargs={"check_trace": False}, **override)
    if len(inputs) == 1:
        ckpt_export(**kwargs)
        ts = torch.jit.load(str(tmp_path / "model.ts"))
    else:
        # documented limit: ckpt_export traces forward(x) only; a diffusion U-Net needs forward(x, timesteps)
        with pytest.raises(TypeError, match="timesteps"):
            ckpt_export(**kwargs)
        net.load_state_dict(torch.load(ckpt, weights_only=True))
        ts = convert_to_torchscript(net, filename_or_obj=str(tmp_path / "model.ts"), inputs=inputs,
                                    use_trace=True, check_trace=False)
    net.load_state_dict(torch.load(ckpt, weights_only=True))
    net.eval()
    with torch.no_grad():
        torch.testing.assert_close(ts(*inputs), net(*inputs), rtol=1e-3, atol=1e-4)
