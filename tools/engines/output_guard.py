"""Refuse to overwrite existing outputs unless asked (``--overwrite True``)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

__all__ = ["refuse_overwrite"]


def refuse_overwrite(paths: Iterable[str | Path], overwrite: bool = False) -> None:
    """Raise ``FileExistsError`` naming the first existing path unless ``overwrite``."""
    if overwrite:
        return
    for p in paths:
        if p is not None and Path(p).exists():
            raise FileExistsError(f"output '{p}' already exists; pass --overwrite True to replace it")
