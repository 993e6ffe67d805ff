"""The compiled kernels: the build for the widest instruction set this CPU runs (see fastbptt._isa), which takes
this module's place, so that ``fastbptt._core`` is that extension module (``_core.pyi`` says what it holds)."""

import sys

from ._isa import load

sys.modules[__name__] = load()
