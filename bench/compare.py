"""Side-by-side benchmark from a source checkout: the same as ``python -m fastbptt bench`` (see bench/README.md).

python bench/compare.py --cells rnn --dtypes float32,float64 --shapes S,M,L --threads 1
"""

from __future__ import annotations

import sys

from fastbptt.cli.bench import main

if __name__ == "__main__":
    sys.exit(main())
