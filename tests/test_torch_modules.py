"""fastbptt.torch: drop-in torch.nn.RNN / LSTM / GRU modules (skipped without torch)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import torch_twins

import fastbptt as fb

torch = pytest.importorskip("torch", reason="torch is not installed (pip install torch==2.13.0 for these tests)")
fbt = pytest.importorskip("fastbptt.torch")

ROOT = Path(__file__).resolve().parents[1]
PAIRS = {
    "lstm": (fbt.LSTM, torch.nn.LSTM, {}),
    "rnn-tanh": (fbt.RNN, torch.nn.RNN, {"nonlinearity": "tanh"}),
    "rnn-relu": (fbt.RNN, torch.nn.RNN, {"nonlinearity": "relu"}),
    "gru": (fbt.GRU, torch.nn.GRU, {}),
}


def twins(kind, D, H, dtype, **options):
    """A fastbptt module and a torch.nn module with one state_dict (ours in ``dtype``, theirs in float64)."""
    return torch_twins(PAIRS[kind], D, H, dtype=dtype, **options)


def run(module, x, hx, upstream):
    """Output, final states and the gradients of sum(upstream * output) + sum(final states)."""
    x = x.clone().requires_grad_(True)
    hx = None if hx is None else tuple(h.clone().requires_grad_(True) for h in hx)
    output, finals = module(x, hx if hx is None or len(hx) == 2 else hx[0])
    finals = finals if isinstance(finals, tuple) else (finals,)
    loss = torch.sum(output * upstream.to(output.dtype)) + sum(torch.sum(f * f) for f in finals)
    loss.backward()
    grads = [x.grad] + ([] if hx is None else [h.grad for h in hx]) + [p.grad for p in module.parameters()]
    return [output, *finals], grads


@pytest.mark.parametrize("with_state", [False, True])
@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("kind", list(PAIRS))
def test_matches_torch_nn(kind, dtype, bias, batch_first, with_state):
    T, B, D, H = 7, 3, 5, 6
    ours, theirs = twins(kind, D, H, dtype, bias=bias, batch_first=batch_first)
    generator = torch.Generator().manual_seed(1)
    shape = (B, T, D) if batch_first else (T, B, D)
    x = torch.randn(*shape, generator=generator, dtype=torch.float64)
    upstream = torch.randn(*shape[:2], H, generator=generator, dtype=torch.float64)
    states = 2 if kind == "lstm" else 1
    hx = tuple(0.5 * torch.randn(1, B, H, generator=generator, dtype=torch.float64) for _ in range(states))
    hx = hx if with_state else None
    outputs, grads = run(ours, x.to(dtype), None if hx is None else tuple(h.to(dtype) for h in hx), upstream)
    expected_outputs, expected_grads = run(theirs, x, hx, upstream)
    # float64: 1e-10; float32 (against the float64 module): DESIGN.md's 1e-5 for outputs, 1e-4 for gradients.
    out_tol, grad_tol = (1e-10, 1e-10) if dtype == torch.float64 else (1e-5, 1e-4)
    for mine, theirs_value in zip(outputs, expected_outputs):
        assert mine.dtype == dtype
        np.testing.assert_allclose(
            mine.detach().double().numpy(), theirs_value.detach().numpy(), rtol=out_tol, atol=out_tol
        )
    for mine, theirs_value in zip(grads, expected_grads):
        np.testing.assert_allclose(mine.double().numpy(), theirs_value.numpy(), rtol=grad_tol, atol=grad_tol)


@pytest.mark.parametrize("kind", list(PAIRS))
def test_state_dict_round_trip_and_unbatched_input(kind):
    ours, theirs = twins(kind, 4, 5, torch.float64)
    theirs.load_state_dict(ours.state_dict())
    ours.load_state_dict(theirs.state_dict())
    assert list(ours.state_dict()) == list(theirs.state_dict())
    x = torch.randn(6, 4, dtype=torch.float64)  # [T, D]: torch's unbatched input
    out, finals = ours(x)
    expected, expected_finals = theirs(x)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    assert out.shape == (6, 5)


@pytest.mark.parametrize("kind", list(PAIRS))
def test_gradcheck(kind):
    ours, _ = twins(kind, 3, 4, torch.float64)
    x = torch.randn(5, 2, 3, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(1, 2, 4, dtype=torch.float64, requires_grad=True)
    if kind == "lstm":
        c0 = torch.randn(1, 2, 4, dtype=torch.float64, requires_grad=True)

        def f(x, h0, c0, *params):
            output, (h_n, c_n) = ours(x, (h0, c0))
            return output, h_n, c_n

        inputs = (x, h0, c0)
    else:

        def f(x, h0, *params):
            output, h_n = ours(x, h0)
            return output, h_n

        inputs = (x, h0)
    assert torch.autograd.gradcheck(f, (*inputs, *ours.parameters()), eps=1e-6, atol=1e-7)


def test_unused_outputs_and_inputs_without_grad():
    ours, theirs = twins("lstm", 3, 4, torch.float64)
    x = torch.randn(5, 2, 3, dtype=torch.float64)  # requires_grad=False
    output, _ = ours(x)
    output[-1].sum().backward()  # h_n and c_n unused
    expected, _ = theirs(x)
    expected[-1].sum().backward()
    for mine, theirs_p in zip(ours.parameters(), theirs.parameters()):
        torch.testing.assert_close(mine.grad, theirs_p.grad, rtol=1e-10, atol=1e-12)
    _, (h_n, c_n) = ours(x)
    c_n.sum().backward()  # only the cell state


def test_training_loop_matches_torch_nn_step_for_step():
    ours, theirs = twins("lstm", 4, 8, torch.float64)
    head_ours, head_theirs = torch.nn.Linear(8, 3).double(), torch.nn.Linear(8, 3).double()
    head_theirs.load_state_dict(head_ours.state_dict())
    opt_ours = torch.optim.SGD([*ours.parameters(), *head_ours.parameters()], lr=0.3, momentum=0.9)
    opt_theirs = torch.optim.SGD([*theirs.parameters(), *head_theirs.parameters()], lr=0.3, momentum=0.9)
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(10, 16, 4, generator=generator, dtype=torch.float64)
    y = torch.bucketize(x.sum(dim=(0, 2)), torch.tensor([-2.0, 2.0], dtype=torch.float64))  # learnable classes
    losses = []
    for module, head, opt in ((ours, head_ours, opt_ours), (theirs, head_theirs, opt_theirs)):
        trace = []
        for _ in range(20):
            opt.zero_grad()
            output, _ = module(x)
            loss = torch.nn.functional.cross_entropy(head(output[-1]), y)
            loss.backward()
            opt.step()
            trace.append(loss.item())
        losses.append(trace)
    np.testing.assert_allclose(losses[0], losses[1], rtol=1e-9)
    assert losses[0][-1] < 0.5 * losses[0][0]


def test_bias_gradients_do_not_share_memory():
    lstm = fbt.LSTM(3, 4)
    lstm(torch.randn(5, 2, 3))[0].sum().backward()
    before = lstm.bias_hh_l0.grad.clone()
    torch.nn.utils.clip_grad_norm_(lstm.parameters(), max_norm=1e-3)
    lstm.bias_ih_l0.grad.zero_()
    assert torch.any(lstm.bias_hh_l0.grad != 0)
    assert not torch.equal(lstm.bias_hh_l0.grad, before)  # clipped once, by its own factor


def test_no_copy_for_contiguous_tensors(monkeypatch):
    from fastbptt.kernels import functional as module

    seen = {}
    original = module.lstm_forward_checked  # what the module path calls: torch.nn's checks have run

    def spy(x, *args, **kwargs):
        seen["x"] = x
        return original(x, *args, **kwargs)

    monkeypatch.setattr(module, "lstm_forward_checked", spy)
    lstm = fbt.LSTM(3, 4)
    x = torch.randn(5, 2, 3)
    output, _ = lstm(x)
    assert np.shares_memory(seen["x"], x.numpy())
    assert output.dtype == torch.float32


def test_what_fastbptt_cannot_run_is_refused_by_name():
    half = fbt.LSTM(3, 4, dtype=torch.float16)  # torch.nn runs it; fastbptt computes in float32 or float64
    with pytest.raises(TypeError, match=r"input: expected a float32 or float64 tensor, got torch.float16"):
        half(torch.randn(5, 2, 3, dtype=torch.float16))


BAD_CONSTRUCTIONS = [
    ((3, 4), {"num_layers": 0}),
    ((3, 4), {"dropout": 1.5}),
    ((3, 4), {"dropout": "0.5"}),
    ((3, 4), {"bias": "False"}),
    ((3, 4), {"batch_first": 1}),
    ((0, 4), {}),
    ((3, 4.0), {}),
    ((3, 4), {"nonlinearity": "sigmoid"}),
    ((3, 4), {"proj_size": -1}),
]


@pytest.mark.parametrize(("args", "kwargs"), BAD_CONSTRUCTIONS)
@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn-tanh"])
def test_bad_constructor_arguments_raise_torch_nn_s_errors(kind, args, kwargs):
    ours_cls, theirs_cls, _ = PAIRS[kind]
    outcomes = []
    for cls in (theirs_cls, ours_cls):
        try:
            cls(*args, **kwargs)
            outcomes.append(None)
        except Exception as error:  # noqa: BLE001 - the point is to compare whatever torch.nn raises
            outcomes.append((type(error), str(error)))
    if outcomes[0] is None and kind == "lstm" and "proj_size" in kwargs:
        pytest.fail("torch.nn accepted a negative proj_size")
    assert outcomes[1] == outcomes[0]


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn-tanh"])
def test_bad_forward_arguments_raise_torch_nn_s_errors(kind):
    ours, theirs = twins(kind, 3, 4, torch.float32)
    theirs.float()
    two = kind == "lstm"

    def state(*shape):
        return (torch.zeros(shape), torch.zeros(shape)) if two else torch.zeros(shape)

    calls = [
        (torch.randn(5, 2, 3, 1),),  # 4-D input
        (torch.randn(5, 2, 7),),  # wrong input size
        (torch.randn(5, 2, 3, dtype=torch.float64),),  # dtype of the input differs from the weights'
        (torch.randn(5, 2, 3), state(2, 2, 4)),  # wrong number of layers in the state
        (torch.randn(5, 2, 3), state(1, 3, 4)),  # wrong batch in the state
        (torch.randn(5, 2, 3), state(2, 4)),  # 2-D state for batched input
        (torch.randn(5, 3), state(1, 1, 4)),  # 3-D state for unbatched input
    ]
    for args in calls:
        outcomes = []
        for module in (theirs, ours):
            try:
                module(*args)
                outcomes.append(None)
            except Exception as error:  # noqa: BLE001
                outcomes.append((type(error), str(error)))
        assert outcomes[0] is not None, "torch.nn accepted it: the case tests nothing"
        assert outcomes[1] == outcomes[0]


def packed_run(module, x, lengths, hx, upstream, packed):
    """Like run(), for padded input with per-sequence lengths, given to the module packed (or, for a padded run
    of a one-layer module, padded, where lengths do not apply). Outputs past a length are compared as zeros."""
    x = x.clone().requires_grad_(True)
    hx = None if hx is None else tuple(h.clone().requires_grad_(True) for h in hx)
    source = torch.nn.utils.rnn.pack_padded_sequence(x, lengths, enforce_sorted=False) if packed else x
    output, finals = module(source, hx if hx is None or len(hx) == 2 else hx[0])
    if packed:
        output, _ = torch.nn.utils.rnn.pad_packed_sequence(output, total_length=x.shape[0])
    finals = finals if isinstance(finals, tuple) else (finals,)
    loss = torch.sum(output * upstream.to(output.dtype)) + sum(torch.sum(f * f) for f in finals)
    loss.backward()
    grads = [x.grad] + ([] if hx is None else [h.grad for h in hx]) + [p.grad for p in module.parameters()]
    return [output, *finals], grads


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn-tanh"])
def test_stacked_bidirectional_and_packed_match_torch_nn(kind, dtype, num_layers, bidirectional, packed):
    T, B, D, H = 7, 6, 5, 4
    lengths = [2, 7, 1, 5, 5, 1]  # unsorted, with ties and length 1
    ours, theirs = twins(kind, D, H, dtype, num_layers=num_layers, bidirectional=bidirectional)
    generator = torch.Generator().manual_seed(2)
    x = torch.randn(T, B, D, generator=generator, dtype=torch.float64)
    directions = 2 if bidirectional else 1
    upstream = torch.randn(T, B, directions * H, generator=generator, dtype=torch.float64)
    hx = tuple(
        0.5 * torch.randn(num_layers * directions, B, H, generator=generator, dtype=torch.float64)
        for _ in range(2 if kind == "lstm" else 1)
    )
    outputs, grads = packed_run(ours, x.to(dtype), lengths, tuple(h.to(dtype) for h in hx), upstream, packed)
    expected_outputs, expected_grads = packed_run(theirs, x, lengths, hx, upstream, packed)
    out_tol, grad_tol = (1e-10, 1e-10) if dtype == torch.float64 else (1e-5, 1e-4)
    assert len(outputs) == len(expected_outputs) and len(grads) == len(expected_grads)
    for mine, theirs_value in zip(outputs, expected_outputs):
        assert mine.shape == theirs_value.shape
        np.testing.assert_allclose(
            mine.detach().double().numpy(), theirs_value.detach().numpy(), rtol=out_tol, atol=out_tol
        )
    for mine, theirs_value in zip(grads, expected_grads):
        np.testing.assert_allclose(mine.double().numpy(), theirs_value.numpy(), rtol=grad_tol, atol=grad_tol)
    if packed:  # outputs beyond each length are zero, as torch pads them
        for b, length in enumerate(lengths):
            assert torch.all(outputs[0][length:, b] == 0)


def test_dropout_between_layers_acts_only_in_training():
    ours, theirs = twins("lstm", 3, 4, torch.float64, num_layers=3, dropout=0.5)
    x = torch.randn(6, 2, 3, dtype=torch.float64)
    ours.eval()
    theirs.eval()
    torch.testing.assert_close(ours(x)[0], theirs(x)[0], rtol=1e-12, atol=1e-12)
    ours.train()
    torch.manual_seed(0)
    trained, _ = ours(x)
    assert not torch.allclose(trained, theirs(x)[0])  # a different function: some activations were dropped
    trained.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in ours.parameters())


def test_importing_fastbptt_does_not_import_torch():
    code = "import sys, fastbptt; assert 'torch' not in sys.modules, 'torch was imported'"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn-tanh"])
def test_a_parametrized_weight_is_read_at_every_call_as_in_torch_nn(kind):
    """weight_norm makes weight_hh_l0 a value computed from two parameters; after those change (an optimizer step)
    the module must run on the new value, as torch.nn does, and pass the gradients on to the two parameters."""
    ours, theirs = twins(kind, 5, 7, torch.float64, num_layers=2)
    for module in (ours, theirs):
        torch.nn.utils.parametrizations.weight_norm(module, "weight_hh_l0")
    x, upstream = torch.randn(6, 3, 5, dtype=torch.float64), torch.randn(6, 3, 7, dtype=torch.float64)
    for _ in range(2):
        (out_ours, *_), grads_ours = run(ours, x, None, upstream)
        (out_theirs, *_), grads_theirs = run(theirs, x, None, upstream)
        torch.testing.assert_close(out_ours, out_theirs, rtol=1e-12, atol=1e-12)
        for got, want in zip(grads_ours, grads_theirs):
            torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
        with torch.no_grad():
            for module in (ours, theirs):
                for p in module.parameters():
                    p -= 0.5 * p.grad
                module.zero_grad()


def test_distributed_data_parallel_matches_one_process(tmp_path):
    script = ROOT / "examples" / "torch_ddp.py"
    if not script.exists():
        pytest.skip("needs examples/torch_ddp.py from the source tree")
    if not torch.distributed.is_available():
        pytest.skip("this torch build has no torch.distributed")
    done = subprocess.run(
        [sys.executable, str(script), "--out", str(tmp_path)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    rank0, rank1, single = (np.load(tmp_path / f"{name}.npz") for name in ("rank0", "rank1", "single"))
    for name in single.files:
        np.testing.assert_array_equal(rank0[name], rank1[name])
        np.testing.assert_allclose(rank0[name], single[name], rtol=1e-10, atol=1e-14)


@pytest.mark.skipif("OpenMP" not in fb.build_info()["threading"], reason="this build has no OpenMP")
@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn-tanh"])
def test_bidirectional_modules_give_the_one_thread_bits_at_two_threads(kind):
    """The module runs through the layers' stack driver: its two directions run side by side, one thread each."""
    ours, _ = twins(kind, 24, 48, torch.float32, num_layers=2, bidirectional=True)
    x = torch.randn(15, 32, 24)
    lengths = torch.tensor(sorted(np.random.default_rng(0).integers(1, 16, 32), reverse=True))

    def run():
        ours.zero_grad()
        xi = x.clone().requires_grad_(True)
        packed = torch.nn.utils.rnn.pack_padded_sequence(xi, lengths)
        output, finals = ours(packed)
        padded, _ = torch.nn.utils.rnn.pad_packed_sequence(output)
        finals = finals if isinstance(finals, tuple) else (finals,)
        (padded.square().sum() + sum(f.sum() for f in finals)).backward()
        return [padded.detach(), *(f.detach() for f in finals), xi.grad, *(p.grad for p in ours.parameters())]

    saved = fb.get_num_threads()
    try:
        fb.set_num_threads(1)
        single = run()
        fb.set_num_threads(2)
        first, second = run(), run()
    finally:
        fb.set_num_threads(saved)
    for a, b, c in zip(first, second, single):
        assert torch.equal(a, b) and torch.equal(a, c)


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn-relu"])
def test_module_and_numpy_layer_give_the_same_bits(kind):
    """One stack driver: a module and a NumPy layer holding the same parameters compute the same bits."""
    ours, _ = twins(kind, 5, 6, torch.float64, num_layers=2, bidirectional=True)
    layer_kind, options = {"lstm": (fb.LSTM, {}), "gru": (fb.GRU, {}), "rnn-relu": (fb.RNN, {"activation": "relu"})}[
        kind
    ]
    layer = layer_kind(5, 6, num_layers=2, bidirectional=True, dtype=np.float64, **options)
    cells = [(layer_index, direction) for layer_index in range(2) for direction in range(2)]
    for layer_index, direction in cells:
        suffix = f"_l{layer_index}" + ("_reverse" if direction else "")
        cell = ours._cell()
        params = cell.from_torch({t: getattr(ours, t + suffix).detach().numpy() for t in cell.torch_parameters})
        for base in layer.cell.parameter_names:
            layer.params[base + layer.suffix(layer_index, direction)][...] = params[base]
    x = torch.randn(7, 3, 5, dtype=torch.float64, requires_grad=True)
    output, _ = ours(x)
    output.backward(torch.ones_like(output))
    outputs, _ = layer.forward(x.detach().numpy())
    dx, _ = layer.backward(np.ones(outputs.shape))
    assert np.array_equal(output.detach().numpy(), outputs)
    assert np.array_equal(x.grad.numpy(), dx)
    recurrent = layer.cell.parameter_names[1]
    for layer_index, direction in cells:
        suffix = f"_l{layer_index}" + ("_reverse" if direction else "")
        mine = getattr(ours, "weight_hh" + suffix).grad.numpy().T
        assert np.array_equal(mine, layer.grads[recurrent + layer.suffix(layer_index, direction)])


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn-relu"])
def test_modules_are_torch_nn_modules_to_every_check(kind, tmp_path):
    ours, theirs = twins(kind, 3, 4, torch.float64, num_layers=2, bidirectional=True)
    theirs_cls = PAIRS[kind][1]
    assert isinstance(ours, theirs_cls) and isinstance(ours, torch.nn.RNNBase)
    assert repr(ours).replace(type(ours).__module__ + ".", "") == repr(theirs).replace("torch.nn.", "")
    assert ours.extra_repr() == theirs.extra_repr()
    assert [w.shape for layer in ours.all_weights for w in layer] == [
        w.shape for layer in theirs.all_weights for w in layer
    ]
    assert all(a is b for a, b in zip(ours._flat_weights, ours.parameters()))
    ours.flatten_parameters()  # scripts call it after loading; a no-op on the CPU, as in torch.nn
    assert type(ours.float()) is type(ours) and ours.weight_hh_l0.dtype == torch.float32
    assert ours.double().weight_hh_l0.dtype == torch.float64
    theirs.float().double()  # the same rounding of the weights on both sides
    x = torch.randn(6, 2, 3, dtype=torch.float64)
    # Whole-model checkpoints load with torch.load's default weights_only=True wherever the same model holding
    # torch.nn's module does (the same allow-list: fastbptt.torch allow-lists its own classes).
    torch.save(torch.nn.Sequential(torch.nn.Identity(), theirs), tmp_path / "theirs.pt")
    torch.save(torch.nn.Sequential(torch.nn.Identity(), ours), tmp_path / "ours.pt")
    with torch.serialization.safe_globals([torch.nn.Sequential, torch.nn.Identity, theirs_cls]):
        torch.load(tmp_path / "theirs.pt")
        loaded = torch.load(tmp_path / "ours.pt")
    torch.save(ours, tmp_path / "module.pt")
    assert type(torch.load(tmp_path / "module.pt")) is type(ours)  # no allow-list needed for the module alone
    loaded[1].flatten_parameters()
    assert type(loaded[1]) is type(ours)
    torch.testing.assert_close(loaded(x)[0], theirs(x)[0], rtol=1e-12, atol=1e-12)
    theirs.load_state_dict(loaded[1].state_dict())
    ours.load_state_dict(theirs.state_dict())


