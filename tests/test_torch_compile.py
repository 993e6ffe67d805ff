"""fastbptt.torch under torch.compile: whole models compile with fullgraph=True (the stack runs as the custom
operators fastbptt::stack_forward and fastbptt::stack_backward), give eager mode's outputs and gradients, and the
operators pass torch.library.opcheck (schema, fake tensors, autograd registration, AOT dispatch)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch", reason="torch is not installed (pip install torch==2.13.0 for these tests)")
fbt = pytest.importorskip("fastbptt.torch")

T, B, D, H = 6, 3, 4, 5


@pytest.fixture(autouse=True)
def fresh_compiler():
    """Each test compiles its own functions: the compiler's cache of earlier tests' graphs is dropped."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def model_of(kind, **options):
    torch.manual_seed(0)
    classes = {"lstm": fbt.LSTM, "gru": fbt.GRU, "rnn": fbt.RNN, "layer_norm_lstm": fbt.LayerNormLSTM}
    recurrent = classes[kind](D, H, **options)
    directions = 2 if options.get("bidirectional") else 1
    features = options.get("proj_size") or H
    return recurrent, torch.nn.Linear(directions * features, 2, dtype=options.get("dtype"))


def loss_and_grads(recurrent, head, x, hx, compile_it):
    def loss(x, hx):
        output, _ = recurrent(x, hx)
        return head(output).square().sum()

    run = torch.compile(loss, fullgraph=True, backend="aot_eager") if compile_it else loss
    for p in (*recurrent.parameters(), *head.parameters()):
        p.grad = None
    x = x.clone().requires_grad_(True)
    value = run(x, hx)
    value.backward()
    return [value.detach(), x.grad, *(p.grad for p in recurrent.parameters() if p.requires_grad)]


CASES = {
    "lstm-2-bidirectional": ("lstm", {"num_layers": 2, "bidirectional": True}),
    "gru-no-bias-float64": ("gru", {"bias": False, "dtype": torch.float64}),
    "rnn-relu-batch-first": ("rnn", {"nonlinearity": "relu", "batch_first": True}),
    "lstm-dropout-eval": ("lstm", {"num_layers": 3, "dropout": 0.3}),
    "lstm-projection-2-bidirectional": ("lstm", {"proj_size": 3, "num_layers": 2, "bidirectional": True}),
    "layer-norm-lstm-2-bidirectional": ("layer_norm_lstm", {"num_layers": 2, "bidirectional": True}),
}


@pytest.mark.parametrize("with_state", [False, True])
@pytest.mark.parametrize("case", CASES)
def test_fullgraph_compile_gives_eager_outputs_and_gradients(case, with_state):
    kind, options = CASES[case]
    recurrent, head = model_of(kind, **options)
    recurrent.eval()  # dropout draws differ between runs; the eval path is deterministic
    dtype = options.get("dtype", torch.float32)
    shape = (B, T, D) if options.get("batch_first") else (T, B, D)
    x = torch.randn(shape, dtype=dtype)
    layers = options.get("num_layers", 1) * (2 if options.get("bidirectional") else 1)
    hx = None
    if with_state:
        h0 = 0.5 * torch.randn(layers, B, options.get("proj_size") or H, dtype=dtype)
        hx = (h0, 0.5 * torch.randn(layers, B, H, dtype=dtype)) if kind.endswith("lstm") else h0
    eager = loss_and_grads(recurrent, head, x, hx, compile_it=False)
    compiled = loss_and_grads(recurrent, head, x, hx, compile_it=True)
    for a, b in zip(compiled, eager):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def test_frozen_layers_and_no_grad_compile_too():
    recurrent, head = model_of("lstm", num_layers=2)
    for name, parameter in recurrent.named_parameters():
        parameter.requires_grad_(name.endswith("_l1"))
    x = torch.randn(T, B, D)
    eager = loss_and_grads(recurrent, head, x, None, compile_it=False)
    compiled = loss_and_grads(recurrent, head, x, None, compile_it=True)
    for a, b in zip(compiled, eager):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    with torch.no_grad():
        inferred = torch.compile(lambda x: recurrent(x)[0], fullgraph=True, backend="aot_eager")(x)
    assert torch.equal(inferred, recurrent(x)[0].detach())


def test_a_training_model_compiles_with_dropout_in_train_mode():
    recurrent, head = model_of("gru", num_layers=2, dropout=0.5)
    recurrent.train()
    x = torch.randn(T, B, D)
    value = torch.compile(lambda x: head(recurrent(x)[0]).sum(), fullgraph=True, backend="aot_eager")(x)
    value.backward()
    assert torch.isfinite(value) and all(torch.isfinite(p.grad).all() for p in recurrent.parameters())


def operator_samples():
    """Arguments of stack_forward as a module under torch.compile passes them, for opcheck."""
    torch.manual_seed(1)
    samples = []
    for kind, options, bidirectional, layers in [("lstm", "lstm|forget_gate=True", True, 2), ("gru", "gru", False, 1)]:
        module = {"lstm": fbt.LSTM, "gru": fbt.GRU}[kind](D, H, num_layers=layers, bidirectional=bidirectional)
        weights = [w.detach().clone().requires_grad_(True) for w in module._flat_weights]
        x = torch.randn(T, B, D, requires_grad=True)
        cells = layers * (2 if bidirectional else 1)
        states = [torch.randn(cells, B, H, requires_grad=True) for _ in range(2 if kind == "lstm" else 1)]
        samples.append((x, states, weights, None, [], options, layers, bidirectional, True, H, False))
        lengths = torch.tensor([T, 2, 4])
        samples.append((x, [], weights, lengths, [], options, layers, bidirectional, True, H, False))
    return samples


@pytest.mark.parametrize("sample", range(4))
def test_the_custom_operators_pass_opcheck(sample):
    arguments = operator_samples()[sample]
    torch.library.opcheck(torch.ops.fastbptt.stack_forward.default, arguments)


# inductor itself calls torch.jit.script_method, deprecated in this torch
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
def test_a_language_model_compiles_with_the_default_backend():
    """Embedding -> 2-layer LSTM -> linear -> cross-entropy under torch.compile(fullgraph=True) with inductor."""
    torch.manual_seed(0)
    embedding, lstm, head = torch.nn.Embedding(10, D), fbt.LSTM(D, H, num_layers=2), torch.nn.Linear(H, 10)

    def loss(tokens):
        logits = head(lstm(embedding(tokens))[0])
        return torch.nn.functional.cross_entropy(logits.flatten(0, 1), tokens.flatten())

    tokens = torch.randint(0, 10, (T, B))
    eager = loss(tokens)
    eager.backward()
    expected = [p.grad.clone() for p in lstm.parameters()]
    lstm.zero_grad()
    compiled = torch.compile(loss, fullgraph=True)(tokens)
    compiled.backward()
    torch.testing.assert_close(compiled, eager)
    for mine, theirs in zip(lstm.parameters(), expected):
        torch.testing.assert_close(mine.grad, theirs)


def test_a_module_compiles_when_its_first_call_is_the_compiled_one(monkeypatch):
    # The cells made so far go: the compiled call is the first to ask for this cell, as in a script that builds a
    # model, compiles it and trains (torch.compile once failed guarding on the cells' dictionary).
    monkeypatch.setattr(fbt, "_CELLS", {})
    recurrent, head = model_of("lstm")
    x = torch.randn(T, B, D)
    compiled = loss_and_grads(recurrent, head, x, None, compile_it=True)
    eager = loss_and_grads(recurrent, head, x, None, compile_it=False)
    for a, b in zip(compiled, eager):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
