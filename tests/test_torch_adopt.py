"""fastbptt.torch.convert / revert: one line swaps torch.nn's recurrent modules in a model (skipped without torch)."""

from __future__ import annotations

import copy
import re
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is not installed (pip install torch==2.13.0 for these tests)")
fbt = pytest.importorskip("fastbptt.torch")
nn = torch.nn

VOCABULARY, CLASSES, T, B = 13, 4, 9, 5


class Tagger(nn.Module):
    """Embedding -> 2-layer LSTM -> bidirectional GRU -> linear: a tag per token."""

    def __init__(self, embedding=6, hidden=7, dropout=0.0):
        super().__init__()
        self.embed = nn.Embedding(VOCABULARY, embedding)
        self.encoder = nn.LSTM(embedding, hidden, num_layers=2, dropout=dropout)
        self.decoder = nn.GRU(hidden, hidden, bidirectional=True)
        self.head = nn.Linear(2 * hidden, CLASSES)

    def forward(self, tokens):
        x, _ = self.encoder(self.embed(tokens))
        x, _ = self.decoder(x)
        return self.head(x)


# torch.load's default weights_only=True loads whole models of allow-listed classes; fastbptt.torch allow-lists its
# own, these are the rest of the model.
MODEL_CLASSES = [Tagger, nn.Embedding, nn.LSTM, nn.GRU, nn.Linear]


def tokens_and_tags(seed=0):
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, VOCABULARY, (T, B), generator=generator)
    return tokens, tokens % CLASSES  # learnable tags


def converted_twin(model, dtype):
    """A converted copy of ``model`` in ``dtype``, and no warning on the way."""
    twin = copy.deepcopy(model).to(dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert fbt.convert(twin) is twin
    return twin


def outputs_and_gradients(model, tokens):
    model.zero_grad()
    scores = model(tokens)
    upstream = torch.linspace(-1.0, 1.0, scores.numel(), dtype=torch.float64).reshape(scores.shape)
    (scores * upstream.to(scores.dtype)).sum().backward()
    return scores.detach(), {name: p.grad for name, p in model.named_parameters()}


@pytest.mark.parametrize("dropout", [0.0, 0.25], ids=["no-dropout", "dropout-in-eval-mode"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
def test_converted_model_gives_torch_nn_s_outputs_and_gradients(dtype, dropout):
    torch.manual_seed(0)
    theirs = Tagger(dropout=dropout).double()
    if dropout:  # dropout draws differ between implementations: compare where dropout is off
        theirs.eval()
    ours = converted_twin(theirs, dtype)
    assert type(ours.encoder) is fbt.LSTM and type(ours.decoder) is fbt.GRU
    assert type(theirs.encoder) is nn.LSTM, "the deep copy, not the original, was converted"
    assert ours.training == theirs.training and ours.encoder.training == theirs.encoder.training
    tokens, _ = tokens_and_tags()
    mine, my_grads = outputs_and_gradients(ours, tokens)
    expected, expected_grads = outputs_and_gradients(theirs, tokens)
    # float64: 1e-10; float32 (against the float64 model): DESIGN.md's 1e-5 for outputs, 1e-4 for gradients.
    out_tol, grad_tol = (1e-10, 1e-10) if dtype == torch.float64 else (1e-5, 1e-4)
    assert mine.dtype == dtype and float(expected.abs().max()) > 0.1
    np.testing.assert_allclose(mine.double().numpy(), expected.numpy(), rtol=out_tol, atol=out_tol)
    assert list(my_grads) == list(expected_grads)
    for name, grad in my_grads.items():
        scale = float(expected_grads[name].abs().max())
        assert scale > 0, f"{name}: a zero gradient would pass trivially"
        np.testing.assert_allclose(
            grad.double().numpy(), expected_grads[name].numpy(), rtol=grad_tol, atol=grad_tol * scale, err_msg=name
        )


def test_converted_model_in_train_mode_applies_dropout_from_torch_s_generator():
    torch.manual_seed(0)
    ours = converted_twin(Tagger(dropout=0.5), torch.float64)
    tokens, _ = tokens_and_tags()
    runs = []
    for _ in range(2):
        torch.manual_seed(7)
        runs.append(ours(tokens).detach())
    ours.eval()
    without_dropout = ours(tokens).detach()
    assert torch.equal(runs[0], runs[1]), "the same seed must give the same dropout masks"
    assert not torch.allclose(runs[0], without_dropout), "train mode was lost: dropout did nothing"


def train(model, tokens, tags, steps, checkpoint=None):
    """Losses of SGD with momentum and gradient clipping; at step ``steps // 2`` the whole model and the optimizer's
    state go through torch.save / torch.load (``checkpoint``: the file) and training goes on with the loaded ones."""
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0, momentum=0.9)
    losses = []
    for step in range(steps):
        if checkpoint is not None and step == steps // 2:
            torch.save({"model": model, "optimizer": optimizer.state_dict()}, checkpoint)
            with torch.serialization.safe_globals(MODEL_CLASSES):
                loaded = torch.load(checkpoint)  # weights_only=True, torch's default
            model = loaded["model"]
            for module in model.modules():
                if isinstance(module, nn.RNNBase):
                    module.flatten_parameters()  # what training scripts call after loading
            optimizer = torch.optim.SGD(model.parameters(), lr=1.0, momentum=0.9)
            optimizer.load_state_dict(loaded["optimizer"])
        optimizer.zero_grad()
        scores = model(tokens)
        loss = nn.functional.cross_entropy(scores.reshape(-1, CLASSES), tags.reshape(-1))
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), max_norm=0.25)  # clips a few of the steps
        optimizer.step()
        losses.append(loss.item())
    return losses, model