def pytorch_module_db():
    pytest.importorskip("expecttest", reason="torch's test helpers need expecttest (pip install expecttest)")
    from torch.testing._internal import common_modules

    return common_modules


def test_pytorch_s_error_inputs_are_refused_as_torch_nn_refuses_them():
    pytorch_module_db()
    from fastbptt.cli.bench import error_inputs_refused_as_torch_nn

    total, failures = error_inputs_refused_as_torch_nn(torch, fbt)
    assert total >= 42 and failures == []


@pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN")  # torch.nn's own
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
def test_pytorch_s_module_samples_match_torch_nn(dtype):
    """Every sample of PyTorch's own RNN/GRU/LSTM tests (projections included): outputs, and the gradients of the
    inputs and parameters of a loss over every output."""
    common = pytorch_module_db()
    matched, projected, samples = 0, 0, 0
    tolerance = 1e-10 if dtype == torch.float64 else 1e-5
    for info in common.module_db:
        if info.module_cls not in (torch.nn.RNN, torch.nn.GRU, torch.nn.LSTM):
            continue
        ours_cls = getattr(fbt, info.module_cls.__name__)
        for sample in info.module_inputs_func(info, device="cpu", dtype=dtype, requires_grad=True, training=True):
            samples += 1
            args, kwargs = sample.constructor_input.args, sample.constructor_input.kwargs
            torch.manual_seed(0)
            theirs = info.module_cls(*args, **kwargs).to(dtype)
            ours = ours_cls(*args, **kwargs).to(dtype)
            ours.load_state_dict(theirs.state_dict())
            assert sample.forward_input is not None
            results = []
            for module in (theirs, ours):
                inputs = [
                    a.detach().clone().requires_grad_(a.requires_grad) if torch.is_tensor(a) else a
                    for a in sample.forward_input.args
                ]
                output = module(*inputs, **sample.forward_input.kwargs)
                tensors = [t for t in torch.utils._pytree.tree_leaves(output) if torch.is_tensor(t)]
                sum(t.sin().sum() for t in tensors).backward()
                grads = [a.grad for a in inputs if torch.is_tensor(a) and a.requires_grad]
                results.append((tensors, grads, [p.grad for p in module.parameters()]))
            for expected, actual in zip(*results):
                torch.testing.assert_close(actual, expected, rtol=tolerance, atol=tolerance)
            matched += 1
            projected += bool(kwargs.get("proj_size", 0))
    assert matched == samples and projected > 0
    print(f"{matched} of {samples} samples match torch.nn, {projected} of them with proj_size")


