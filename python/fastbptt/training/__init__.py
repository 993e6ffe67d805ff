"""The training toolkit on the kernels: layers that hold their parameters (``layers``), the sequence model
(``model``), optimisers (``optim``) and truncated BPTT (``tbptt``)."""
