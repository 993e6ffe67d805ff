"""The kernels' API: the compiled core's functions (``functional``) and their NumPy reference (``reference``),
with what both share: argument checks, result types, sequences, checkpointing, memory accounting, diagnostics, the
cell specifications (``cells``) and the stack driver (``stack``). Nothing here imports the training toolkit, the torch
backend or the command line."""
