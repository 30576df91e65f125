"""Run MONAI model-zoo's own CI check, ``ci/verify_bundle.py``, on the project's bundles, offline.

model-zoo runs ``python ci/verify_bundle.py -b <bundle> -p models -m full`` on a bundle folder under
``models/``. Offline, as model-zoo's CI would see them, this module for every bundle:

1. copies the bundle folder alone into a fresh ``<work>/models/<bundle>`` (no ``runs/``, no caches);
2. puts the metadata schema at ``eval/schema.json`` inside the copy (``verify_metadata`` reads it there
   instead of downloading ``metadata.json``'s ``schema`` URL) and an empty ``models/model_info.json`` (no
   released version yet);
3. writes ``models/model.pt`` as model-zoo's own CI does for bundles without weights
   (``_produce_fake_weights``: the inference ``network_def``'s state dict), unless ``weights`` points to
   trained ones, and leaves ``large_files.yml`` out of the copy: its files are not released yet and a
   download needs the network;
4. copies model-zoo's CI scripts (``verify_bundle.py``, ``utils.py``, ``bundle_custom_data.py``) to
   ``<work>/ci``, adding to ``bundle_custom_data.py``'s exclusion lists only the names in
   :data:`EXEMPTIONS`: each is an exemption model-zoo grants its own generative diffusion bundle
   ``brats_mri_generative_diffusion`` (checked by :func:`check_exemptions`), for the reason given;
5. runs ``python ci/verify_bundle.py -b <bundle> -p <work>/models -m full`` with this package importable.

CLI::

    python -m tools.modelzoo_verify --ci_dir ../shared/modelzoo_ci \
        --schema ../shared/monai_schema/meta_schema_20240725.json [--bundles aortadiff_cect] [--work /tmp/zoo]
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
BUNDLES_DIR = REPO_ROOT / "bundles"
DEFAULT_CI = REPO_ROOT.parent / "shared" / "modelzoo_ci"
DEFAULT_SCHEMA = REPO_ROOT.parent / "shared" / "monai_schema" / "meta_schema_20240725.json"
REFERENCE_BUNDLE = "brats_mri_generative_diffusion"  # model-zoo's own diffusion bundle and its exemptions

# bundle -> {model-zoo exclusion list: reason}; the model cards (docs/README.md, "Model-zoo checks") name them
EXEMPTIONS: dict[str, dict[str, str]] = {
    "aortadiff_cect": {
        "exclude_verify_shape_list": "the diffusion U-Net's forward is (x, timesteps); verify_bundle.py calls it "
                                     "with x alone (tests/test_bundle_checks.py runs verify_net_in_out with "
                                     "extra_forward_args timesteps)",
        "exclude_verify_torchscript_list": "MONAI's diffusion U-Net cannot be scripted and ckpt_export traces with "
                                           "one input; it is traced with (x, t) instead (docs/export.md)",
    },
    "abdomen_semantic_synthesis": {
        "exclude_verify_shape_list": "the diffusion U-Net's forward is (x, timesteps, seg); verify_bundle.py calls "
                                     "it with x alone (tests/test_bundle_checks.py runs verify_net_in_out with "
                                     "extra_forward_args)",
        "exclude_verify_torchscript_list": "MONAI's diffusion U-Net cannot be scripted and ckpt_export traces with "
                                           "one input; it is traced with (x, t) instead (docs/export.md)",
    },
    "cardiac_ldm_ssl": {},
}
CI_FILES = ("verify_bundle.py", "utils.py", "bundle_custom_data.py")


def granted_exemptions(ci_dir: str | os.PathLike = DEFAULT_CI, bundle: str = REFERENCE_BUNDLE) -> set[str]:
    """The exclusion lists of model-zoo's ``bundle_custom_data.py`` that name ``bundle``."""
    namespace: dict = {}
    exec(compile((Path(ci_dir) / "bundle_custom_data.py").read_text(), "bundle_custom_data.py", "exec"), namespace)
    return {k for k, v in namespace.items() if not k.startswith("_") and isinstance(v, (list, dict)) and bundle in v}


def check_exemptions(ci_dir: str | os.PathLike = DEFAULT_CI) -> None:
    """Raise unless every exemption used is one model-zoo grants its own generative diffusion bundle."""
    granted = granted_exemptions(ci_dir)
    for bundle, lists in EXEMPTIONS.items():
        extra = set(lists) - granted
        if extra:
            raise ValueError(f"{bundle}: exemption(s) {sorted(extra)} are not granted to {REFERENCE_BUNDLE} in "
                             f"{Path(ci_dir) / 'bundle_custom_data.py'} (granted: {sorted(granted)})")


