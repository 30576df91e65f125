"""Make a local MONAI Label app that serves the project's bundles, and start the server.

MONAI Label's own bundle app (the ``monaibundle`` sample app, shipped inside the ``monailabel`` wheel
under ``<sys.prefix>/monailabel/sample-apps/monaibundle``) is copied into the app folder; each model
is a folder ``<app>/model/<model name>/`` that MONAI Label loads with its ``BundleInferTask``:

* ``configs/inference.json`` and ``configs/metadata.json``: links to the bundle's files, or, when the
  model entry asks for tiny overrides / another config / another data format, generated copies
  (the bundle's own files are never edited);
* every other file of the bundle (``docs``, ``LICENSE``, ...) linked;
* ``models/model.pt``: a link to the bundle's trained weights (``--weights bundle``) or tiny random
  weights made here by building the inference ``network_def`` with MONAI's ``ConfigParser``
  (``--weights tiny``), a plain state dict as model-zoo's and the bundles' own ``models/model.pt``.

Studies are phantom volumes (``tools.data.phantoms.generate``) copied flat into a studies folder.
Which bundle config becomes which MONAI Label model is written in ``tools/monailabel_app/models.yml``.

CLI (fire; run it with the MONAI Label environment ``.venv-label/bin/python``)::

    python -m tools.monailabel_app.make_app make --app runs/monailabel/app --studies runs/monailabel/studies
    python -m tools.monailabel_app.make_app serve --app runs/monailabel/app --studies runs/monailabel/studies --port 8000
    python -m tools.monailabel_app.make_app run   # both, with tiny weights: the demo ``make monailabel`` starts

MONAI Label is started fully offline: ``--conf zoo_source github`` (local bundle folders are used as
they are, the model-zoo catalogue is never queried), ``--conf sam2 false`` (no SAM2 weight download).
A model's ``extra_weights`` (AortaDiff: ``models/aorta_seg.pt``, its aorta segmenter for NCCT-only studies) link
to the ``models/model.pt`` of the model that trains them (``aortadiff_aorta_seg``) when it is served as well.
A model whose ``models.yml`` entry has ``train:`` gets ``configs/train.json`` (its bundle training configs
merged, with the entry's overrides), which MONAI Label's ``BundleTrainTask`` runs on ``POST /train/<model>``
with the datastore's image/label pairs (``labels/final``); the others serve inference only.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_BUNDLES_DIR = REPO_ROOT / "bundles"
MODELS_YML = Path(__file__).resolve().parent / "models.yml"
SAMPLE_APP = "monaibundle"
OFFLINE_CONF = {"zoo_source": "github", "sam2": "false", "preload": "false"}


def sample_app_dir() -> Path:
    """Folder of MONAI Label's ``monaibundle`` sample app as installed by the monailabel wheel."""
    candidates = [Path(sys.prefix) / "monailabel" / "sample-apps" / SAMPLE_APP]
    try:
        import monailabel

        candidates.append(Path(monailabel.__file__).resolve().parents[1] / "sample-apps" / SAMPLE_APP)
    except ImportError:
        pass
    for c in candidates:
        if (c / "main.py").is_file():
            return c
    raise FileNotFoundError(
        f"MONAI Label's '{SAMPLE_APP}' sample app not found (looked in {[str(c) for c in candidates]}); "
        "install monailabel into this environment: make test-label creates .venv-label"
    )


def read_models(models_yml: str | os.PathLike = MODELS_YML) -> dict[str, dict[str, Any]]:
    """Model entries: ``{model name: {bundle, config, data_format, study: {anatomy, key}, tiny_overrides}}``."""
    with open(models_yml) as f:
        content = yaml.safe_load(f) or {}
    models = content.get("models")
    if not isinstance(models, dict):
        raise ValueError(f"{models_yml}: expected a top-level mapping 'models: {{name: {{bundle: ..., ...}}}}'")
    for name, spec in models.items():
        if not isinstance(spec, dict) or "bundle" not in spec:
            raise ValueError(f"{models_yml}: model {name!r} needs a 'bundle' key (bundle folder name or path)")
    return models


