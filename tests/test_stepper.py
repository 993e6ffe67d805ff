"""fastbptt.Stepper and the kernels' ``packed=``: weights packed once, steps run one at a time."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import DTYPES, assert_close, assert_nontrivial

import fastbptt as fb
from fastbptt import _core
from fastbptt.kernels import cells

CELLS = [
    ("rnn", {"activation": "tanh"}),
    ("rnn", {"activation": "relu"}),
    ("lstm", {}),
    ("lstm", {"forget_gate": False}),
    ("gru", {}),
]
IDS = ["rnn-tanh", "rnn-relu", "lstm", "lstm-no-forget", "gru"]


def problem(rng, name, options, T, B, D, H, dtype):
    spec = cells.cell_class(name)("fast", **options)
    params = {k: v.astype(dtype) for k, v in spec.init_parameters(rng, D, H, "uniform").items()}
    x = rng.standard_normal((T, B, D)).astype(dtype)
    state = tuple(rng.standard_normal((B, H)).astype(dtype) * 0.5 for _ in range(spec.state_parts))
    return spec, params, x, state[0] if spec.state_parts == 1 else state


def final_parts(final):
    return final if isinstance(final, tuple) else (final,)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("name", "options"), CELLS, ids=IDS)
def test_steps_one_at_a_time_give_the_bits_of_one_sequence_call(rng, name, options, dtype):
    T, B, D, H = 9, 3, 5, 11
    spec, params, x, state = problem(rng, name, options, T, B, D, H, dtype)
    hs, final, _ = spec.forward(params, x, state, None)
    assert_nontrivial(hs, 0.3 if options.get("activation") == "relu" else 0.5)
    stepper = fb.Stepper(name, params, **options)
    carried, outputs = state, []
    for t in range(T):
        h, carried, _ = stepper(x[t], carried)
        outputs.append(h)
    np.testing.assert_array_equal(np.stack(outputs), hs)
    for got, expected in zip(final_parts(carried), final_parts(final)):
        np.testing.assert_array_equal(got, expected)
    # several steps per call, and the forward-only kernels: the same bits
    h_few, carried, _ = stepper(x[:4], state)
    h_rest, carried, _ = stepper(x[4:], carried, inference=True)
    np.testing.assert_array_equal(np.concatenate([h_few, h_rest]), hs)
    for got, expected in zip(final_parts(carried), final_parts(final)):
        np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("name", "options"), CELLS, ids=IDS)
def test_a_sequence_has_the_same_bits_in_a_batch_of_any_size(rng, name, options, dtype):
    """Every element of the step products is its own chain of FMAs in k order, whatever rows a call covers (the
    register tile is wider for one to three rows): a sequence alone (B = 1, as a generator runs it) or with two or
    three others gives the outputs, dx and initial-state gradients it has in a batch of seven."""
    T, B, D, H = 6, 7, 5, 11
    spec, params, x, state = problem(rng, name, options, T, B, D, H, dtype)
    dhs = rng.standard_normal((T, B, H)).astype(dtype)

    def run(rows):
        part = tuple(s[rows] for s in state) if spec.state_parts == 2 else state[rows]
        hs, final, cache = spec.forward(params, np.ascontiguousarray(x[:, rows]), part, None)
        dx, dstate0, _ = spec.backward(params, cache, np.ascontiguousarray(dhs[:, rows]), None)
        return hs, final_parts(final), dx, final_parts(dstate0)

    whole = run(slice(0, B))
    for rows in (slice(0, 1), slice(3, 4), slice(6, 7), slice(1, 3), slice(4, 7)):
        hs, final, dx, dstate0 = run(rows)
        assert np.array_equal(hs, whole[0][:, rows]) and np.array_equal(dx, whole[2][:, rows])
        for mine, expected in zip((*final, *dstate0), (*whole[1], *whole[3])):
            assert np.array_equal(mine, expected[rows])
    assert_nontrivial(whole[0], min_active=0.3)  # relu zeroes about half


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("name", "options"), CELLS, ids=IDS)
def test_backward_step_by_step_matches_the_reference_sequence_backward(rng, name, options, dtype):
    T, B, D, H = 6, 2, 4, 7
    spec, params, x, state = problem(rng, name, options, T, B, D, H, dtype)
    reference = cells.cell_class(name)("reference", **options)
    params64 = {k: v.astype(np.float64) for k, v in params.items()}
    state64 = tuple(s.astype(np.float64) for s in final_parts(state))
    state64 = state64[0] if len(state64) == 1 else state64
    hs, _, cache = reference.forward(params64, x.astype(np.float64), state64, None)
    dhs = rng.standard_normal(hs.shape)
    dx_ref, dstate_ref, grads_ref = reference.backward(params64, cache, dhs, None)

    stepper = fb.Stepper(name, params, **options)
    carried, caches = state, []
    for t in range(T):
        _, carried, step_cache = stepper(x[t], carried)
        caches.append(step_cache)
    dstate, dxs, totals = None, [None] * T, None
    for t in reversed(range(T)):
        dxs[t], dstate, grads = stepper.backward(caches[t], dhs[t].astype(dtype), dstate)
        totals = grads if totals is None else {k: totals[k] + grads[k] for k in grads}
    assert_close(np.stack(dxs), dx_ref, dtype, "grads", "dx")
    for got, expected in zip(final_parts(dstate), final_parts(dstate_ref)):
        assert_close(got, expected, dtype, "grads", "dstate0")
    for key in grads_ref:
        assert_close(totals[key], grads_ref[key], dtype, "grads", key)


def test_the_stepper_keeps_a_copy_of_its_weights(rng):
    spec, params, x, state = problem(rng, "lstm", {}, 3, 2, 4, 5, np.float64)
    stepper = fb.Stepper("lstm", params)
    before, _, _ = stepper(x[0], state, inference=True)
    params["W_h"] *= 3.0  # the caller's array; the stepper holds its own
    after, _, _ = stepper(x[0], state, inference=True)
    np.testing.assert_array_equal(before, after)
    with pytest.raises(ValueError, match="read-only"):
        stepper.params["W_h"][0, 0] = 1.0


def test_an_output_backward_reads_cannot_be_edited(rng):
    _, params, x, state = problem(rng, "rnn", {}, 2, 2, 3, 4, np.float64)
    stepper = fb.Stepper("rnn", params)
    h, _, cache = stepper(x[0], state)
    with pytest.raises(ValueError, match="read-only"):
        h *= 2.0
    h_inference, _, none = stepper(x[0], state, inference=True)
    assert none is None and h_inference.flags.writeable  # nothing reads it later: the caller's own


def test_the_reference_backend_runs_a_stepper_without_packing(rng):
    spec, params, x, state = problem(rng, "gru", {}, 4, 2, 3, 5, np.float64)
    fast, reference = fb.Stepper("gru", params), fb.Stepper("gru", params, backend="reference")
    assert fast.packed is not None and reference.packed is None
    h_fast, _, _ = fast(x[0], state)
    h_reference, _, cache = reference(x[0], state)
    assert_close(h_fast, h_reference, np.float64, "outputs")
    dx, dh0, grads = reference.backward(cache, np.ones_like(h_reference))
    assert dx.shape == (2, 3) and dh0.shape == (2, 5) and set(grads) == {"W_x", "W_h", "b", "b_hn"}


def test_the_stepper_refuses_bad_arguments_by_name(rng):
    _, params, x, state = problem(rng, "lstm", {}, 2, 2, 3, 4, np.float64)
    with pytest.raises(ValueError, match="missing b"):
        fb.Stepper("lstm", {"W_x": params["W_x"], "W_h": params["W_h"]})
    with pytest.raises(ValueError, match="W_h: expected shape"):
        fb.Stepper("lstm", {**params, "W_h": params["W_h"][:3]})
    with pytest.raises(TypeError, match="dtype"):
        fb.Stepper("lstm", params, dtype=np.int32)
    stepper = fb.Stepper("lstm", params)
    with pytest.raises(TypeError, match="x: has dtype float32"):
        stepper(x[0].astype(np.float32), state)
    with pytest.raises(ValueError, match="x: expected"):
        stepper(x[0][:, :2], state)
    with pytest.raises(ValueError, match=r"state\[1\]: expected shape"):
        stepper(x[0], (state[0], state[1][:, :2]))
    with pytest.raises(TypeError, match="pair"):
        stepper(x[0], state[0])
    _, _, cache = stepper(x[0], state)
    with pytest.raises(TypeError, match="cache"):
        fb.Stepper("lstm", params).backward(cache, np.zeros((2, 4)))
    with pytest.raises(ValueError, match="dh: expected shape"):
        stepper.backward(cache, np.zeros((2, 3)))


@pytest.mark.parametrize("dtype", DTYPES)
def test_packed_weights_keep_the_bits_of_the_kernels(rng, dtype):
    spec, params, x, state = problem(rng, "lstm", {}, 7, 3, 5, 6, dtype)
    packed = spec.pack(params)
    hs, c_T, cache = fb.lstm_forward(x, params["W_x"], params["W_h"], params["b"], *state)
    hs_p, c_T_p, cache_p = fb.lstm_forward(x, params["W_x"], params["W_h"], params["b"], *state, packed=packed)
    np.testing.assert_array_equal(hs_p, hs)
    np.testing.assert_array_equal(c_T_p, c_T)
    dhs = rng.standard_normal(hs.shape).astype(dtype)
    for got, expected in zip(fb.lstm_backward(cache_p, dhs), fb.lstm_backward(cache, dhs)):
        np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("dtype", DTYPES)
def test_the_core_kernels_take_packed_weights_of_their_dtype_or_none(rng, dtype):
    """The kernels bound per dtype take their packed weights and handoffs as an instance or None (accepted without
    a second pass over the overloads); anything else, the other dtype's packing included, is a TypeError."""
    spec, params, x, (h0, c0) = problem(rng, "lstm", {}, 3, 2, 4, 5, dtype)
    arguments = (x, params["W_x"], params["W_h"], params["b"], h0, c0, True, np.zeros(0, np.int64))
    unpacked = _core.lstm_forward(*arguments)
    for packed in (spec.pack(params), None):
        outputs = _core.lstm_forward(*arguments, packed, None, None, None, None)
        for got, expected in zip(outputs, unpacked):
            np.testing.assert_array_equal(got, expected)
    other_dtype = np.float32 if dtype == np.float64 else np.float64
    other = spec.pack({k: v.astype(other_dtype) for k, v in params.items()})
    for wrong in (other, "packed", np.zeros(3, dtype)):
        with pytest.raises(TypeError, match="incompatible function arguments"):
            _core.lstm_forward(*arguments, wrong)
    with pytest.raises(TypeError, match="incompatible function arguments"):
        _core.lstm_forward(*arguments, None, None, None, spec.pack(params))  # a packing where a handoff goes


