"""Where a bundle's folder is, for its ``bundle_root`` key, so the same command works from the repository
root (``bundles/<name>``), from inside the bundle folder (``.``, as model-zoo bundles run) and from the
folder above a bundle copied alone (``<name>``, e.g. after ``monai.bundle download``).

``"bundle_root": "$tools.engines.bundle_root.find_bundle_root('aortadiff_cect')"`` in every config;
``--bundle_root PATH`` on the command line replaces it.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["find_bundle_root"]

_MARKER = Path("configs") / "metadata.json"


def _is_bundle(folder: Path) -> bool:
    return (folder / _MARKER).is_file()


def find_bundle_root(name: str, cwd: str | Path | None = None) -> str:
    """The bundle folder of bundle ``name`` relative to ``cwd`` (default: the working directory).

    Tried in order: ``.`` (the working directory is a bundle folder: it holds ``configs/metadata.json``),
    ``bundles/<name>`` (the repository root), ``<name>`` (the folder that holds a copied bundle).

    Raises:
        ValueError: none of them is a bundle folder, or the working directory is a *different* bundle of the
            same collection (a sibling ``../<name>`` exists); the message names the ``bundle_root`` key.
    """
    here = Path.cwd() if cwd is None else Path(cwd)
    if _is_bundle(here):
        sibling = here.parent / name
        if here.resolve().name != name and _is_bundle(sibling) and sibling.resolve() != here.resolve():
            raise ValueError(
                f"bundle_root: the working directory '{here}' is another bundle's folder, not '{name}'; "
                f"run from '{sibling}' or pass --bundle_root {sibling}"
            )
        return "."
    for candidate in (Path("bundles") / name, Path(name)):
        if _is_bundle(here / candidate):
            return str(candidate)
    raise ValueError(
        f"bundle_root: no bundle '{name}' found from the working directory '{here}' (looked for {_MARKER} in "
        f"'.', 'bundles/{name}' and '{name}'); run from the repository root or the bundle folder, or pass "
        f"--bundle_root /path/to/{name}"
    )
