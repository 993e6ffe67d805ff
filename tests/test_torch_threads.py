"""fastbptt.torch's modules run the core at torch's thread count, unless fastbptt.set_num_threads chose one
(skipped without torch)."""

from __future__ import annotations

import pytest

import fastbptt as fb

torch = pytest.importorskip("torch", reason="torch is not installed (pip install torch==2.13.0 for these tests)")
fbt = pytest.importorskip("fastbptt.torch")

needs_openmp = pytest.mark.skipif("OpenMP" not in fb.build_info()["threading"], reason="this build has no OpenMP")


@pytest.fixture
def default_counts():
    """Both libraries at their default counts, and torch's count back as it was afterwards."""
    torch_threads = torch.get_num_threads()
    fb.set_num_threads(None)
    yield
    fb.set_num_threads(None)
    torch.set_num_threads(torch_threads)


@pytest.fixture
def counts_inside(monkeypatch):
    """The core's thread count seen by the LSTM kernels of each forward and backward, in call order (the checked
    kernels, which the module path calls)."""
    from fastbptt.kernels import functional as module

    seen = []
    for name in ("lstm_forward_checked", "lstm_backward_checked"):
        kernel = getattr(module, name)

        def spy(*args, kernel=kernel, name=name, **kwargs):
            seen.append((name.removesuffix("_checked"), fb.get_num_threads()))
            return kernel(*args, **kwargs)

        monkeypatch.setattr(module, name, spy)
    return seen


def forward_and_backward():
    lstm = fbt.LSTM(3, 4)
    lstm(torch.randn(5, 2, 3))[0].sum().backward()


@needs_openmp
@pytest.mark.parametrize("threads", [1, 2])
def test_a_module_call_runs_the_core_at_torch_s_count(threads, default_counts, counts_inside):
    torch.set_num_threads(threads)
    before = fb.get_num_threads()
    forward_and_backward()
    assert counts_inside == [("lstm_forward", threads), ("lstm_backward", threads)]
    assert fb.get_num_threads() == before


@needs_openmp
def test_the_count_is_the_one_torch_reports_not_the_openmp_runtime_s(default_counts, counts_inside, monkeypatch):
    """Here torch shares fastbptt's OpenMP runtime, whose count torch.set_num_threads sets, so the two agree anyway.
    Where torch has a runtime of its own (Intel's libiomp5 in conda's builds, a renamed libgomp) they do not: torch
    then reports 1 while fastbptt's runtime says 2, as the stand-in for torch.get_num_threads does here."""
    torch.set_num_threads(2)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    forward_and_backward()
    assert counts_inside == [("lstm_forward", 1), ("lstm_backward", 1)]
    assert fb.get_num_threads() == 2


@needs_openmp
@pytest.mark.parametrize(("chosen", "torch_threads"), [(1, 2), (2, 1)])
def test_a_count_set_with_fastbptt_set_num_threads_wins_and_stays(chosen, torch_threads, default_counts, counts_inside):
    torch.set_num_threads(torch_threads)
    fb.set_num_threads(chosen)
    forward_and_backward()
    assert counts_inside == [("lstm_forward", chosen), ("lstm_backward", chosen)]
    assert fb.get_num_threads() == chosen
    fb.set_num_threads(None)  # torch's count again from the next call on
    counts_inside.clear()
    forward_and_backward()
    assert counts_inside == [("lstm_forward", torch_threads), ("lstm_backward", torch_threads)]


@needs_openmp
def test_after_a_call_the_core_is_at_its_default_again_not_pinned_at_torch_s_count(default_counts):
    torch.set_num_threads(2)
    default = fb.get_num_threads()  # 2 where torch shares the OpenMP runtime (torch.set_num_threads sets its count)
    torch.set_num_threads(1)
    forward_and_backward()  # at 1 thread
    torch.set_num_threads(2)
    assert fb.get_num_threads() == default
