"""A cell that exists only here runs through everything that knows no cell by name.

The scaled-tanh RNN ``h_t = a * tanh(x_t W_x + h_{t-1} W_h + b)`` is registered with kernels written in NumPy
below; the layers (stacked, both directions, lengths, batch_first), the sequence model and fastbptt.torch run it
from its specification alone. Checks: its one-step kernel against the equation, the layers' gradients against
central finite differences (float64), and, with torch, fastbptt.torch's module against a torch autograd
composition of the equation written here, and against the NumPy layer bit for bit.
"""

from __future__ import annotations

import io
from typing import ClassVar, NamedTuple

import numpy as np
import pytest

import fastbptt as fb
from fastbptt.kernels import cells
from fastbptt.training.layers import Recurrent

T, B, D, H = 6, 4, 3, 5
LENGTHS = np.array([6, 2, 4, 1])


class ScaledTanhCache(NamedTuple):
    x: np.ndarray
    W_x: np.ndarray
    W_h: np.ndarray
    h0: np.ndarray
    hs: np.ndarray
    scale: float
    lengths: np.ndarray | None


class ScaledTanhRNN(cells.Cell):
    """``h_t = scale * tanh(x_t W_x + h_{t-1} W_h + b)``, in NumPy (whatever the backend)."""

    name = "scaled-tanh-test-only"
    option_defaults: ClassVar[dict] = {"scale": 0.9}

    def checked_options(self, options):
        return {"scale": float(options["scale"])}

    def parameter_shapes(self, D, H):
        return {"W_x": (D, H), "W_h": (H, H), "b": (H,)}

    def init_parameters(self, rng, D, H, scheme, **init_options):
        bound = 1 / np.sqrt(H)
        return {name: rng.uniform(-bound, bound, shape) for name, shape in self.parameter_shapes(D, H).items()}

    def forward(self, p, x, h0, lengths, inference=False):
        steps, batch, _ = x.shape
        h = np.zeros((batch, p["W_h"].shape[0]), x.dtype) if h0 is None else h0
        h0, hs = h, np.zeros((steps, batch, h.shape[1]), x.dtype)
        running = np.ones(batch, bool)
        for t in range(steps):
            if lengths is not None:
                running = t < lengths
            h_new = self.options["scale"] * np.tanh(x[t] @ p["W_x"] + h @ p["W_h"] + p["b"])
            hs[t] = np.where(running[:, None], h_new, 0)
            h = np.where(running[:, None], h_new, h)
        cache = None if inference else ScaledTanhCache(x, p["W_x"], p["W_h"], h0, hs, self.options["scale"], lengths)
        return hs, h.copy(), cache

    def backward(self, p, cache, dhs, dh_T, need_dx=True, need_weight_grads=True):
        dhs = cells.with_final_state_gradient(dhs, dh_T, cache.hs, cache.lengths)
        steps, batch, _ = cache.x.shape
        grads = {name: np.zeros_like(p[name]) for name in self.parameter_names}
        dx, carry = np.zeros_like(cache.x), np.zeros_like(cache.h0)
        for t in reversed(range(steps)):
            running = np.ones(batch, bool) if cache.lengths is None else t < cache.lengths
            h, h_prev = cache.hs[t], (cache.hs[t - 1] if t else cache.h0)
            dh = np.where(running[:, None], dhs[t] + carry, 0)
            dz = dh * cache.scale * (1 - (h / cache.scale) ** 2)
            grads["W_x"] += cache.x[t].T @ dz
            grads["W_h"] += h_prev.T @ dz
            grads["b"] += dz.sum(axis=0)
            dx[t] = dz @ cache.W_x.T
            carry = np.where(running[:, None], dz @ cache.W_h.T, carry)
        return (dx if need_dx else None), carry, (grads if need_weight_grads else None)

    def state_at(self, cache, step):
        return cache.h0.copy() if step == 0 else cache.hs[step - 1].copy()

    def from_torch(self, tensors):
        bias = (
            tensors["bias_ih"] + tensors["bias_hh"]
            if tensors.get("bias_ih") is not None
            else 0 * tensors["weight_hh"][:, 0]
        )
        return {"W_x": tensors["weight_ih"].T, "W_h": tensors["weight_hh"].T, "b": bias}

    def to_torch_grads(self, grads, has_bias):
        biases = (grads["b"], grads["b"].copy()) if has_bias else (None, None)
        return [grads["W_x"].T, grads["W_h"].T, *biases]


@pytest.fixture
def registered():
    cells.register(ScaledTanhRNN)
    yield ScaledTanhRNN.name
    cells.unregister(ScaledTanhRNN.name)


