"""fastbptt.torch's step cells against torch.nn.RNNCell, LSTMCell and GRUCell (skipped without torch)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from conftest import torch_twins

torch = pytest.importorskip("torch", reason="torch is not installed (pip install torch==2.13.0 for these tests)")
fbt = pytest.importorskip("fastbptt.torch")

PAIRS = {
    "lstm": (fbt.LSTMCell, torch.nn.LSTMCell, {}),
    "gru": (fbt.GRUCell, torch.nn.GRUCell, {}),
    "rnn-tanh": (fbt.RNNCell, torch.nn.RNNCell, {"nonlinearity": "tanh"}),
    "rnn-relu": (fbt.RNNCell, torch.nn.RNNCell, {"nonlinearity": "relu"}),
}
DTYPES = [torch.float64, torch.float32]
# float64 against torch.nn in float64; float32 against torch.nn in float64 on the same float32 parameters
TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-4}


def twins(kind, D, H, dtype, **options):
    """A fastbptt module and a torch.nn module with one state_dict (ours in ``dtype``, theirs in float64)."""
    return torch_twins(PAIRS[kind], D, H, dtype=dtype, **options)


def unroll(cell, xs, hx):
    """The cell over the steps of xs, state carried; the loss mixes every output and state part."""
    loss, state = 0.0, hx
    for t in range(xs.shape[0]):
        state = cell(xs[t], state)
        parts = state if isinstance(state, tuple) else (state,)
        loss = loss + (parts[0] * (t + 1)).sin().sum() + sum(p.pow(2).sum() for p in parts[1:])
    return loss, state


def gradients(cell, xs, hx):
    xs = xs.clone().requires_grad_(True)
    hx = None if hx is None else tuple(h.clone().requires_grad_(True) for h in hx)
    cell.zero_grad()
    loss, state = unroll(cell, xs, hx if hx is None or len(hx) == 2 else hx[0])
    loss.backward()
    grads = [xs.grad, *(() if hx is None else (h.grad for h in hx)), *(p.grad for p in cell.parameters())]
    return loss.detach(), state, grads


def close(ours, theirs, dtype):
    ours, theirs = ours.detach(), theirs.detach()
    tolerance = TOLERANCE[dtype]
    scale = max(1.0, float(theirs.abs().max()))
    assert torch.allclose(ours.double(), theirs, rtol=tolerance, atol=tolerance * scale), (ours, theirs)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", list(PAIRS))
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("batched", [True, False])
@pytest.mark.parametrize("with_hx", [True, False])
def test_a_loop_of_steps_matches_torch_nn(kind, dtype, bias, batched, with_hx):
    D, H, T = 5, 7, 6
    ours, theirs = twins(kind, D, H, dtype, bias=bias)
    generator = torch.Generator().manual_seed(1)
    shape = (T, 3, D) if batched else (T, D)
    xs = torch.randn(shape, generator=generator, dtype=torch.float64)
    parts = 2 if kind == "lstm" else 1
    state_shape = (3, H) if batched else (H,)
    hx = tuple(torch.randn(state_shape, generator=generator, dtype=torch.float64) for _ in range(parts))
    hx = hx if with_hx else None
    loss_ours, state_ours, grads_ours = gradients(ours, xs.to(dtype), None if hx is None else [h.to(dtype) for h in hx])
    loss_theirs, state_theirs, grads_theirs = gradients(theirs, xs.to(dtype).double(), hx)
    close(loss_ours, loss_theirs, dtype)
    for a, b in zip(state_ours if parts == 2 else (state_ours,), state_theirs if parts == 2 else (state_theirs,)):
        assert a.dtype == dtype and a.shape == b.shape
        close(a, b, dtype)
    assert len(grads_ours) == len(grads_theirs)
    for a, b in zip(grads_ours, grads_theirs):
        assert a.dtype == dtype
        close(a, b, dtype)


@pytest.mark.parametrize("kind", list(PAIRS))
def test_the_weights_are_packed_again_after_every_change(kind):
    ours, theirs = twins(kind, 4, 5, torch.float64)
    xs = torch.randn(3, 2, 4, dtype=torch.float64)
    optimizer = torch.optim.SGD(ours.parameters(), lr=0.5)
    for _ in range(3):  # an optimizer's in-place step, then torch.nn given the weights it left
        optimizer.zero_grad()
        unroll(ours, xs, None)[0].backward()
        optimizer.step()
        theirs.load_state_dict(ours.state_dict())
        close(unroll(ours, xs, None)[0], unroll(theirs, xs, None)[0], torch.float64)
    with torch.no_grad():  # an edit without autograd
        ours.weight_hh.mul_(1.5)
        theirs.weight_hh.mul_(1.5)
    close(unroll(ours, xs, None)[0], unroll(theirs, xs, None)[0], torch.float64)
    ours.weight_ih.data = ours.weight_ih.data * 0.5  # new memory under the same Parameter
    theirs.weight_ih.data = theirs.weight_ih.data * 0.5
    close(unroll(ours, xs, None)[0], unroll(theirs, xs, None)[0], torch.float64)
    ours.load_state_dict(theirs.state_dict())  # copy_ into the same tensors
    close(unroll(ours, xs, None)[0], unroll(theirs, xs, None)[0], torch.float64)
    ours.float().double()  # new tensors via .to(), back to the dtype
    close(unroll(ours, xs, None)[0], unroll(theirs, xs.double(), None)[0], torch.float32)


def test_a_changed_nonlinearity_is_computed_with_the_weights_kept():
    ours, theirs = twins("rnn-tanh", 4, 5, torch.float64)
    xs = torch.randn(3, 2, 4, dtype=torch.float64)
    close(unroll(ours, xs, None)[0], unroll(theirs, xs, None)[0], torch.float64)
    for cell in (ours, theirs):
        cell.nonlinearity = "relu"
    close(unroll(ours, xs, None)[0], unroll(theirs, xs, None)[0], torch.float64)


@pytest.mark.parametrize("kind", list(PAIRS))
def test_in_place_edits_are_harmless_on_outputs_and_refused_on_inputs(kind):
    ours, theirs = twins(kind, 4, 5, torch.float64)
    x = torch.randn(2, 4, dtype=torch.float64)
    results = []
    for cell in (ours, theirs):
        cell.zero_grad()
        state = cell(x)
        first = state[0] if isinstance(state, tuple) else state
        if kind == "lstm":
            state[1].mul_(3.0)  # torch.nn's c' is not read by its backward either
        loss = (first * 2).sum()
        loss.backward()
        results.append([p.grad.clone() for p in cell.parameters()])
    for a, b in zip(*results):
        close(a, b, torch.float64)
    ours.zero_grad()
    x = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    out = ours(x)
    with torch.no_grad():
        ours.weight_hh.add_(1.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        (out[0] if isinstance(out, tuple) else out).sum().backward()


@pytest.mark.parametrize("kind", list(PAIRS))
def test_no_grad_runs_the_forward_only_kernels_with_the_same_bits(kind):
    ours, _ = twins(kind, 4, 5, torch.float32)
    x = torch.randn(3, 4)
    with_grad = ours(x)
    with torch.no_grad():
        without = ours(x)
    for a, b in zip(
        with_grad if isinstance(with_grad, tuple) else (with_grad,),
        without if isinstance(without, tuple) else (without,),
    ):
        assert torch.equal(a.detach(), b) and not b.requires_grad


@pytest.mark.parametrize("kind", list(PAIRS))
def test_what_fastbptt_cannot_run_is_torch_nn_s_own_call(kind):
    ours, theirs = twins(kind, 4, 5, torch.float32)
    theirs.float()
    parts = 2 if kind == "lstm" else 1
    bad_calls = [
        (torch.randn(2, 6), None),  # input size
        (torch.randn(3, 2, 4), None),  # 3-D input
        (torch.randn(2, 4), tuple(torch.randn(3, 5) for _ in range(parts))),  # batch of the state
        (torch.randn(2, 4), tuple(torch.randn(2, 6) for _ in range(parts))),  # state size
        (torch.randn(2, 4).double(), None),  # dtype
    ]
    for x, hx in bad_calls:
        hx = None if hx is None else (hx if parts == 2 else hx[0])
        with pytest.raises(Exception) as theirs_error:
            theirs(x, hx)
        with pytest.raises(type(theirs_error.value)) as ours_error:
            ours(x, hx)
        assert str(ours_error.value) == str(theirs_error.value)
    x = torch.randn(2, 4, dtype=torch.bfloat16)  # not fastbptt's: torch.nn computes it
    ours.to(torch.bfloat16)
    theirs.to(torch.bfloat16)
    for a, b in zip(*(c(x) if parts == 2 else (c(x),) for c in (ours, theirs))):
        assert torch.equal(a, b)


@pytest.mark.parametrize("kind", list(PAIRS))
def test_a_cell_is_a_torch_nn_cell_and_saves_and_loads_as_one(kind):
    ours_cls, theirs_cls, extra = PAIRS[kind]
    ours, theirs = twins(kind, 3, 4, torch.float32)
    assert isinstance(ours, theirs_cls)
    assert repr(ours) == repr(theirs)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    x = torch.randn(2, 3)
    ours(x)  # a kept Stepper must not stop the module from being pickled or copied
    buffer = io.BytesIO()
    torch.save(ours, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer)  # weights_only=True by default, as for torch.nn's cells
    assert type(loaded) is ours_cls
    first = lambda s: s[0] if isinstance(s, tuple) else s  # noqa: E731
    assert torch.equal(first(loaded(x)), first(ours(x)))
    import copy

    assert torch.equal(first(copy.deepcopy(ours)(x)), first(ours(x)))


def test_a_cell_is_exact_against_the_numpy_stepper():
    ours, _ = twins("lstm", 3, 4, torch.float64)
    import fastbptt as fb

    params = {
        "W_x": ours.weight_ih.detach().numpy().T,
        "W_h": ours.weight_hh.detach().numpy().T,
        "b": (ours.bias_ih + ours.bias_hh).detach().numpy(),
    }
    x = torch.randn(2, 3, dtype=torch.float64)
    h, c = ours(x)
    h_np, (_, c_np), _ = fb.Stepper("lstm", params)(x.numpy(), None)
    np.testing.assert_array_equal(h.detach().numpy(), h_np)
    np.testing.assert_array_equal(c.detach().numpy(), c_np)


def grads_of(cell, loss_of, inputs):
    """torch.autograd.grad of ``loss_of(cell)`` with respect to ``inputs(cell)`` (a list of tensors)."""
    return torch.autograd.grad(loss_of(cell), inputs(cell))


@pytest.mark.parametrize("kind", list(PAIRS))
def test_weight_gradients_added_up_at_the_end_of_each_pass_are_torch_nn_s(kind):
    """The weights' gradients come once per backward pass from every step's rows: passes that leave the weights
    out, that repeat, that add up, that fail halfway, or with a weight frozen and unfrozen, all give torch.nn's."""
    ours, theirs = twins(kind, 4, 5, torch.float64)
    xs = torch.randn(6, 2, 4, dtype=torch.float64)
    h0 = torch.randn(2, 5, dtype=torch.float64, requires_grad=True)

    def loss_of(cell, steps=6):
        state = (h0, torch.zeros(2, 5, dtype=torch.float64)) if kind == "lstm" else h0
        loss = 0.0
        for t in range(steps):
            state = cell(xs[t], state)
            loss = loss + (state[0] if kind == "lstm" else state).pow(2).sum()
        return loss

    # a pass that needs no weight gradient, then one that does
    for cell in (ours, theirs):
        torch.autograd.grad(loss_of(cell), [h0])
    expected = grads_of(theirs, loss_of, lambda c: list(c.parameters()))
    for a, b in zip(grads_of(ours, loss_of, lambda c: list(c.parameters())), expected):
        close(a, b, torch.float64)
    # two passes adding up into .grad, one of them twice through a retained graph
    results = []
    for cell in (ours, theirs):
        cell.zero_grad()
        loss_of(cell).backward()
        loss = loss_of(cell, steps=3)
        loss.backward(retain_graph=True)
        loss.backward()
        results.append([p.grad.clone() for p in cell.parameters()])
    for a, b in zip(*results):
        close(a, b, torch.float64)
    # a pass that fails halfway leaves nothing behind for the next one
    loss = loss_of(ours)
    with torch.no_grad():
        ours.weight_ih.add_(0.0)  # bumps the version: the steps refuse their backward
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()
    theirs.load_state_dict(ours.state_dict())
    expected = grads_of(theirs, loss_of, lambda c: list(c.parameters()))
    for a, b in zip(grads_of(ours, loss_of, lambda c: list(c.parameters())), expected):
        close(a, b, torch.float64)
    # a frozen weight, then unfrozen
    for requires in (False, True):
        for cell in (ours, theirs):
            cell.weight_hh.requires_grad_(requires)
        wanted = lambda c: [p for p in c.parameters() if p.requires_grad]  # noqa: E731
        for a, b in zip(grads_of(ours, loss_of, wanted), grads_of(theirs, loss_of, wanted)):
            close(a, b, torch.float64)