def _bundle_path(bundle: str, bundles_dir: str | os.PathLike) -> Path:
    p = Path(bundle)
    if not p.is_absolute():
        p = Path(bundles_dir) / bundle
    if not (p / "configs").is_dir():
        raise FileNotFoundError(f"bundle {bundle!r}: {p / 'configs'} does not exist")
    return p.resolve()


def _link(src: Path, dst: Path) -> None:
    if dst.is_symlink() or dst.exists():
        if dst.is_dir() and not dst.is_symlink():
            shutil.rmtree(dst)
        else:
            dst.unlink()
    dst.symlink_to(src, target_is_directory=src.is_dir())


def _merge(base: dict, delta: dict) -> dict:
    """Override ``base`` with ``delta`` like MONAI's config merging: keys may be ``a#b#c`` paths."""
    out = json.loads(json.dumps(base))
    for key, value in delta.items():
        parts = str(key).split("#")
        node = out
        for p in parts[:-1]:
            node = node[int(p)] if isinstance(node, list) else node.setdefault(p, {})
        if isinstance(node, list):
            node[int(parts[-1])] = value
        else:
            node[parts[-1]] = value
    return out


def _get(config: dict, key: str) -> Any:
    node: Any = config
    for p in str(key).split("#"):
        node = node[int(p)] if isinstance(node, list) else node[p]
    return node


def _edit_lists(config: dict, prepend: dict | None, drop_targets: list | None, name: str,
                append: dict | None = None) -> dict:
    """Prepend / append items to lists (``{"preprocessing#transforms": [...]}``) and drop list items whose
    ``_target_`` ends with one of ``drop_targets`` (e.g. a bundle's own file writer, MONAI Label writes)."""
    for where, edits in (("prepend", prepend), ("append", append)):
        for key, items in (edits or {}).items():
            target = _get(config, key)
            if not isinstance(target, list):
                raise ValueError(f"model {name!r}: {where} target {key!r} is not a list in the bundle config")
            if where == "prepend":
                target[:0] = list(items)
            else:
                target.extend(items)
    for key in ("preprocessing#transforms", "postprocessing#transforms"):
        try:
            items = _get(config, key)
        except (KeyError, IndexError, TypeError):
            continue
        if isinstance(items, list) and drop_targets:
            items[:] = [t for t in items if not (isinstance(t, dict) and
                                                 str(t.get("_target_", "")).endswith(tuple(drop_targets)))]
    return config


def _read_config(path: Path) -> dict:
    with open(path) as f:
        return json.load(f) if path.suffix == ".json" else yaml.safe_load(f)


def _merge_files(bundle: Path, config_names: list[str], name: str) -> dict:
    merged: dict = {}
    for c in config_names:
        src = bundle / "configs" / c
        if not src.is_file():
            raise FileNotFoundError(f"model {name!r}: bundle config {src} does not exist")
        merged = _merge(merged, _read_config(src))
    return merged


