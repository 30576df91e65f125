"""``python -m tools.demo``: see :mod:`tools.demo.cli`."""

from tools.demo.cli import cli

if __name__ == "__main__":
    cli()