def test_packed_weights_of_another_cell_size_or_dtype_are_refused(rng):
    spec, params, x, state = problem(rng, "lstm", {}, 2, 2, 3, 4, np.float64)
    other = cells.cell_class("lstm")("fast").init_parameters(rng, 3, 5, "uniform")
    with pytest.raises(ValueError, match="packed: made from weights of other sizes"):
        fb.lstm_forward(x, params["W_x"], params["W_h"], params["b"], *state, packed=spec.pack(other))
    with pytest.raises(TypeError, match="packed: expected weights packed as float64"):
        as32 = {k: v.astype(np.float32) for k, v in params.items()}
        fb.lstm_forward(x, params["W_x"], params["W_h"], params["b"], *state, packed=spec.pack(as32))
    with pytest.raises(ValueError, match="checkpoint"):
        fb.lstm_forward(x, params["W_x"], params["W_h"], params["b"], *state, packed=spec.pack(params), checkpoint=1)
    gru = cells.cell_class("gru")("fast")
    gru_params = gru.init_parameters(rng, 3, 4, "uniform")
    with pytest.raises(ValueError, match="packed"):  # three packed matrices in other sizes than the LSTM's two
        fb.lstm_forward(x, params["W_x"], params["W_h"], params["b"], *state, packed=gru.pack(gru_params))
    assert isinstance(spec.pack(params), _core.PackedFloat64)
    # the same stacked depth split otherwise: a projecting LSTM's [W_x (10 rows); W_h (6 rows)] for a call of 8 + 8
    projecting = cells.cell_class("lstm")("fast", proj_size=6)
    other = {k: v for k, v in projecting.init_parameters(rng, 10, 8, "uniform").items()}
    plain = cells.cell_class("lstm")("fast").init_parameters(rng, 8, 8, "uniform")
    x8 = rng.standard_normal((2, 2, 8))
    with pytest.raises(ValueError, match=r"packed: made from weights of other sizes \(packed 10 \+ 6"):
        fb.lstm_forward(x8, plain["W_x"], plain["W_h"], plain["b"], packed=projecting.pack(other))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("name", "options"), CELLS, ids=IDS)
