"""No returned array or tensor lets an in-place edit change a later gradient: the edit is refused or harmless.

NumPy API (fast path and reference alike): the arrays a forward computed and backward reads are read-only, the
``hs`` it returns among them, and their WRITEABLE flag cannot be set back; everything else it returns (final
states, gradients, a checkpointed forward's ``hs``) is the caller's own memory. Layers: their outputs are the last
layer's ``hs`` (read-only) or a copy. fastbptt.torch: outputs and final states are memory of their own, so an
in-place edit is harmless as in torch.nn; an in-place edit of an input backward reads raises torch's
"modified by an inplace operation" error, as torch.nn does.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import DTYPES, gru_problem, lstm_problem, rnn_problem

import fastbptt as fb
import fastbptt.reference as ref

T, B, D, H = 6, 3, 5, 7
BACKENDS = {"fast": fb, "reference": ref}


def kernel_runs(kernels, dtype, rng):
    """For each cell: ``(forward() -> (hs, other returned arrays, cache), backward(cache) -> gradients)``."""
    r = {k: v.astype(dtype) for k, v in rnn_problem(rng, T, B, D, H).items()}
    lstm = {k: v.astype(dtype) for k, v in lstm_problem(rng, T, B, D, H).items()}
    plain = {k: v.astype(dtype) for k, v in lstm_problem(rng, T, B, D, H, forget_gate=False).items()}
    g = {k: v.astype(dtype) for k, v in gru_problem(rng, T, B, D, H).items()}
    lengths = np.array([T, 2, 4])

    def lstm_forward(p, **options):
        def forward():
            hs, c_T, cache = kernels.lstm_forward(p["x"], p["W_x"], p["W_h"], p["b"], p["h0"], p["c0"], **options)
            return hs, [c_T], cache

        return forward, lambda cache: kernels.lstm_backward(cache, p["dhs"], p["dc_T"])

    def rnn_forward(**options):
        hs, cache = kernels.rnn_forward(r["x"], r["W_xh"], r["W_hh"], r["b_h"], r["h0"], **options)
        return hs, [], cache

    def gru_forward(**options):
        hs, cache = kernels.gru_forward(g["x"], g["W_x"], g["W_h"], g["b"], g["b_hn"], g["h0"], **options)
        return hs, [], cache

    return {
        "rnn": (rnn_forward, lambda cache: kernels.rnn_backward(cache, r["dhs"])),
        "rnn-lengths": (lambda: rnn_forward(lengths=lengths), lambda cache: kernels.rnn_backward(cache, r["dhs"])),
        "lstm": lstm_forward(lstm),
        "lstm-lengths": lstm_forward(lstm, lengths=lengths),
        "lstm-no-forget-gate": lstm_forward(plain, forget_gate=False),
        "gru": (gru_forward, lambda cache: kernels.gru_backward(cache, g["dhs"])),
        "gru-lengths": (lambda: gru_forward(lengths=lengths), lambda cache: kernels.gru_backward(cache, g["dhs"])),
    }


def assert_same_bits(actual, expected):
    assert len(actual) == len(expected)
    for a, b in zip(actual, expected):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cell", list(kernel_runs(fb, np.float64, np.random.default_rng(0))))
def test_kernel_outputs_read_by_backward_refuse_edits_and_the_rest_are_the_callers(backend, cell, dtype, rng):
    forward, backward = kernel_runs(BACKENDS[backend], dtype, rng)[cell]
    clean = backward(forward()[2])

    hs, others, cache = forward()
    assert np.shares_memory(hs, cache.hs), "hs is what backward reads"
    with pytest.raises(ValueError, match="read-only"):
        hs *= 2
    with pytest.raises(ValueError, match="read-only"):
        hs[0, 0, 0] = 1.0
    with pytest.raises(ValueError):
        hs.flags.writeable = True  # the flag cannot be set back: the memory's owner is read-only too
    for name in cache.computed:
        with pytest.raises(ValueError, match="read-only"):
            getattr(cache, name)[...] = 0
    for array in others:  # c_T: the caller's own memory, and editing it changes nothing backward reads
        assert array.flags.writeable and not np.shares_memory(array, cache.cs)
        array *= 2
    assert_same_bits(backward(cache), clean)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_checkpointed_lstm_outputs_are_the_callers_and_edits_are_harmless(backend, dtype, rng):
    kernels = BACKENDS[backend]
    p = {k: v.astype(dtype) for k, v in lstm_problem(rng, 40, B, D, H).items()}

    def run(edit):
        hs, c_T, cache = kernels.lstm_forward(p["x"], p["W_x"], p["W_h"], p["b"], p["h0"], p["c0"], checkpoint=8)
        if edit:  # backward recomputes the states from its checkpoints: the returned ones are free to change
            assert hs.flags.writeable and c_T.flags.writeable
            assert not np.shares_memory(hs, cache.h_checkpoints)
            hs *= 2
            c_T *= 2
        return kernels.lstm_backward(cache, p["dhs"], p["dc_T"])

    assert_same_bits(run(edit=True), run(edit=False))


LAYERS = {"rnn": fb.RNN, "lstm": fb.LSTM, "gru": fb.GRU}
LAYER_OPTIONS = {
    "1-layer": {},
    "2-layer-bidirectional": {"num_layers": 2, "bidirectional": True},
    "batch-first": {"batch_first": True},
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("options", LAYER_OPTIONS)
@pytest.mark.parametrize("kind", LAYERS)
def test_layer_outputs_refuse_edits_or_edits_are_harmless(kind, options, backend, dtype, rng):
    layer = LAYERS[kind](D, H, dtype=dtype, backend=backend, seed=1, **LAYER_OPTIONS[options])
    x = rng.standard_normal((B, T, D) if layer.batch_first else (T, B, D)).astype(dtype)
    lengths = np.array([T, 2, 4])

    def run(edit):
        layer.zero_grad()
        outputs, final = layer.forward(x, lengths=lengths)
        upstream = np.ones_like(outputs)
        if edit:
            finals = final if isinstance(final, tuple) else (final,)
            for array in finals:  # final states: the caller's own
                array *= 3
            if outputs.flags.writeable:  # a copy (both directions, batch_first): must not be what backward reads
                outputs *= 2
            else:
                with pytest.raises(ValueError, match="read-only"):
                    outputs *= 2
        dx, _ = layer.backward(upstream)
        return [dx, *(layer.grads[name].copy() for name in sorted(layer.grads))]

    assert_same_bits(run(edit=True), run(edit=False))


# -- fastbptt.torch -------------------------------------------------------------------------------------------------


def torch_twins(kind, dtype, **options):
    torch = pytest.importorskip("torch", reason="torch is not installed (pip install torch==2.13.0)")
    fbt = pytest.importorskip("fastbptt.torch")
    torch.manual_seed(0)
    ours = getattr(fbt, kind)(D, H, dtype=dtype, **options)
    theirs = getattr(torch.nn, kind)(D, H, dtype=dtype, **options)
    theirs.load_state_dict(ours.state_dict())
    return torch, ours, theirs


TORCH_OPTIONS = {"1-layer": {}, "2-layer-bidirectional": {"num_layers": 2, "bidirectional": True}}


@pytest.mark.parametrize("dtype_name", ["float32", "float64"])
@pytest.mark.parametrize("options", TORCH_OPTIONS)
@pytest.mark.parametrize("kind", ["RNN", "LSTM", "GRU"])
def test_torch_in_place_edits_of_outputs_give_torch_nn_gradients(kind, options, dtype_name):
    torch = pytest.importorskip("torch", reason="torch is not installed (pip install torch==2.13.0)")
    torch, ours, theirs = torch_twins(kind, getattr(torch, dtype_name), **TORCH_OPTIONS[options])
    x = torch.randn(T, B, D, dtype=ours.weight_hh_l0.dtype)

    def loss_of(output, finals):
        return (output**2).sum() + sum((f**2).sum() for f in finals)

    # Ours: edited in place (as `out.mul_(2)`, an inplace activation or `out += residual` do).
    output, finals = ours(x)
    finals = finals if isinstance(finals, tuple) else (finals,)
    output.mul_(2.0)
    output += 1.0
    torch.nn.functional.relu(output, inplace=True)
    for f in finals:
        f.mul_(3.0)
    loss_of(output, finals).backward()
    # torch.nn's: the same edits out of place (torch.nn's float32 LSTM refuses the in-place ones; its others agree).
    output, finals = theirs(x)
    finals = finals if isinstance(finals, tuple) else (finals,)
    output = torch.nn.functional.relu(output * 2.0 + 1.0)
    loss_of(output, [f * 3.0 for f in finals]).backward()

    tolerance = 1e-10 if dtype_name == "float64" else 1e-4
    assert len(list(ours.parameters())) == len(list(theirs.parameters()))
    for (name, mine), theirs_parameter in zip(ours.named_parameters(), theirs.parameters()):
        scale = float(theirs_parameter.grad.abs().max())
        assert scale > 0, f"{name}: a zero gradient would pass trivially"
        torch.testing.assert_close(mine.grad, theirs_parameter.grad, rtol=tolerance, atol=tolerance * scale)


@pytest.mark.parametrize("dtype_name", ["float32", "float64"])
@pytest.mark.parametrize("kind", ["RNN", "LSTM", "GRU"])
def test_torch_in_place_edits_of_what_backward_reads_raise_as_in_torch_nn(kind, dtype_name):
    torch = pytest.importorskip("torch", reason="torch is not installed (pip install torch==2.13.0)")
    dtype = getattr(torch, dtype_name)
    for what in ("input", "initial state", "weight"):
        outcomes = []
        ours, theirs = torch_twins(kind, dtype)[1:]
        for module in (ours, theirs):
            x = torch.randn(T, B, D, dtype=dtype, requires_grad=True).clone()
            h = torch.zeros(1, B, H, dtype=dtype, requires_grad=True).clone()
            hx = (h, torch.zeros(1, B, H, dtype=dtype)) if kind == "LSTM" else h
            output, _ = module(x, hx)
            if what == "input":
                x.mul_(2.0)
            elif what == "initial state":
                h.add_(1.0)
            else:
                with torch.no_grad():
                    module.weight_hh_l0.add_(1.0)  # an optimizer step between forward and backward
            try:
                output.sum().backward()
                outcomes.append("gradient")
            except RuntimeError as error:
                outcomes.append("RuntimeError")
                if module is ours:  # torch's own wording ("Output 0 of Unbind is a view ...": torch.nn's RNN)
                    assert "modified by an inplace operation" in str(error)
        assert outcomes[0] == "RuntimeError", f"{kind}: an in-place edit of the {what} went unnoticed"
        assert outcomes == [outcomes[1]] * 2, f"{kind} {what}: fastbptt.torch {outcomes[0]}, torch.nn {outcomes[1]}"
