"""Decathlon-style datalist JSON: load one split with absolute, checked paths.

A datalist is ``{"training": [...], "validation": [...], "test": [...]}``; each entry is a dict whose
file-valued keys (``image``, ``label``, ``ncct``, ``cect``, ``aorta``, ``lumen``, ...) hold paths
relative to the datalist's folder (absolute paths are kept as they are).
"""

from __future__ import annotations

import json
from pathlib import Path
from collections.abc import Sequence

from tools.engines.errors import InputFileError, InputValueError

__all__ = ["load_datalist"]


def load_datalist(
    datalist: str | Path,
    split: str = "training",
    required_keys: Sequence[str] = (),
    base_dir: str | Path | None = None,
) -> list[dict]:
    """Load ``split`` of ``datalist`` with every referenced file resolved and checked.

    Args:
        datalist: path of the datalist JSON.
        split: top-level key to read (``training``, ``validation``, ``test``).
        required_keys: keys every entry must carry (e.g. ``("ncct", "cect", "aorta")``).
        base_dir: folder that relative paths are resolved against; the datalist's folder by default.

    Returns:
        A list of entries (dicts) with absolute paths for file-valued keys.

    Raises:
        FileNotFoundError: the datalist or a file it names does not exist (the message names both).
        ValueError: the JSON is malformed, lacks ``split`` or an entry lacks a required key.
    """
    path = Path(datalist).expanduser()
    if not path.is_file():
        raise InputFileError(f"datalist '{path}' does not exist")
    try:
        content = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise InputValueError(f"datalist '{path}' is not valid JSON: {e}") from e
    if not isinstance(content, dict) or split not in content:
        keys = sorted(content) if isinstance(content, dict) else type(content).__name__
        raise InputValueError(f"datalist '{path}' has no split '{split}' (found: {keys})")
    base = Path(base_dir) if base_dir is not None else path.parent
    entries = content[split]
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise InputValueError(f"datalist '{path}', split '{split}': expected a list of dicts")
    resolved = []
    for i, entry in enumerate(entries):
        missing = [k for k in required_keys if k not in entry]
        if missing:
            raise InputValueError(f"datalist '{path}', split '{split}', entry {i}: missing key(s) {missing}")
        item = dict(entry)
        for key, value in entry.items():
            if isinstance(value, str) and _looks_like_file(value):
                file = Path(value).expanduser()
                file = file if file.is_absolute() else base / file
                if not file.exists():
                    raise InputFileError(
                        f"datalist '{path}', split '{split}', entry {i}, key '{key}': file '{file}' does not exist"
                    )
                item[key] = str(file)
        resolved.append(item)
    return resolved


def _looks_like_file(value: str) -> bool:
    """File-valued entries: image suffixes or anything with a path separator (a DICOM folder); not ids."""
    return value.endswith((".nii", ".nii.gz", ".nrrd", ".mha", ".dcm", ".npy", ".npz")) or "/" in value