def build_model_folder(name: str, spec: dict, model_root: Path, bundles_dir: str | os.PathLike) -> Path:
    """``<model_root>/<name>``: the bundle linked file by file, with generated configs where needed."""
    bundle = _bundle_path(spec["bundle"], bundles_dir)
    folder = model_root / name
    folder.mkdir(parents=True, exist_ok=True)
    for item in bundle.iterdir():
        if item.name in ("configs", "models") or item.name.startswith("."):
            continue
        _link(item, folder / item.name)
    configs = folder / "configs"
    if configs.is_symlink():
        configs.unlink()
    configs.mkdir(exist_ok=True)
    for item in (bundle / "configs").iterdir():
        _link(item, configs / item.name)

    config_names = spec.get("config", "inference.json")
    config_names = [config_names] if isinstance(config_names, str) else list(config_names)
    overrides = spec.get("overrides") or {}
    if (config_names != ["inference.json"] or overrides or spec.get("prepend") or spec.get("append")
            or spec.get("drop_targets")):
        merged = _merge(_merge_files(bundle, config_names, name), overrides)
        merged = _edit_lists(merged, spec.get("prepend"), spec.get("drop_targets"), name, spec.get("append"))
        (configs / "inference.json").unlink(missing_ok=True)
        (configs / "inference.json").write_text(json.dumps(merged, indent=2))
    train = spec.get("train")
    if train:  # MONAI Label's BundleTrainTask reads configs/train.json alone: write the merged training config
        names = train.get("config", ["train.json"])
        merged = _merge(_merge_files(bundle, [names] if isinstance(names, str) else list(names), name),
                        train.get("overrides") or {})
        (configs / "train.json").unlink(missing_ok=True)
        (configs / "train.json").write_text(json.dumps(merged, indent=2))
    elif (configs / "train.json").exists():
        (configs / "train.json").unlink()  # a model without a `train` entry is served for inference only
    data_format = spec.get("data_format", "network_data_format")
    if data_format != "network_data_format":
        meta = json.loads((bundle / "configs" / "metadata.json").read_text())
        if data_format not in meta:
            raise ValueError(f"model {name!r}: {bundle}/configs/metadata.json has no key {data_format!r}")
        meta["network_data_format"] = meta[data_format]
        (configs / "metadata.json").unlink()
        (configs / "metadata.json").write_text(json.dumps(meta, indent=2))
    (folder / "models").mkdir(exist_ok=True)
    return folder


def write_tiny_weights(model_folder: Path, seed: int = 0) -> Path:
    """Random weights of the folder's inference ``network_def`` saved as ``models/model.pt`` (a plain state dict)."""
    import torch
    from monai.bundle import ConfigParser
    from monai.utils import set_determinism

    parser = ConfigParser()
    parser.read_config(str(model_folder / "configs" / "inference.json"))
    parser["bundle_root"] = str(model_folder)
    set_determinism(seed)
    net = parser.get_parsed_content("network_def", instantiate=True)
    set_determinism(None)
    out = model_folder / "models" / "model.pt"
    out.unlink(missing_ok=True)
    torch.save(net.state_dict(), out)
    return out


def link_bundle_weights(model_folder: Path, spec: dict, bundles_dir: str | os.PathLike) -> Path:
    """Link ``models/model.pt`` to the bundle's trained checkpoint (``weights`` key, default models/model.pt)."""
    bundle = _bundle_path(spec["bundle"], bundles_dir)
    src = bundle / spec.get("weights", "models/model.pt")
    if not src.is_file():
        raise FileNotFoundError(
            f"{src} does not exist: train the bundle, run `python tools/download_weights.py --bundle "
            f"{Path(spec['bundle']).name}`, or use --weights tiny"
        )
    dst = model_folder / "models" / "model.pt"
    _link(src, dst)
    return dst


def add_extra_weights(model_folder: Path, spec: dict, served: list[str], weights: str,
                      bundles_dir: str | os.PathLike, seed: int = 0) -> dict[str, Path]:
    """``models/<file>`` for every ``extra_weights`` entry of ``spec`` (see models.yml): a link to
    ``../../<from_model>/models/model.pt`` when ``from_model`` is in ``served``, else tiny random weights of the
    inference config's ``network`` key (``weights == "tiny"``) or a link to the bundle's ``weights`` file."""
    made = {}
    for file, extra in (spec.get("extra_weights") or {}).items():
        dst = model_folder / "models" / file
        source = extra.get("from_model")
        if source in served:
            _link(Path("..") / ".." / source / "models" / "model.pt", dst)
        elif weights == "tiny":
            import torch
            from monai.bundle import ConfigParser
            from monai.utils import set_determinism

            parser = ConfigParser()
            parser.read_config(str(model_folder / "configs" / "inference.json"))
            parser["bundle_root"] = str(model_folder)
            set_determinism(seed)
            net = parser.get_parsed_content(extra["network"], instantiate=True)
            set_determinism(None)
            dst.unlink(missing_ok=True)
            torch.save(net.state_dict(), dst)
        else:
            src = _bundle_path(spec["bundle"], bundles_dir) / extra["weights"]
            if not src.is_file():
                raise FileNotFoundError(f"{src} does not exist (extra weights {file!r} of model with bundle "
                                        f"{spec['bundle']!r}): train it, or use --weights tiny")
            _link(src, dst)
        made[file] = dst
    return made


