"""Fetch the bundles' large files (trained weights) and the pretrained feature-extractor weights.

This is the ONLY place in the project that downloads anything; bundles never fetch at run time.

Usage (fire CLI; both forms work)::

    python tools/download_weights.py [--bundle NAME|all] [--dest DIR] [--mirror URL_OR_DIR] [--dry_run]
    python -m tools.download_weights --bundle aortadiff_cect --dry_run

What it fetches:

* every entry of ``bundles/<name>/large_files.yml`` (model-zoo format: ``large_files: [{path, url,
  hash_val, hash_type}, ...]``), placed at ``<bundle dir>/<path>`` (or ``<dest>/<name>/<path>`` with
  ``--dest``), i.e. where the bundle configs load them (``$@bundle_root + '/models/model.pt'``);
* the feature-extractor weights listed in ``tools/feature_weights.yml`` that the selected bundles
  use (torchvision backbones of lpips / MONAI ``PerceptualLoss``, the FID feature network), placed in
  ``torch.hub.get_dir()/checkpoints`` (honours ``$TORCH_HOME``), where torchvision looks before
  downloading by itself. ``--features none|auto|all`` chooses them (``auto``: the default entries plus
  those whose ``config_tokens`` appear in the selected bundles' configs).

Downloads go through MONAI's :func:`monai.apps.utils.download_url`: the file is written to a temporary
folder and moved into place only after its hash matched, so an interrupted or corrupted download
never leaves a file behind (MONAI's utility has no byte-range resume: re-running fetches only the
files that are still missing or wrong). Files already present with the right hash are skipped.

``--mirror`` replaces the host and path of every URL: a local folder (the file is looked up by its
file name, then by its ``path``) or an http(s) base URL (``<base>/<file name>``).

Exit codes: 0 all requested files are present; 1 some file could not be fetched or failed its hash
check (the message names each file, its URL and where to put it by hand); 2 nothing failed but some
bundle weights are not released yet (their ``hash_val`` is empty or their ``url`` is a placeholder).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.error import HTTPError, URLError
from urllib.parse import urlparse

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_BUNDLES_DIR = REPO_ROOT / "bundles"
FEATURE_WEIGHTS_YML = Path(__file__).resolve().parent / "feature_weights.yml"
LARGE_FILES_NAMES = ("large_files.yml", "large_files.yaml", "large_files.json")
REQUIRED_KEYS = ("path", "url")
PLACEHOLDER_MARKERS = ("todo", "tbd", "placeholder", "not-yet-released", "unreleased")

EXIT_OK, EXIT_FAILED, EXIT_UNRELEASED = 0, 1, 2


@dataclass
class WeightFile:
    """One file to place: where it comes from, where it goes and how it is checked."""

    owner: str  # bundle name, or "feature-weights"
    path: str  # path as written in the yml (relative to the bundle root / hub checkpoint dir)
    url: str
    target: Path
    hash_val: str | None = None
    hash_type: str = "sha256"
    hash_prefix: str | None = None
    used_by: str = ""
    released: bool = True
    source: str = ""  # url actually fetched (after --mirror)
    status: str = "pending"  # present | downloaded | would-download | would-replace | unreleased | failed
    message: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def hash_text(self) -> str:
        if self.hash_val:
            return f"{self.hash_type}={self.hash_val}"
        if self.hash_prefix:
            return f"{self.hash_type} starting with {self.hash_prefix}"
        return "no hash given"


def hub_checkpoint_dir(hub_dir: str | os.PathLike | None = None) -> Path:
    """Folder where torchvision/lpips look for pretrained weights: ``torch.hub.get_dir()/checkpoints``.

    ``torch.hub.get_dir()`` is ``$TORCH_HOME/hub`` (default ``~/.cache/torch/hub``).
    """
    if hub_dir is not None:
        return Path(hub_dir).expanduser() / "checkpoints"
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints"


def _is_placeholder(value: Any) -> bool:
    text = "" if value is None else str(value).strip().lower()
    return text == "" or any(m in text for m in PLACEHOLDER_MARKERS)


def _safe_relative(path: str, owner: str, yml: Path) -> str:
    p = Path(str(path))
    if p.is_absolute() or ".." in p.parts:
        raise ValueError(f"{yml}: large_files entry path {path!r} of {owner!r} must be relative inside the bundle")
    return str(p)


def read_large_files(bundle_dir: str | os.PathLike) -> tuple[Path, list[dict]]:
    """Read ``large_files.yml`` (model-zoo format) of one bundle.

    Returns ``(yml path, entries)``; each entry has at least ``path`` and ``url``.
    Raises FileNotFoundError when the bundle has no large_files.yml and ValueError on a malformed file.
    """
    bundle_dir = Path(bundle_dir)
    for name in LARGE_FILES_NAMES:
        yml = bundle_dir / name
        if yml.is_file():
            break
    else:
        raise FileNotFoundError(f"{bundle_dir}: no large_files.yml (expected one of {', '.join(LARGE_FILES_NAMES)})")
    with open(yml) as f:
        content = json.load(f) if yml.suffix == ".json" else yaml.safe_load(f)
    if not isinstance(content, dict) or not isinstance(content.get("large_files"), list):
        raise ValueError(f"{yml}: expected a top-level key 'large_files' holding a list of {{path, url, hash_val, hash_type}}")
    entries = content["large_files"]
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise ValueError(f"{yml}: large_files[{i}] must be a mapping with keys path, url, hash_val, hash_type")
        missing = [k for k in REQUIRED_KEYS if not entry.get(k)]
        if missing:
            raise ValueError(f"{yml}: large_files[{i}] lacks key(s) {missing} (expected path, url, hash_val, hash_type)")
    return yml, entries


def list_bundles(bundles_dir: str | os.PathLike = DEFAULT_BUNDLES_DIR) -> list[str]:
    """Names of the bundles (sub-folders of ``bundles_dir`` with a ``configs`` folder or a large_files.yml)."""
    root = Path(bundles_dir)
    if not root.is_dir():
        return []
    return sorted(
        d.name
        for d in root.iterdir()
        if d.is_dir() and ((d / "configs").is_dir() or any((d / n).is_file() for n in LARGE_FILES_NAMES))
    )


def bundle_files(
    bundle: str, bundles_dir: str | os.PathLike = DEFAULT_BUNDLES_DIR, dest: str | os.PathLike | None = None
) -> list[WeightFile]:
    """The large files of one bundle, with their target paths (bundle dir, or ``dest/<bundle>``)."""
    bundle_dir = Path(bundles_dir) / bundle
    if not bundle_dir.is_dir():
        raise FileNotFoundError(
            f"bundle {bundle!r} not found: {bundle_dir} does not exist (bundles: {list_bundles(bundles_dir)})"
        )
    yml, entries = read_large_files(bundle_dir)
    root = Path(dest) / bundle if dest is not None else bundle_dir
    files = []
    for entry in entries:
        rel = _safe_relative(entry["path"], bundle, yml)
        hash_val = entry.get("hash_val")
        released = entry.get("released", True) is not False and not _is_placeholder(hash_val)
        released = released and not any(m in str(entry["url"]).lower() for m in PLACEHOLDER_MARKERS)
        files.append(
            WeightFile(
                owner=bundle,
                path=rel,
                url=str(entry["url"]),
                target=root / rel,
                hash_val=None if _is_placeholder(hash_val) else str(hash_val).strip().lower(),
                hash_type=str(entry.get("hash_type") or "sha256").lower(),
                used_by=f"{bundle} ({yml.name})",
                released=released,
            )
        )
    return files


def feature_files(
    bundles: list[str],
    features: str = "auto",
    bundles_dir: str | os.PathLike = DEFAULT_BUNDLES_DIR,
    hub_dir: str | os.PathLike | None = None,
    feature_yml: str | os.PathLike = FEATURE_WEIGHTS_YML,
) -> list[WeightFile]:
    """Feature-extractor weights to place in the torch hub checkpoint folder.

    Args:
        bundles: selected bundle names (their ``configs/*.json`` are scanned for ``config_tokens``).
        features: ``"none"``, ``"auto"`` (default entries + those the bundles' configs name), ``"all"``,
            or a comma-separated list of file names from ``feature_yml``.
    """
    features = str(features).strip()
    if features.lower() == "none":
        return []
    with open(feature_yml) as f:
        content = yaml.safe_load(f) or {}
    entries = content.get("feature_files")
    if not isinstance(entries, list):
        raise ValueError(f"{feature_yml}: expected a top-level key 'feature_files' holding a list")
    config_text = ""
    for b in bundles:
        for cfg in sorted((Path(bundles_dir) / b / "configs").glob("*.json")):
            config_text += cfg.read_text(errors="replace")
    names = {e["path"] for e in entries}
    if features.lower() not in ("auto", "all"):
        wanted = {n.strip() for n in features.split(",") if n.strip()}
        unknown = wanted - names
        if unknown:
            raise ValueError(f"--features: unknown file(s) {sorted(unknown)}; known in {feature_yml}: {sorted(names)}")
    ckpt_dir = hub_checkpoint_dir(hub_dir)
    files = []
    for e in entries:
        if features.lower() == "auto":
            take = bool(e.get("default")) or any(t in config_text for t in e.get("config_tokens") or [])
        elif features.lower() == "all":
            take = True
        else:
            take = e["path"] in wanted
        if not take:
            continue
        rel = _safe_relative(e["path"], "feature-weights", Path(feature_yml))
        files.append(
            WeightFile(
                owner="feature-weights",
                path=rel,
                url=str(e["url"]),
                target=ckpt_dir / rel,
                hash_val=None if _is_placeholder(e.get("hash_val")) else str(e["hash_val"]).strip().lower(),
                hash_type=str(e.get("hash_type") or "sha256").lower(),
                hash_prefix=str(e["hash_prefix"]).lower() if e.get("hash_prefix") else None,
                used_by=str(e.get("used_by", "")),
            )
        )
    return files


def resolve_source(item: WeightFile, mirror: str | None) -> str:
    """URL to fetch ``item`` from: its own url, or the same file name under ``mirror``.

    A local mirror folder is searched for ``<file name>`` then ``<path>`` and ``<owner>/<path>``;
    the file is returned as a ``file://`` URL so that the same MONAI download + hash check applies.
    """
    if not mirror:
        return item.url
    name = Path(urlparse(item.url).path).name or Path(item.path).name
    if urlparse(str(mirror)).scheme in ("http", "https", "ftp"):
        return str(mirror).rstrip("/") + "/" + name
    mirror_dir = Path(str(mirror).removeprefix("file://")).expanduser()
    if not mirror_dir.is_dir():
        raise FileNotFoundError(f"--mirror {mirror}: not an http(s) URL and not an existing folder")
    for candidate in (mirror_dir / name, mirror_dir / item.path, mirror_dir / item.owner / item.path):
        if candidate.is_file():
            return candidate.resolve().as_uri()
    return (mirror_dir / name).resolve().as_uri()  # does not exist: reported as missing by the download


def _sha(path: Path, hash_type: str) -> str:
    h = hashlib.new(hash_type)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify(item: WeightFile, path: Path | None = None) -> tuple[bool, str]:
    """Check a file against the item's full hash (MONAI ``check_hash``) or its hash prefix.

    Returns ``(ok, actual hex digest)``; ``ok`` is True when the item carries no hash at all.
    """
    from monai.apps.utils import check_hash

    path = Path(path or item.target)
    if item.hash_val:
        actual = _sha(path, item.hash_type)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return check_hash(path, item.hash_val, item.hash_type), actual
    if item.hash_prefix:
        actual = _sha(path, item.hash_type)
        return actual.startswith(item.hash_prefix), actual
    return True, ""


def fetch(item: WeightFile, mirror: str | None = None, dry_run: bool = False, progress: bool = False) -> WeightFile:
    """Place one file at ``item.target``; sets ``item.status`` and ``item.message`` (never raises on I/O)."""
    try:
        item.source = resolve_source(item, mirror)
    except FileNotFoundError as e:
        item.status, item.message = "failed", str(e)
        return item
    if not item.released and item.target.is_file():
        item.status = "present"
        item.message = "present (cannot be verified: these weights are not released yet, no hash to check): skipped"
        return item
    if not item.released and not mirror:
        item.status = "unreleased"
        item.message = (
            f"{item.owner}: {item.path} is not released yet ({item.url} is a placeholder for the project's future "
            f"release page; its hash_val is {'empty' if not item.hash_val else item.hash_val}). Train the bundle "
            f"(python -m monai.bundle run training --config_file bundles/{item.owner}/configs/train.json) or copy "
            f"a checkpoint to {item.target}"
        )
        return item
    if item.target.is_file():
        ok, actual = verify(item)
        if ok:
            item.status, item.message = "present", f"already present with the right hash ({item.hash_text()}): skipped"
            return item
        if dry_run:
            item.status = "would-replace"
            item.message = f"present but {item.hash_type} is {actual}, expected {item.hash_text()}: would be replaced"
            return item
        item.target.unlink()
        item.extra["replaced"] = actual
    if dry_run:
        item.status, item.message = "would-download", f"would download {item.source} -> {item.target}"
        return item
    from monai.apps.utils import (  # imported here: a dry run stays light
        HashCheckError,
        download_url,
    )

    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="No hash value provided")
            download_url(
                item.source, item.target, hash_val=item.hash_val or None, hash_type=item.hash_type, progress=progress
            )
    except HashCheckError:
        item.target.unlink(missing_ok=True)
        item.status = "failed"
        item.message = (
            f"hash check failed for {item.target.name} from {item.source}: expected {item.hash_text()}; "
            f"the file was removed ({item.target})"
        )
        return item
    except HTTPError as e:
        item.status = "failed"
        item.message = f"HTTP {e.code} {e.reason} for {item.source}"
        if e.code == 404 and "/releases/download/" in item.source:
            item.message += " (the release may not be published yet)"
        return item
    except (URLError, OSError, RuntimeError) as e:
        item.target.unlink(missing_ok=True)
        item.status, item.message = "failed", f"cannot fetch {item.source}: {getattr(e, 'reason', e)}"
        return item
    if not item.target.is_file():
        item.status, item.message = "failed", f"download of {item.source} produced no file at {item.target}"
        return item
    if item.hash_prefix and not item.hash_val:
        ok, actual = verify(item)
        if not ok:
            item.target.unlink(missing_ok=True)
            item.status = "failed"
            item.message = (
                f"hash check failed for {item.target.name} from {item.source}: {item.hash_type} is {actual}, "
                f"expected {item.hash_text()}; the file was removed ({item.target})"
            )
            return item
    item.status = "downloaded"
    item.message = f"downloaded {item.source} -> {item.target}" + (
        "" if (item.hash_val or item.hash_prefix) else " (NOT verified: no hash given)"
    )
    if "replaced" in item.extra:
        item.message += f" (replaced a file whose {item.hash_type} was {item.extra['replaced']})"
    return item


def plan(
    bundle: str = "all",
    dest: str | os.PathLike | None = None,
    features: str = "auto",
    bundles_dir: str | os.PathLike = DEFAULT_BUNDLES_DIR,
    hub_dir: str | os.PathLike | None = None,
    feature_yml: str | os.PathLike = FEATURE_WEIGHTS_YML,
) -> tuple[list[WeightFile], list[str]]:
    """Files wanted for ``bundle`` (a name, a comma list, or ``all``) plus notes about bundles skipped."""
    notes: list[str] = []
    if str(bundle) == "all":
        names = list_bundles(bundles_dir)
        if not names:
            notes.append(f"no bundles found in {bundles_dir}")
    else:
        names = [b.strip() for b in str(bundle).split(",") if b.strip()]
    items: list[WeightFile] = []
    for name in names:
        try:
            items += bundle_files(name, bundles_dir, dest)
        except FileNotFoundError as e:
            if str(bundle) != "all" or not (Path(bundles_dir) / name).is_dir():
                raise
            notes.append(f"{name}: skipped, {e}")
    items += feature_files(names, features, bundles_dir, hub_dir, feature_yml)
    return items, notes


def download_weights(
    bundle: str = "all",
    dest: str | None = None,
    mirror: str | None = None,
    dry_run: bool = False,
    features: str = "auto",
    bundles_dir: str | os.PathLike = DEFAULT_BUNDLES_DIR,
    hub_dir: str | None = None,
    progress: bool = False,
    feature_yml: str | os.PathLike = FEATURE_WEIGHTS_YML,
) -> tuple[list[WeightFile], list[str]]:
    """Library entry: plan then fetch every file; returns the items (with status) and notes."""
    items, notes = plan(bundle, dest, features, bundles_dir, hub_dir, feature_yml)
    for item in items:
        fetch(item, mirror=mirror, dry_run=dry_run, progress=progress)
    return items, notes


def report(items: list[WeightFile], notes: list[str], dry_run: bool = False) -> tuple[str, int]:
    """Human-readable summary and exit code (0 ok, 1 failed, 2 only unreleased weights missing)."""
    lines = [("DRY RUN: files wanted (nothing downloaded)" if dry_run else "weights:")]
    for it in items:
        lines.append(f"  [{it.status}] {it.owner}: {it.path}")
        lines.append(f"      url:    {it.url}" + (f"  (from {it.source})" if it.source and it.source != it.url else ""))
        lines.append(f"      target: {it.target}")
        lines.append(f"      hash:   {it.hash_text()}")
        if it.used_by:
            lines.append(f"      used by: {it.used_by}")
        if it.message:
            lines.append(f"      {it.message}")
    lines += [f"note: {n}" for n in notes]
    failed = [it for it in items if it.status == "failed"]
    unreleased = [it for it in items if it.status == "unreleased"]
    if failed:
        lines.append("")
        lines.append(f"ERROR: {len(failed)} file(s) could not be placed (offline, missing on the server or wrong hash).")
        lines.append("Download each by hand and put it where shown (the tool checks the hash on its next run):")
        for it in failed:
            lines.append(f"  {it.url}\n    -> {it.target}   ({it.hash_text()})\n    reason: {it.message}")
    if unreleased:
        lines.append("")
        lines.append(
            f"NOTE: {len(unreleased)} bundle weight file(s) are not released yet: their large_files.yml points to the "
            "project's future release page. Train the bundles locally, or rerun this tool once the release exists."
        )
        for it in unreleased:
            lines.append(f"  {it.owner}: {it.path} -> {it.target}")
    code = EXIT_FAILED if failed else EXIT_UNRELEASED if unreleased else EXIT_OK
    if not dry_run and code == EXIT_OK:
        lines.append(f"OK: {len(items)} file(s) in place.")
    return "\n".join(lines), (EXIT_OK if dry_run and not failed else code)


def main(
    bundle: str = "all",
    dest: str | None = None,
    mirror: str | None = None,
    dry_run: bool = False,
    features: str = "auto",
    bundles_dir: str = str(DEFAULT_BUNDLES_DIR),
    hub_dir: str | None = None,
    progress: bool | None = None,
    feature_yml: str = str(FEATURE_WEIGHTS_YML),
) -> None:
    """Download bundle weights (large_files.yml) and feature-extractor weights; exits with 0, 1 or 2.

    Args:
        bundle: a bundle name under ``bundles_dir``, a comma-separated list, or ``all``.
        dest: put bundle files under ``<dest>/<bundle>/<path>`` instead of inside the bundle folders.
        mirror: local folder or http(s) base URL serving the same file names.
        dry_run: list the files, their URLs, targets and hashes without downloading.
        features: ``auto`` | ``all`` | ``none`` | comma list of file names in tools/feature_weights.yml.
        bundles_dir: folder holding the bundles.
        hub_dir: torch hub folder (default ``torch.hub.get_dir()``, i.e. ``$TORCH_HOME/hub``).
        progress: show download progress bars (default: when stdout is a terminal).
        feature_yml: list of feature-extractor weight files (default tools/feature_weights.yml).
    """
    if progress is None:
        progress = sys.stdout.isatty()
    try:
        items, notes = download_weights(
            bundle, dest, mirror, dry_run, features, bundles_dir, hub_dir, progress, feature_yml
        )
    except (FileNotFoundError, ValueError) as e:
        print(f"ERROR: {e}", file=sys.stderr)
        raise SystemExit(EXIT_FAILED) from None
    text, code = report(items, notes, dry_run)
    print(text, file=sys.stderr if code == EXIT_FAILED else sys.stdout)
    raise SystemExit(code)


if __name__ == "__main__":
    import fire

    fire.Fire(main)