def test_step_kernels_give_the_sequence_bits_and_weight_gradients_from_their_rows(rng, name, options, dtype):
    T, B, D, H = 6, 3, 4, 7
    spec, params, x, state = problem(rng, name, options, T, B, D, H, dtype)
    hs, final, _ = spec.forward(params, x, state, None)
    stepper = fb.Stepper(name, params, **options)
    kernels = spec.step_kernels(stepper.params, stepper.packed)
    carried, records = final_parts(state), []
    for t in range(T):
        finals, record = kernels.forward(x[t : t + 1], *carried)
        np.testing.assert_array_equal(finals[0], hs[t])
        carried = tuple(part.copy() for part in finals)
        records.append(record)
    for got, expected in zip(carried, final_parts(final)):
        np.testing.assert_array_equal(got, expected)

    reference = cells.cell_class(name)("reference", **options)
    params64 = {k: v.astype(np.float64) for k, v in params.items()}
    state64 = tuple(s.astype(np.float64) for s in final_parts(state))
    _, _, cache = reference.forward(params64, x.astype(np.float64), state64[0] if len(state64) == 1 else state64, None)
    dhs = rng.standard_normal(hs.shape)
    dx_ref, dstate_ref, grads_ref = reference.backward(params64, cache, dhs, None)
    d_state, dxs, rows = [None] * len(carried), [None] * T, []
    for t in reversed(range(T)):
        d_final = list(d_state)
        d_final[0] = dhs[t].astype(dtype) if d_final[0] is None else d_final[0] + dhs[t].astype(dtype)
        dx, d_state, step_rows = kernels.backward(records[t], d_final, True)
        dxs[t] = dx[0]
        rows.append(step_rows)
    assert_close(np.stack(dxs), dx_ref, dtype, "grads", "dx")
    for got, expected in zip(d_state, final_parts(dstate_ref)):
        assert_close(got, expected, dtype, "grads", "dstate0")
    grads = spec.weight_gradients(params, *(np.concatenate(parts) for parts in zip(*rows)))
    assert set(grads) == set(grads_ref)
    for key in grads_ref:
        assert_close(grads[key], grads_ref[key], dtype, "grads", key)


@pytest.mark.parametrize("dtype", DTYPES)
def test_the_cores_transposed_product_is_numpys(rng, dtype):
    a, b = rng.standard_normal((37, 5)).astype(dtype), rng.standard_normal((37, 9)).astype(dtype)
    product = _core.transposed_product(a, b)
    assert product.shape == (5, 9) and product.dtype == dtype
    assert_close(product, a.astype(np.float64).T @ b.astype(np.float64), dtype, "grads", "aᵀb")
    np.testing.assert_array_equal(_core.transposed_product(a[:0], b[:0]), np.zeros((5, 9), dtype))
    with pytest.raises(ValueError, match="same number of rows"):
        _core.transposed_product(a, b[:-1])