@pytest.mark.parametrize("kind", ["lstm", "rnn-tanh"])
def test_a_reentrant_checkpoint_and_accumulated_batches_give_torch_nn_s_gradients(kind):
    """A checkpoint's recomputation runs a backward pass inside another one; each pass forms its weight gradients
    from its own steps."""
    from torch.utils.checkpoint import checkpoint

    ours, theirs = twins(kind, 4, 5, torch.float64)
    xs = torch.randn(2, 6, 3, 4, dtype=torch.float64)
    for cell in (ours, theirs):
        for batch in range(2):  # two batches add up into .grad: the kept weights' token serves both

            def first_half(h, x, cell=cell):
                state = (h, torch.zeros_like(h)) if kind == "lstm" else h
                for t in range(3):
                    state = cell(x[t], state)
                return state[0] if kind == "lstm" else state

            h = checkpoint(first_half, torch.zeros(3, 5, dtype=torch.float64, requires_grad=True), xs[batch, :3],
                           use_reentrant=True)  # fmt: skip
            state = (h, torch.zeros_like(h)) if kind == "lstm" else h
            for t in range(3, 6):
                state = cell(xs[batch, t], state)
            (state[0] if kind == "lstm" else state).sin().sum().backward()
    for a, b in zip(ours.parameters(), theirs.parameters()):
        close(a.grad, b.grad, torch.float64)


