"""Weight initialisation schemes, the first remedy for vanishing and exploding gradients.

Each function takes a ``numpy.random.Generator`` so that every scheme is reproducible from a seed.
"""

from __future__ import annotations

import numpy as np

SCHEMES = ("uniform", "orthogonal", "identity")


def uniform(rng: np.random.Generator, shape, hidden_size: int) -> np.ndarray:
    """PyTorch's default for recurrent layers: ``U(-1/sqrt(H), 1/sqrt(H))`` for every weight and bias."""
    bound = 1.0 / np.sqrt(hidden_size)
    return rng.uniform(-bound, bound, size=shape)


def orthogonal(rng: np.random.Generator, n: int, gain: float = 1.0) -> np.ndarray:
    """A random orthogonal ``[n, n]`` matrix (Haar-distributed, from the QR of a Gaussian matrix) times ``gain``.

    All its singular values equal ``gain``, so with gain 1 the linear part of ``dh_t/dh_{t-1}`` neither shrinks
    nor grows any direction (Saxe et al. 2014).
    """
    q, r = np.linalg.qr(rng.standard_normal((n, n)))
    return gain * q * np.sign(np.diag(r))  # the sign fix makes the distribution uniform over orthogonal matrices


def identity(n: int, scale: float = 1.0) -> np.ndarray:
    """``scale * I``: the recurrent weights of the IRNN (Le, Jaitly & Hinton 2015), a ReLU RNN that starts by
    copying its state, so gradients pass back through time unchanged until learning moves the weights."""
    return scale * np.eye(n)