def test_registry_refuses_what_is_not_a_named_cell_and_a_taken_name(registered):
    assert registered in cells.names() and cells.cell_class(registered) is ScaledTanhRNN
    with pytest.raises(TypeError, match="subclass of Cell"):
        cells.register(object)
    with pytest.raises(ValueError, match="registered already"):
        cells.register(type("Other", (ScaledTanhRNN,), {}))
    with pytest.raises(TypeError, match="unexpected keyword argument.* radius .*cell's options: scale"):
        Recurrent(registered, D, H, radius=2.0)
    with pytest.raises(TypeError, match="unexpected keyword argument.* num_layer "):
        fb.GRU(D, H, num_layer=2)


def test_the_test_cell_s_kernel_is_its_equation(registered):
    rng = np.random.default_rng(0)
    layer = Recurrent(registered, D, H, dtype=np.float64, seed=0, scale=0.7)
    x = rng.standard_normal((1, B, D))
    outputs, final = layer.forward(x)
    p = layer.params
    np.testing.assert_allclose(outputs[0], 0.7 * np.tanh(x[0] @ p["W_x"] + p["b"]), rtol=1e-14)
    assert np.array_equal(final, outputs[0])


def loss_of(outputs, finals, weights):
    return float(np.sum(outputs * weights[0]) + np.sum(finals * weights[1]))


@pytest.mark.parametrize("backend", ["fast", "reference"])
@pytest.mark.parametrize("batch_first", [False, True])
def test_layers_stack_directions_lengths_and_gradients(registered, backend, batch_first):
    rng = np.random.default_rng(1)
    options = {"num_layers": 2, "bidirectional": True, "batch_first": batch_first, "dtype": np.float64}
    layer = Recurrent(registered, D, H, backend=backend, seed=2, **options)
    x = rng.standard_normal((B, T, D) if batch_first else (T, B, D))
    state = 0.3 * rng.standard_normal((4, B, H))
    outputs, finals = layer.forward(x, state, lengths=LENGTHS)
    assert outputs.shape == ((B, T, 2 * H) if batch_first else (T, B, 2 * H)) and finals.shape == (4, B, H)
    time_major = np.swapaxes(outputs, 0, 1) if batch_first else outputs
    assert np.all(time_major[LENGTHS[1] :, 1] == 0) and np.abs(time_major[: LENGTHS[1], 1]).min() > 0
    # The forward direction's final state is its output at each sequence's last step; the reverse direction's is
    # its output at step 0 (it runs each sequence from its own end).
    last = time_major[LENGTHS - 1, np.arange(B)]
    assert np.array_equal(finals[2], last[:, :H]) and np.array_equal(finals[3], time_major[0, :, H:])
    weights = (rng.standard_normal(outputs.shape), rng.standard_normal(finals.shape))
    layer.zero_grad()
    dx, dstate = layer.backward(weights[0], weights[1])

    def loss(**changed):
        probe = Recurrent(registered, D, H, backend=backend, **options)
        probe.params = {name: changed.get(name, value) for name, value in layer.params.items()}
        return loss_of(*probe.forward(changed.get("x", x), changed.get("state", state), lengths=LENGTHS), weights)

    eps = 1e-6
    for name, value, grad in [("x", x, dx), ("state", state, dstate)] + [
        (n, layer.params[n], layer.grads[n]) for n in ("W_x", "W_h_l1_reverse", "b_reverse", "W_x_l1")
    ]:
        for index in [tuple(rng.integers(0, s) for s in value.shape) for _ in range(4)]:
            plus, minus = value.copy(), value.copy()
            plus[index] += eps
            minus[index] -= eps
            numeric = (loss(**{name: plus}) - loss(**{name: minus})) / (2 * eps)
            np.testing.assert_allclose(grad[index], numeric, rtol=1e-6, atol=1e-8, err_msg=f"{name}{index}")


def test_the_sequence_model_trains_the_test_cell(registered):
    model = fb.SequenceModel(5, 8, cell=registered, seed=0, dtype=np.float64)
    tokens = np.random.default_rng(3).integers(0, 5, (12, 4))
    optimizer = fb.Adam(model.params, lr=1e-2)
    losses = []
    for _ in range(30):
        loss, grads, _ = model.loss_and_grad(tokens[:-1], tokens[1:])
        optimizer.step(grads)
        losses.append(loss)
    assert losses[-1] < 0.9 * losses[0]