def test_a_gradient_of_a_gradient_is_refused_by_name():
    """create_graph=True (a gradient to differentiate again) raises where the gradient would be silently wrong."""
    cell, _ = twins("gru", 3, 4, torch.float64)
    sequence = fbt.GRU(3, 4, dtype=torch.float64)
    x = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    for output in (cell(x), sequence(x[None])[0]):
        with pytest.raises(RuntimeError, match="fastbptt.torch computes first-order gradients only"):
            torch.autograd.grad(output.square().sum(), [x], create_graph=True)
        (first_order,) = torch.autograd.grad(output.square().sum(), [x])
        assert first_order.shape == x.shape


@pytest.mark.parametrize("edit", ["data", "numpy"])
@pytest.mark.parametrize("kind", PAIRS)
def test_weights_edited_behind_the_version_counter_are_the_ones_computed_with(kind, edit):
    # p.data.mul_ (manual SGD, weight clipping) and writes through NumPy leave the version as it was: the kept
    # packed weights must still follow the values, in grad mode and under no_grad.
    ours, theirs = twins(kind, 3, 4, torch.float64)
    x = torch.randn(2, 3, dtype=torch.float64)
    ours(x)  # the weights are packed
    for module in (ours, theirs):
        for name in ("weight_ih", "weight_hh"):
            weight = getattr(module, name)
            if edit == "data":
                weight.data.mul_(-0.5)
            else:
                weight.detach().numpy()[:] *= -0.5
    for grad_mode in (True, False):
        with torch.set_grad_enabled(grad_mode):
            got, expected = ours(x), theirs(x)
        got, expected = (got[0], expected[0]) if isinstance(got, tuple) else (got, expected)
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)