def make_studies(
    studies: str | os.PathLike, specs: dict[str, dict], size: int = 64, slices: int = 16, seed: int = 0
) -> dict[str, str]:
    """Phantom volumes for every model's ``study: {anatomy, key}``; returns ``{model name: image id}``.

    ``study: {cases: N}`` phantom cases (default 1) per anatomy are generated (``tools.data.phantoms.generate``)
    and their input volumes copied into ``studies`` as ``<case_id>_<key>.nii.gz`` (MONAI Label's image id is
    the file name without extension); ``study: {masks: {tag: key}}`` also copies masks to
    ``labels/<tag>/<id>.nii.gz`` (read by :class:`tools.monailabel_app.transforms.StudyMaskd`; tag ``final``
    is MONAI Label's training label). The returned id is the first case's.
    """
    from tools.data.phantoms import generate

    studies = Path(studies)
    studies.mkdir(parents=True, exist_ok=True)
    made: dict[tuple[str, int], list[dict]] = {}
    ids: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, spec in specs.items():
            study = spec.get("study") or {}
            anatomy, key, cases = study.get("anatomy"), study.get("key", "image"), int(study.get("cases", 1))
            if not anatomy:
                continue
            if (anatomy, cases) not in made:
                datalist = generate(anatomy, cases, Path(tmp) / f"{anatomy}_{cases}", seed=seed, size=size,
                                    slices=slices, unlabeled_fraction=0.0)
                lists = json.loads(Path(datalist).read_text())
                entries = sorted((e for split in lists.values() for e in split), key=lambda e: e["case_id"])
                for e in entries:
                    e["_root"] = str(Path(datalist).parent)
                made[(anatomy, cases)] = entries
            for i, entry in enumerate(made[(anatomy, cases)]):
                if key not in entry:
                    raise ValueError(f"model {name!r}: phantom {anatomy!r} has no key {key!r} (keys: {sorted(entry)})")
                image_id = f"{entry['case_id']}_{key}"
                dst = studies / f"{image_id}.nii.gz"
                if not dst.exists():
                    shutil.copyfile(Path(entry["_root"]) / entry[key], dst)
                for tag, mask_key in (study.get("masks") or {}).items():
                    mdst = studies / "labels" / tag / f"{image_id}.nii.gz"
                    mdst.parent.mkdir(parents=True, exist_ok=True)
                    if not mdst.exists():
                        shutil.copyfile(Path(entry["_root"]) / entry[mask_key], mdst)
                if i == 0:
                    ids[name] = image_id
    return ids