def test_training_a_converted_model_gives_torch_nn_s_losses_step_for_step(tmp_path):
    torch.manual_seed(0)
    theirs = Tagger()
    ours = converted_twin(theirs, torch.float32)
    tokens, tags = tokens_and_tags()
    my_losses, my_model = train(ours, tokens, tags, 24, tmp_path / "ours.pt")
    their_losses, their_model = train(theirs, tokens, tags, 24, tmp_path / "theirs.pt")
    assert type(my_model.encoder) is fbt.LSTM and type(my_model.decoder) is fbt.GRU  # loaded as converted
    assert type(their_model.encoder) is nn.LSTM
    np.testing.assert_allclose(my_losses, their_losses, rtol=1e-5)  # float32 on both sides
    assert my_losses[-1] < 0.6 * my_losses[0], "the model did not learn: the comparison would be trivial"


def test_convert_keeps_parameters_optimizer_state_and_mode():
    torch.manual_seed(0)
    model = Tagger().double()
    twin = copy.deepcopy(model)  # never converted
    tokens, tags = tokens_and_tags()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)  # built before the conversion
    twin_optimizer = torch.optim.SGD(twin.parameters(), lr=0.5, momentum=0.9)

    def step(module, opt):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(module(tokens).reshape(-1, CLASSES), tags.reshape(-1))
        loss.backward()
        opt.step()
        return loss.item()

    losses = [step(model, optimizer) for _ in range(3)]
    parameters = dict(model.named_parameters())
    momenta = {name: optimizer.state[p]["momentum_buffer"] for name, p in parameters.items()}
    encoder = model.encoder
    model.eval()
    assert fbt.convert(model) is model
    assert model.encoder is encoder and type(encoder) is fbt.LSTM  # the same module, now fastbptt's
    assert not model.training and not model.encoder.training and not model.decoder.training
    assert all(p is parameters[name] for name, p in model.named_parameters())
    assert all(optimizer.state[p]["momentum_buffer"] is momenta[name] for name, p in model.named_parameters())
    model.train()
    assert model.encoder.training
    losses += [step(model, optimizer) for _ in range(3)]
    expected = [step(twin, twin_optimizer) for _ in range(6)]
    np.testing.assert_allclose(losses, expected, rtol=1e-10)