def kernel_spy(monkeypatch, cell):
    """Records the arguments by name of every forward and backward kernel call of ``cell`` ("lstm", "gru", "rnn")
    that the module path makes (the checked kernels: torch.nn's checks have run)."""
    import inspect

    from fastbptt.kernels import functional

    calls = []
    for name in (f"{cell}_forward_checked", f"{cell}_backward_checked"):
        kernel = getattr(functional, name)

        def spy(*args, kernel=kernel, name=name, **kwargs):
            calls.append((name, inspect.signature(kernel).bind(*args, **kwargs).arguments))
            return kernel(*args, **kwargs)

        monkeypatch.setattr(functional, name, spy)
    return calls


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn-relu"])
def test_no_grad_and_inference_mode_run_the_forward_only_kernels_with_the_training_bits(kind, monkeypatch):
    ours, _ = twins(kind, 3, 4, torch.float32, num_layers=2, bidirectional=True)
    x = torch.randn(6, 2, 3)
    trained = ours(x)
    calls = kernel_spy(monkeypatch, kind.split("-")[0])
    with torch.no_grad():
        inferred = ours(x)
    with torch.inference_mode():
        in_inference_mode = ours(x)
    frozen_input = ours.requires_grad_(False)(x)  # nothing requires grad: no backward can follow
    assert calls and all(options.get("inference") for _, options in calls)
    for outputs in (inferred, in_inference_mode, frozen_input):
        for mine, expected in zip(torch.utils._pytree.tree_leaves(outputs), torch.utils._pytree.tree_leaves(trained)):
            assert torch.equal(mine, expected) and not mine.requires_grad


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn-tanh"])
def test_backward_skips_dx_of_an_input_without_grad_and_the_gradients_of_frozen_layers(kind, monkeypatch):
    ours, theirs = twins(kind, 3, 4, torch.float64, num_layers=2)
    x = torch.randn(6, 2, 3, dtype=torch.float64)
    for module in (ours, theirs):
        for name, parameter in module.named_parameters():
            parameter.requires_grad_(name.endswith("_l1"))  # layer 0 frozen
    calls = kernel_spy(monkeypatch, kind.split("-")[0])
    upstream = torch.randn(6, 2, 4, dtype=torch.float64)
    (torch.sum(ours(x)[0] * upstream)).backward()
    (torch.sum(theirs(x)[0] * upstream)).backward()
    backward = [options for name, options in calls if name.endswith("backward_checked")]
    # layer 1 needs dx (it feeds layer 0); layer 0 (frozen, its input without grad) computes neither. At two
    # threads the layers' backward calls run side by side (a wavefront), so they may start in either order.
    assert sorted((o["need_dx"], o["need_weight_grads"]) for o in backward) == [(False, False), (True, True)]
    for (name, mine), (_, expected) in zip(ours.named_parameters(), theirs.named_parameters()):
        if name.endswith("_l1"):
            np.testing.assert_allclose(mine.grad.numpy(), expected.grad.numpy(), rtol=1e-10, atol=1e-12)
        else:
            assert mine.grad is None and expected.grad is None


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_a_loss_on_the_final_state_alone_gives_torch_nn_s_gradients(kind):
    ours, theirs = twins(kind, 3, 4, torch.float64)
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    for module in (ours, theirs):
        finals = module(x)[1]
        h_n = finals[0] if isinstance(finals, tuple) else finals
        h_n.pow(2).sum().backward()  # the output has no gradient: backward gets None for it
    for mine, expected in zip(ours.parameters(), theirs.parameters()):
        np.testing.assert_allclose(mine.grad.numpy(), expected.grad.numpy(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("batch_first", [False, True])
def test_a_projected_stacked_bidirectional_lstm_on_packed_sequences_matches_torch_nn(batch_first):
    ours, theirs = torch_twins(
        PAIRS["lstm"], 5, 7, dtype=torch.float64, proj_size=3, num_layers=2, bidirectional=True,
        batch_first=batch_first,
    )  # fmt: skip
    generator = torch.Generator().manual_seed(3)
    sequences = [torch.randn(n, 5, generator=generator, dtype=torch.float64) for n in (6, 2, 5)]
    hx = (0.3 * torch.randn(4, 3, 3, dtype=torch.float64), 0.3 * torch.randn(4, 3, 7, dtype=torch.float64))
    results = []
    for module in (ours, theirs):
        leaves = [s.clone().requires_grad_(True) for s in sequences]
        state = tuple(h.clone().requires_grad_(True) for h in hx)
        packed = torch.nn.utils.rnn.pack_sequence(leaves, enforce_sorted=False)
        output, (h_n, c_n) = module(packed, state)
        padded, _ = torch.nn.utils.rnn.pad_packed_sequence(output, batch_first=batch_first)
        (padded.sin().sum() + h_n.square().sum() + c_n.sum()).backward()
        results.append([padded, h_n, c_n, *(s.grad for s in leaves), *(h.grad for h in state)])
        results[-1] += [p.grad for p in module.parameters()]
    assert results[0][0].shape[-1] == 6 and results[0][1].shape == (4, 3, 3)
    for actual, expected in zip(*results):
        torch.testing.assert_close(actual, expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("bidirectional", [False, True])
def test_dropout_between_projected_layers_draws_torch_nns_masks(bidirectional):
    # The masks have the layers' output features: proj_size, not hidden_size.
    options = {"num_layers": 2, "proj_size": 2, "dropout": 0.5, "bidirectional": bidirectional}
    ours, theirs = twins("lstm", 3, 8, torch.float64, **options)
    x = torch.randn(5, 4, 3, dtype=torch.float64)
    results = []
    for module in (ours, theirs):
        torch.manual_seed(1)
        output, _ = module(x)
        output.sum().backward()
        results.append([output, *(p.grad for p in module.parameters())])
    for got, expected in zip(*results):
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kind", PAIRS)
def test_empty_inputs_and_states_of_another_dtype_get_torch_nns_answer(kind):
    ours, theirs = twins(kind, 3, 4, torch.float32)
    theirs.float()
    empty_batch = torch.randn(5, 0, 3)
    assert ours(empty_batch)[0].shape == theirs(empty_batch)[0].shape == (5, 0, 4)
    for module in (ours, theirs):
        with pytest.raises(RuntimeError, match="sequence length"):
            module(torch.randn(0, 2, 3))
        h0 = torch.zeros(1, 2, 4, dtype=torch.float64)
        with pytest.raises(RuntimeError):
            module(torch.randn(5, 2, 3), (h0, h0) if kind == "lstm" else h0)


@pytest.mark.parametrize("kind", PAIRS)
def test_torch_func_grad_of_a_functional_call_is_torch_nns(kind):
    ours, theirs = twins(kind, 3, 4, torch.float64)
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    grads = []
    for module in (ours, theirs):
        params = {name: p.detach() for name, p in module.named_parameters()}
        loss = lambda p, module=module: torch.func.functional_call(module, p, (x,))[0].pow(2).sum()  # noqa: E731
        grads.append(torch.func.grad(loss)(params))
    for name in grads[1]:
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-12, atol=1e-12)
