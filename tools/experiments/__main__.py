"""``python -m tools.experiments <paper> [options]``: dispatch to ``tools.<paper>.experiment.main``."""
from __future__ import annotations

import importlib
import sys

PAPERS = ("aortadiff", "abdomen", "cardiac")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in PAPERS:
        print(f"usage: python -m tools.experiments {{{','.join(PAPERS)}}} [--help | options]", file=sys.stderr)
        return 2
    name = f"tools.{argv[0]}.experiment"
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name != name:
            raise
        print(f"error: no experiment for '{argv[0]}' yet ({name.replace('.', '/')}.py does not exist)", file=sys.stderr)
        return 2
    return module.main(argv[1:]) or 0


if __name__ == "__main__":
    sys.exit(main())