def torch_composition(torch, module, x, lengths, h0):
    """The stacked bidirectional scaled-tanh RNN written with torch operations from the equation."""
    scale, steps = module.cell_options["scale"], x.shape[0]
    lengths_t = torch.as_tensor(lengths)
    order = torch.arange(steps)[:, None]
    # step t of sequence b's reversal is its step lengths[b]-1-t (zero past its length)
    reverse_index = (lengths_t[None, :] - 1 - order).clamp(min=0)
    valid = (order < lengths_t[None, :]).unsqueeze(-1)

    def reverse(sequence):
        gathered = sequence.gather(0, reverse_index.unsqueeze(-1).expand(-1, -1, sequence.shape[2]))
        return gathered * valid

    layer_input, finals = x, []
    for layer in range(module.num_layers):
        outputs = []
        for direction in range(2):
            suffix = f"_l{layer}" + ("_reverse" if direction else "")
            W_ih, W_hh, b_ih, b_hh = (
                getattr(module, n + suffix) for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
            )
            source = reverse(layer_input) if direction else layer_input
            h, hs = h0[2 * layer + direction], []
            for t in range(steps):
                h_new = scale * torch.tanh(source[t] @ W_ih.T + b_ih + h @ W_hh.T + b_hh)
                h = torch.where(valid[t], h_new, h)
                hs.append(torch.where(valid[t], h_new, torch.zeros_like(h_new)))
            hs = torch.stack(hs)
            outputs.append(reverse(hs) if direction else hs)
            finals.append(h)
        layer_input = torch.cat(outputs, dim=2)
    return layer_input, torch.stack(finals)


def test_fastbptt_torch_runs_the_test_cell_as_torch_autograd_does(registered):
    torch = pytest.importorskip("torch", reason="torch is not installed")
    fbt = pytest.importorskip("fastbptt.torch")
    torch.manual_seed(0)
    module = fbt.Recurrent(registered, D, H, num_layers=2, bidirectional=True, dtype=torch.float64, scale=0.8)
    assert [name for name, _ in module.named_parameters()][:5] == [
        "weight_ih_l0",
        "weight_hh_l0",
        "bias_ih_l0",
        "bias_hh_l0",
        "weight_ih_l0_reverse",
    ]
    x = torch.randn(T, B, D, dtype=torch.float64)
    h0 = 0.3 * torch.randn(4, B, H, dtype=torch.float64)
    upstream = torch.randn(T, B, 2 * H, dtype=torch.float64)

    def run(forward):
        for p in module.parameters():
            p.grad = None
        xi, hi = x.clone().requires_grad_(True), h0.clone().requires_grad_(True)
        output, h_n = forward(xi, hi)
        (torch.sum(output * upstream) + torch.sum(h_n * h_n)).backward()
        return [output.detach(), h_n.detach(), xi.grad, hi.grad, *(p.grad.clone() for p in module.parameters())]

    def ours(xi, hi):
        packed_input = torch.nn.utils.rnn.pack_padded_sequence(xi, torch.as_tensor(LENGTHS), enforce_sorted=False)
        output, h_n = module(packed_input, hi)
        return torch.nn.utils.rnn.pad_packed_sequence(output, total_length=T)[0], h_n

    mine = run(ours)
    expected = run(lambda xi, hi: torch_composition(torch, module, xi, LENGTHS, hi))
    for a, b in zip(mine, expected):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)

    # The NumPy layer holding the same parameters computes the same bits (one stack driver).
    layer = Recurrent(registered, D, H, num_layers=2, bidirectional=True, dtype=np.float64, scale=0.8)
    cell = module._cell()
    for k in range(4):
        suffix = f"_l{k // 2}" + ("_reverse" if k % 2 else "")
        params = cell.from_torch({n: getattr(module, n + suffix).detach().numpy() for n in cell.torch_parameters})
        for name, value in params.items():
            layer.params[name + layer.suffix(k // 2, k % 2)][...] = value
    outputs, finals = layer.forward(x.numpy(), h0.numpy(), lengths=LENGTHS)
    assert np.array_equal(outputs, mine[0].numpy()) and np.array_equal(finals, mine[1].numpy())

    # torch.nn's checks and whole-module checkpoints, as for fastbptt.torch's other modules
    with pytest.raises(RuntimeError, match="input.size\\(-1\\) must be equal to input_size"):
        module(torch.randn(T, B, D + 1, dtype=torch.float64))
    with pytest.raises(TypeError, match="bias should be of type bool"):
        fbt.Recurrent(registered, D, H, bias="False")
    assert "scale=0.8" in repr(module)
    buffer = io.BytesIO()
    torch.save(module, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer)  # weights_only=True: the module holds the cell by name and options
    assert type(loaded) is type(module) and torch.equal(loaded(x, h0)[0], module(x, h0)[0])
