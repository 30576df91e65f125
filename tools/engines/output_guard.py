"""Refuse to overwrite existing outputs unless asked (``--overwrite True``), and never write onto an input.

The one check every writer of the project calls before it writes: bundle ``initialize`` sections
(``$tools.engines.output_guard.refuse_overwrite([...], @overwrite)``), the evaluation and inference writers,
and the data-preparation CLIs.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

from tools.engines.errors import InputValueError, OutputExistsError

__all__ = ["check_writable", "refuse_overwrite"]

_SHOWN = 5  # existing outputs named in the error message


def refuse_overwrite(
    paths: Iterable[str | Path | None], overwrite: bool = False, inputs: Iterable[str | Path] = ()
) -> None:
    """Check, before anything is written, that no output exists (unless ``overwrite``) and that no output
    is one of ``inputs`` (never allowed, not even with ``overwrite``).

    Args:
        paths: the files about to be written; ``None`` entries are ignored.
        overwrite: allow replacing existing outputs.
        inputs: files an output must never be (compared after resolving links and relative parts).

    Raises:
        InputValueError (a ValueError): an output is one of ``inputs`` (names it).
        OutputExistsError (a FileExistsError): outputs exist and ``overwrite`` is False (names up to five and says how to replace them).
    """
    outputs = [Path(p) for p in paths if p is not None]
    resolved_inputs = {Path(p).resolve() for p in inputs}
    if resolved_inputs:
        for path in outputs:
            if path.resolve() in resolved_inputs:
                raise InputValueError(
                    f"output '{path}' is an input file; choose another output folder (inputs are never overwritten)"
                )
    if overwrite:
        return
    existing = [str(p) for p in outputs if p.exists()]
    if not existing:
        return
    shown = ", ".join(f"'{p}'" for p in existing[:_SHOWN])
    if len(existing) > _SHOWN:
        shown += f" and {len(existing) - _SHOWN} more"
    if len(existing) == 1:
        raise OutputExistsError(f"output {shown} already exists; pass --overwrite True to replace it")
    raise OutputExistsError(f"outputs {shown} already exist; pass --overwrite True to replace them")


def check_writable(folder: str | Path, key: str = "output_dir") -> None:
    """Check, before long work starts, that files can be written into ``folder`` (config key ``key``): an
    existing folder gets a probe file (written and removed at once); a missing one needs its nearest existing
    parent to be a writable folder. Nothing is created.

    Raises:
        InputValueError: ``folder`` (or the parent it would be made in) is a file or is not writable.
    """
    folder = Path(folder).expanduser().absolute()
    parent = folder
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise InputValueError(f"{key} '{folder}': '{parent}' is a file, not a folder; choose another output folder")
    if parent != folder:
        if not os.access(parent, os.W_OK | os.X_OK):
            raise InputValueError(f"{key} '{folder}' cannot be created: '{parent}' is not writable; choose another folder")
        return
    try:
        fd, probe = tempfile.mkstemp(prefix=".write_probe_", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise InputValueError(f"{key} '{folder}' is not writable ({e.strerror}); choose another folder") from e
