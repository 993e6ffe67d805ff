"""``python -m fastbptt <command>``: the command line of :mod:`fastbptt.cli`."""

from .cli.main import main

if __name__ == "__main__":
    raise SystemExit(main())