def prepare_ci(ci_dir: str | os.PathLike, dst: Path) -> Path:
    """model-zoo's CI scripts in ``dst`` with :data:`EXEMPTIONS` appended to ``bundle_custom_data.py``."""
    ci_dir = Path(ci_dir)
    missing = [f for f in CI_FILES if not (ci_dir / f).is_file()]
    if missing:
        raise FileNotFoundError(f"model-zoo CI scripts {missing} not found in '{ci_dir}' (--ci_dir)")
    check_exemptions(ci_dir)
    dst.mkdir(parents=True, exist_ok=True)
    for f in CI_FILES:
        shutil.copyfile(ci_dir / f, dst / f)
    lines = ["", "# added for the ct-diffusion-bundles bundles (tools/modelzoo_verify.py EXEMPTIONS); each is an",
             f"# exemption model-zoo grants {REFERENCE_BUNDLE}"]
    for bundle, lists in EXEMPTIONS.items():
        for name in lists:
            lines.append(f"{name}.append({bundle!r})")
    with open(dst / "bundle_custom_data.py", "a") as f:
        f.write("\n".join(lines) + "\n")
    return dst


def fake_weights(bundle_dir: Path) -> Path:
    """``models/model.pt``: the inference ``network_def``'s state dict, as model-zoo's ``_produce_fake_weights``."""
    import torch
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(bundle_dir / "configs" / "inference.json"))
    parser.read_meta(str(bundle_dir / "configs" / "metadata.json"))
    parser["bundle_root"] = str(bundle_dir)
    torch.manual_seed(0)
    out = bundle_dir / "models" / "model.pt"
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(parser.get_parsed_content("network_def").state_dict(), out)
    return out


def prepare_bundle(bundle: str, models_dir: Path, schema: str | os.PathLike, weights: str | None = None,
                   bundles_dir: str | os.PathLike = BUNDLES_DIR) -> Path:
    """The bundle copied alone into ``models_dir`` with the schema, ``model.pt`` and no ``large_files.yml``."""
    src = Path(bundles_dir) / bundle
    if not (src / "configs" / "metadata.json").is_file():
        raise FileNotFoundError(f"bundle '{bundle}': {src / 'configs' / 'metadata.json'} does not exist")
    if not Path(schema).is_file():
        raise FileNotFoundError(f"metadata schema '{schema}' does not exist (--schema)")
    dst = models_dir / bundle
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("models", "runs", "eval", "cache", "__pycache__",
                                                            "large_files.yml", "large_files.yaml"))
    (dst / "eval").mkdir()
    shutil.copyfile(schema, dst / "eval" / "schema.json")
    if weights:
        (dst / "models").mkdir(exist_ok=True)
        shutil.copyfile(weights, dst / "models" / "model.pt")
    else:
        fake_weights(dst)
    info = models_dir / "model_info.json"
    if not info.exists():
        info.write_text("{}\n")
    return dst


def verify(bundles: Sequence[str] | str | None = None, ci_dir: str = str(DEFAULT_CI), schema: str = str(DEFAULT_SCHEMA),
           work: str | None = None, mode: str = "full", timeout: float = 1200) -> dict[str, str]:
    """Run ``verify_bundle.py -m <mode>`` on a prepared copy of each bundle; returns ``{bundle: its output}``.

    Raises:
        RuntimeError: ``verify_bundle.py`` failed for a bundle (its output's last lines in the message).
    """
    names = list(EXEMPTIONS) if bundles is None else ([bundles] if isinstance(bundles, str) else list(bundles))
    names = [n.strip() for b in names for n in str(b).split(",") if n.strip()]
    root = Path(work) if work else Path(tempfile.mkdtemp(prefix="modelzoo_verify_"))
    ci = prepare_ci(ci_dir, root / "ci")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH")) if p)}
    procs = {}
    for name in names:  # one verify_bundle.py process per bundle, as model-zoo runs it; they run side by side
        prepare_bundle(name, root / "models", schema)
        cmd = [sys.executable, str(ci / "verify_bundle.py"), "-b", name, "-p", str(root / "models"), "-m", mode]
        procs[name] = (cmd, subprocess.Popen(cmd, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                             text=True))
    out, failed = {}, []
    for name, (cmd, proc) in procs.items():
        stdout, stderr = proc.communicate(timeout=timeout)
        if proc.returncode != 0:
            tail = "\n".join((stdout + stderr).splitlines()[-25:])
            failed.append(f"verify_bundle.py -b {name} -m {mode} failed ({proc.returncode}):\n{tail}")
            continue
        out[name] = stdout
        print(f"== {' '.join(cmd)} (cwd {root})\n" + "\n".join(stdout.splitlines()[-8:]), flush=True)
    if failed:
        raise RuntimeError("\n".join(failed))
    return out


def main(bundles: str | None = None, ci_dir: str = str(DEFAULT_CI), schema: str = str(DEFAULT_SCHEMA),
         work: str | None = None, mode: str = "full") -> None:
    """CLI: verify every bundle (or ``--bundles a,b``) with model-zoo's ``verify_bundle.py``."""
    verify(bundles, ci_dir, schema, work, mode)


if __name__ == "__main__":
    import fire

    fire.Fire(main)