def test_shared_modules_stay_shared_and_tied_weights_stay_tied():
    torch.manual_seed(0)
    lstm, first, second = nn.LSTM(3, 4), nn.GRU(3, 4), nn.GRU(3, 4)
    second.weight_hh_l0 = first.weight_hh_l0  # tied
    model = nn.ModuleDict(
        {"pair": nn.ModuleList([lstm, first, lstm]), "again": nn.Sequential(nn.Identity(), lstm), "tied": second}
    ).double()
    twin = copy.deepcopy(model)
    fbt.convert(model)
    assert model["pair"][0] is model["pair"][2] is model["again"][1] is lstm and type(lstm) is fbt.LSTM
    assert type(first) is fbt.GRU and type(second) is fbt.GRU
    assert second.weight_hh_l0 is first.weight_hh_l0
    assert second._flat_weights[1] is first.weight_hh_l0  # what forward reads

    x = torch.randn(5, 2, 3, dtype=torch.float64)

    def loss(m):
        return sum(m["pair"][i](x)[0].square().sum() for i in range(3)) + m["tied"](x)[0].sum()

    loss(model).backward()
    loss(twin).backward()
    for (name, mine), theirs in zip(model.named_parameters(), twin.parameters()):
        torch.testing.assert_close(mine.grad, theirs.grad, rtol=1e-10, atol=1e-12, msg=name)


def test_hooks_stay_and_their_handles_still_remove_them():
    lstm = nn.LSTM(3, 4)
    calls = []
    handles = [
        lstm.register_forward_pre_hook(lambda module, args: calls.append(("pre", type(module)))),
        lstm.register_forward_hook(
            lambda module, args, kwargs, output: calls.append(("post", type(module))), with_kwargs=True
        ),
        lstm.register_full_backward_hook(lambda module, grad_in, grad_out: calls.append(("backward", type(module)))),
        lstm.register_state_dict_post_hook(lambda module, state, prefix, local: calls.append(("state", type(module)))),
        # torch keeps a weak reference to the module for this one: it must still be alive and be the module
        lstm.register_load_state_dict_pre_hook(lambda module, *args: calls.append(("load", type(module)))),
    ]
    fbt.convert(lstm)

    def use():
        lstm(torch.randn(5, 2, 3, requires_grad=True))[0].sum().backward()
        lstm.load_state_dict(lstm.state_dict())

    use()
    assert calls == [(kind, fbt.LSTM) for kind in ("pre", "post", "backward", "state", "load")]
    for handle in handles:
        handle.remove()
    calls.clear()
    use()
    assert calls == []


class PeepholeLSTM(nn.LSTM):
    """A subclass of torch.nn.LSTM: its forward is its own business."""


def test_what_fastbptt_cannot_run_stays_torch_nn_s_with_a_warning_naming_its_path():
    model = nn.ModuleDict(
        {
            "subclass": PeepholeLSTM(3, 4),
            "float16": nn.GRU(3, 4, dtype=torch.float16),
            # A device other than the CPU: meta, the one this machine has besides the CPU; the check is the same.
            "elsewhere": nn.Sequential(nn.RNN(3, 4, device="meta")),
            "fine": nn.GRU(3, 4),
            "projected": nn.LSTM(3, 4, proj_size=2),
        }
    )
    before = {name: module for name, module in model.named_modules()}
    with pytest.warns(UserWarning) as record:
        assert fbt.convert(model) is model
    messages = [str(warning.message) for warning in record]
    assert len(messages) == 3
    expected = [
        r"'subclass' \(.*PeepholeLSTM\) stays as it is: a subclass of torch\.nn\.LSTM, not torch\.nn\.LSTM itself",
        r"'float16' \(torch\.nn\.GRU\) stays as it is: parameters of dtype torch\.float16",
        r"'elsewhere\.0' \(torch\.nn\.RNN\) stays as it is: parameters on meta \(fastbptt computes on the CPU\)",
    ]
    for pattern, message in zip(expected, messages):
        assert message.startswith("fastbptt.torch.convert: ")
        assert re.search(pattern, message), message
    assert all(warning.filename == __file__ for warning in record), "the warning points at the caller of convert"
    assert type(model["projected"]) is fbt.LSTM and type(model["subclass"]) is PeepholeLSTM
    assert type(model["float16"]) is nn.GRU and type(model["elsewhere"][0]) is nn.RNN
    assert type(model["fine"]) is fbt.GRU
    assert {name: module for name, module in model.named_modules()} == before  # the same objects everywhere