def test_gradcheck_of_a_weight_passed_in_by_functional_call():
    torch.manual_seed(0)
    cell = fbt.GRUCell(2, 3, dtype=torch.float64)
    W = cell.weight_ih.detach().clone().requires_grad_()
    x = torch.randn(2, 2, dtype=torch.float64, requires_grad=True)

    def step(x, W):
        return torch.func.functional_call(cell, {"weight_ih": W}, (x,), strict=False)

    assert torch.autograd.gradcheck(step, (x, W))


@pytest.mark.parametrize("kind", PAIRS)
def test_an_optimizer_step_between_forward_and_backward_is_allowed_where_torch_nn_allows_it(kind):
    # Neither the input nor the state wants a gradient: backward never multiplies by the weights, and torch.nn's
    # cells let them change before it; where the state wants one, both raise.
    grads = {}
    for module in twins(kind, 3, 4, torch.float64):
        optimizer = torch.optim.SGD(module.parameters(), lr=0.1)
        x, h = torch.randn(2, 3, dtype=torch.float64), torch.randn(2, 4, dtype=torch.float64)
        out = module(x, (h, h) if kind == "lstm" else h)
        out = out[0] if isinstance(out, tuple) else out
        for p in module.parameters():
            p.grad = torch.ones_like(p)
        optimizer.step()
        for p in module.parameters():
            p.grad = None
        out.pow(2).sum().backward()
        grads[type(module).__module__] = [p.grad for p in module.parameters()]
        h = h.clone().requires_grad_(True)
        out = module(x, (h, h) if kind == "lstm" else h)
        out = out[0] if isinstance(out, tuple) else out
        optimizer.step()
        with pytest.raises(RuntimeError, match="modified by an inplace operation"):
            out.pow(2).sum().backward()
    assert len(grads) == 2


@pytest.mark.parametrize("kind", PAIRS)
def test_an_empty_batch_gives_torch_nns_empty_result(kind):
    ours, theirs = twins(kind, 3, 4, torch.float64)
    got, expected = ours(torch.randn(0, 3, dtype=torch.float64)), theirs(torch.randn(0, 3, dtype=torch.float64))
    got, expected = (got[0], expected[0]) if isinstance(got, tuple) else (got, expected)
    assert got.shape == expected.shape == (0, 4)


@pytest.mark.parametrize("kind", PAIRS)
def test_torch_func_grad_and_vmap_run_as_torch_nns_cells(kind):
    ours, theirs = twins(kind, 3, 4, torch.float64)
    x = torch.randn(2, 3, dtype=torch.float64)
    results = []
    for module in (ours, theirs):
        params = {name: p.detach() for name, p in module.named_parameters()}

        def loss(p, module=module):
            out = torch.func.functional_call(module, p, (x,))
            return (out[0] if isinstance(out, tuple) else out).pow(2).sum()

        results.append(torch.func.grad(loss)(params))
    for name in results[1]:
        torch.testing.assert_close(results[0][name], results[1][name], rtol=1e-12, atol=1e-12)
