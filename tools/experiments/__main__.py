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
    module = importlib.import_module(f"tools.{argv[0]}.experiment")
    return module.main(argv[1:]) or 0


if __name__ == "__main__":
    sys.exit(main())