def make(
    app: str = "runs/monailabel/app",
    studies: str | None = "runs/monailabel/studies",
    models: str | None = None,
    weights: str = "tiny",
    models_yml: str = str(MODELS_YML),
    bundles_dir: str = str(DEFAULT_BUNDLES_DIR),
    tiny: bool | None = None,
    size: int = 64,
    slices: int = 16,
    seed: int = 0,
) -> dict[str, Any]:
    """Create (or refresh) the app folder and the phantom studies.

    Args:
        app: app folder to write (MONAI Label's monaibundle sample app + ``model/<name>``).
        studies: studies folder to fill with phantom volumes (None: skip).
        models: comma-separated model names from ``models_yml`` (default: all of them).
        weights: ``tiny`` (random weights of the tiny-overridden network) or ``bundle`` (link the trained ones).
        tiny: apply each model's ``tiny_overrides`` (default: True when ``weights == 'tiny'``).
    Returns:
        ``{"app", "studies", "models": [...], "images": {model: image id}}``.
    """
    specs = read_models(models_yml)
    names = [m.strip() for m in models.split(",")] if models else list(specs)
    if not names:
        raise ValueError(f"{models_yml} lists no model: nothing to serve")
    unknown = [n for n in names if n not in specs]
    if unknown:
        raise ValueError(f"--models: unknown model(s) {unknown}; {models_yml} lists {sorted(specs)}")
    if weights not in ("tiny", "bundle"):
        raise ValueError(f"--weights must be 'tiny' or 'bundle', got {weights!r}")
    tiny = weights == "tiny" if tiny is None else bool(tiny)
    app_dir = Path(app).resolve()
    app_dir.mkdir(parents=True, exist_ok=True)
    src = sample_app_dir()
    for item in src.iterdir():
        if item.name in ("model", "logs", "__pycache__"):
            continue
        dst = app_dir / item.name
        if item.is_dir():
            shutil.copytree(item, dst, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copyfile(item, dst)
    chosen = {}
    for name in names:
        spec = dict(specs[name])
        if tiny:
            tiny_overrides = spec.get("tiny_overrides") or {}
            spec["overrides"] = {**(spec.get("overrides") or {}), **tiny_overrides}
            if spec.get("train"):
                spec["train"] = {**spec["train"], "overrides": {**(spec["train"].get("overrides") or {}), **tiny_overrides}}
        folder = build_model_folder(name, spec, app_dir / "model", bundles_dir)
        if weights == "tiny":
            write_tiny_weights(folder, seed)
        else:
            link_bundle_weights(folder, spec, bundles_dir)
        chosen[name] = spec
    for name in names:  # after every model folder exists: extra weights may link to another model's model.pt
        add_extra_weights(app_dir / "model" / name, chosen[name], names, weights, bundles_dir, seed)
    images = make_studies(studies, chosen, size, slices, seed) if studies else {}
    return {"app": str(app_dir), "studies": str(Path(studies).resolve()) if studies else None,
            "models": names, "images": images}


def server_command(
    app: str, studies: str, models: str | list[str], port: int = 8000, host: str = "127.0.0.1",
    conf: dict[str, str] | None = None,
) -> list[str]:
    """``monailabel start_server`` command line (offline settings included)."""
    names = models if isinstance(models, str) else ",".join(models)
    exe = Path(sys.executable).with_name("monailabel")
    cmd = [str(exe) if exe.exists() else "monailabel", "start_server", "--app", str(app), "--studies", str(studies),
           "--host", host, "--port", str(port), "--conf", "models", names]
    for k, v in {**OFFLINE_CONF, **(conf or {})}.items():
        cmd += ["--conf", k, str(v)]
    return cmd


def server_env() -> dict[str, str]:
    """Environment for the server: repo on PYTHONPATH (bundles' ``_target_: tools...``), no zoo/hub downloads."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    env["MONAILABEL_PYEXE"] = sys.executable  # the `monailabel` script otherwise runs whatever `python` is on PATH
    env["PATH"] = os.pathsep.join((str(Path(sys.executable).parent), env.get("PATH", "")))
    env.setdefault("BUNDLE_DOWNLOAD_SRC", "github")
    env.setdefault("MONAI_LABEL_AUTO_UPDATE_SCORING", "false")
    return env


def serve(app: str = "runs/monailabel/app", studies: str = "runs/monailabel/studies", models: str | None = None,
          port: int = 8000, host: str = "127.0.0.1", models_yml: str = str(MODELS_YML)) -> int:
    """Start ``monailabel start_server`` in the foreground on the app made by :func:`make`."""
    names = models or ",".join(p.name for p in sorted((Path(app) / "model").iterdir()) if p.is_dir())
    if not names:
        raise FileNotFoundError(f"{app}/model holds no model folder: run `make` first")
    cmd = server_command(str(Path(app).resolve()), str(Path(studies).resolve()), names, port, host)
    print(" ".join(cmd), flush=True)
    return subprocess.call(cmd, env=server_env())


def run(app: str = "runs/monailabel/app", studies: str = "runs/monailabel/studies", models: str | None = None,
        weights: str = "tiny", port: int = 8000, host: str = "127.0.0.1") -> int:
    """``make`` then ``serve``: the demo behind ``make monailabel``."""
    info = make(app, studies, models, weights)
    print(json.dumps(info, indent=1), flush=True)
    return serve(app, studies, ",".join(info["models"]), port, host)


if __name__ == "__main__":
    import fire

    fire.Fire({"make": make, "serve": serve, "run": run, "command": server_command})
