"""The project's error type for bad input, and its one-line printing at the bundle entry point.

Every check that a user can act on (a file, a datalist key, a config value, an output folder) raises a
:class:`BundleInputError` (or one of its subclasses, which are also the builtin error the caller expects:
``ValueError``, ``FileNotFoundError``, ``FileExistsError``). Users start bundles with
``python -m monai.bundle run ...``; MONAI wraps an error raised inside a ``$`` expression into
``RuntimeError: Failed to evaluate ConfigExpression ...`` and Python prints 50-300 lines of trace.
:func:`install_excepthook`, the first entry of every config's ``initialize`` list, replaces Python's
``sys.excepthook`` so that an uncaught exception whose cause chain holds a :class:`BundleInputError` is
printed as one line, ``error: <message>`` (exit status 1, as for any uncaught exception). ``--debug True``
keeps the full trace; any other exception is printed by the previous hook unchanged.
"""

from __future__ import annotations

import sys
from types import TracebackType

__all__ = [
    "BundleInputError",
    "InputFileError",
    "InputValueError",
    "OutputExistsError",
    "find_input_error",
    "install_excepthook",
]


class BundleInputError(Exception):
    """Bad input a user can fix; the message names the file or config key and the problem, in one line."""


class InputValueError(BundleInputError, ValueError):
    """A file's content or a config value is wrong (also a ``ValueError``)."""


class InputFileError(BundleInputError, FileNotFoundError):
    """A file is missing or cannot be read (also a ``FileNotFoundError``)."""


class OutputExistsError(BundleInputError, FileExistsError):
    """An output exists and ``--overwrite True`` was not given (also a ``FileExistsError``)."""


def find_input_error(exc: BaseException | None) -> BundleInputError | None:
    """The first :class:`BundleInputError` in ``exc``'s chain of causes / contexts, or None."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, BundleInputError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def install_excepthook(debug: bool = False) -> None:
    """Print uncaught bundle input errors as one line ``error: <message>`` (full trace with ``debug``).

    Idempotent; other exceptions go to the hook that was installed before.
    """
    previous = sys.excepthook
    if getattr(previous, "_bundle_input_hook", False):
        previous = previous._previous  # type: ignore[attr-defined]

    def hook(kind: type[BaseException], value: BaseException, tb: TracebackType | None) -> None:
        found = None if debug else find_input_error(value)
        if found is None:
            previous(kind, value, tb)
            return
        message = " ".join(str(found).split())  # one line, whatever the message held
        print(f"error: {message} (run with --debug True for the full trace)", file=sys.stderr)

    hook._bundle_input_hook = True  # type: ignore[attr-defined]
    hook._previous = previous  # type: ignore[attr-defined]
    sys.excepthook = hook