def test_a_module_compiled_in_place_stays_torch_nn_s():
    """module.compile() wraps torch.nn's own call: converting the class under it would change nothing it runs."""
    model = nn.Sequential(nn.GRU(3, 4))
    model[0].compile(backend="eager")  # compiles lazily, at the first call: none is made here
    with pytest.warns(UserWarning, match=r"'0' \(torch\.nn\.GRU\) stays as it is: compiled in place"):
        fbt.convert(model)
    assert type(model[0]) is nn.GRU


def test_the_model_itself_and_modules_already_converted():
    rnn = nn.RNN(3, 4, nonlinearity="relu")
    assert fbt.convert(rnn) is rnn and type(rnn) is fbt.RNN and rnn.nonlinearity == "relu"
    ours = fbt.GRU(3, 4)
    model = nn.Sequential(nn.Linear(3, 3), nn.ModuleList([ours, rnn]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing to warn about: both are fastbptt's already
        fbt.convert(model)
    assert model[1][0] is ours and type(ours) is fbt.GRU and type(rnn) is fbt.RNN


def test_revert_gives_torch_nn_s_modules_back():
    torch.manual_seed(0)
    model = Tagger().double()
    untouched = copy.deepcopy(model)
    parameters = list(model.parameters())
    model.eval()
    fbt.convert(model)
    assert fbt.revert(model) is model
    assert type(model.encoder) is nn.LSTM and type(model.decoder) is nn.GRU
    assert not model.encoder.training
    assert all(a is b for a, b in zip(model.parameters(), parameters))
    tokens, _ = tokens_and_tags()
    untouched.eval()
    assert torch.equal(model(tokens), untouched(tokens))  # torch.nn's forward again: torch.nn's bits

    class Custom(fbt.GRU):
        pass

    custom = nn.Sequential(Custom(3, 4))
    with pytest.warns(UserWarning, match=r"fastbptt\.torch\.revert: '0' \(.*Custom\) stays as it is"):
        fbt.revert(custom)
    assert type(custom[0]) is Custom


def test_quantize_dynamic_after_revert_gives_torch_s_quantized_modules():
    """quantize_dynamic matches modules by their exact type: it leaves fastbptt's modules float (fastbptt runs
    them), and after revert it quantizes them as it quantizes torch.nn's."""
    import warnings

    model = torch.nn.Sequential(torch.nn.LSTM(4, 8), torch.nn.Linear(8, 2))
    fbt.convert(model)
    with warnings.catch_warnings():  # torch's eager-mode quantization warns that it is deprecated
        warnings.simplefilter("ignore")
        kept = torch.ao.quantization.quantize_dynamic(model, {torch.nn.LSTM}, dtype=torch.qint8)
        assert type(kept[0]) is fbt.LSTM
        quantized = torch.ao.quantization.quantize_dynamic(fbt.revert(model), {torch.nn.LSTM}, dtype=torch.qint8)
    assert type(quantized[0]).__module__.startswith("torch.ao.nn.quantized")
