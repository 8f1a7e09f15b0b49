"""``python -m mixedjax``: the command line of :mod:`mixedjax.cli`."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
