"""adadfq_fast.fake_quant_act: the original EMA range update (compounding bias correction) + quantization."""
import pytest
import torch

import adadfq_fast
from adadfq_fast import reference as ref
from helpers import FLOAT_DTYPES, both_paths, layouts


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("shape", [(16, 16, 32, 32), (16, 64, 8, 8), (3, 10)])
def test_sequence_of_updates_bit_exact(cpu_backend, dtype, bits, shape):
    """Ten updates in a row: outputs and the stored state match the reference exactly at every step."""
    state, state_ref = adadfq_fast.new_act_state(), adadfq_fast.new_act_state()
    for step in range(10):
        x = (torch.relu(torch.randn(shape)) * (1 + step)).to(dtype)
        xl = list(layouts(x).values())[step % len(layouts(x))]
        out = adadfq_fast.fake_quant_act(xl, bits, state)
        expected = ref.fake_quant_act(x, bits, state_ref)
        torch.testing.assert_close(out, expected, rtol=0, atol=0, msg=f"step {step}")
        assert torch.equal(state, state_ref), f"step {step}: {state} vs {state_ref}"


def test_faithful_overshoot():
    """The spec's compounding correction: a constant input's stored max overshoots by orders of magnitude."""
    state = adadfq_fast.new_act_state()
    maxes = []
    for _ in range(30):
        adadfq_fast.fake_quant_act(torch.ones(4, 4), 4, state)
        maxes.append(state[1].item())
    assert maxes[0] == pytest.approx(1.0, rel=1e-5)  # (0 * 0.9 + 1 * 0.1) / (1 - 0.9)
    assert max(maxes) > 1e3 and maxes[-1] < max(maxes)


def test_frozen_range_and_beta(cpu_backend):
    state = torch.tensor([-1.0, 2.0, 0.5])
    before = state.clone()
    x = torch.randn(5, 6)
    out = adadfq_fast.fake_quant_act(x, 4, state, update=False)
    assert torch.equal(state, before)
    torch.testing.assert_close(out, ref.fake_quant(x, 4, before[0], before[1]), rtol=0, atol=0)
    s1, s2 = adadfq_fast.new_act_state(), adadfq_fast.new_act_state()
    adadfq_fast.fake_quant_act(x, 4, s1, beta=0.5)
    ref.fake_quant_act(x, 4, s2, beta=0.5)
    assert torch.equal(s1, s2)


def test_gradient_and_paths(cpu_backend):
    x = torch.randn(4, 8, 5, 5, requires_grad=True)
    g = torch.randn_like(x)
    adadfq_fast.fake_quant_act(x, 4, adadfq_fast.new_act_state()).backward(g)
    assert torch.equal(x.grad, g)
    s1, s2 = adadfq_fast.new_act_state(), adadfq_fast.new_act_state()
    calls = iter([s1, s2])
    eager, via_op = both_paths(lambda: adadfq_fast.fake_quant_act(x.detach(), 4, next(calls)))
    assert torch.equal(eager, via_op) and torch.equal(s1, s2)


def test_edge_cases(cpu_backend):
    state = adadfq_fast.new_act_state()
    assert adadfq_fast.fake_quant_act(torch.empty(0, 4, 3, 3), 4, state).shape == (0, 4, 3, 3)
    assert torch.equal(state, adadfq_fast.new_act_state())  # an empty batch leaves the range untouched
    x = torch.tensor([0.5, float("nan"), 2.0])
    s1 = adadfq_fast.new_act_state()
    with pytest.raises(ValueError, match="x: NaN or inf"):  # it would poison the range (tests/test_value_checks.py)
        adadfq_fast.fake_quant_act(x, 4, s1)
    assert torch.equal(s1, adadfq_fast.new_act_state())
    big = torch.randn(100) * 1e8
    s1, s2 = adadfq_fast.new_act_state(), adadfq_fast.new_act_state()
    torch.testing.assert_close(adadfq_fast.fake_quant_act(big, 8, s1), ref.fake_quant_act(big, 8, s2), rtol=0, atol=0)


def test_errors():
    x = torch.randn(4, 4)
    with pytest.raises(ValueError, match=r"state: expected a float32 tensor of shape \(3,\)"):
        adadfq_fast.fake_quant_act(x, 4, torch.zeros(2))
    with pytest.raises(ValueError, match="state: expected a float32"):
        adadfq_fast.fake_quant_act(x, 4, torch.zeros(3, dtype=torch.float64))
    with pytest.raises(ValueError, match="bits"):
        adadfq_fast.fake_quant_act(x, 9, adadfq_fast.new_act_state())
    with pytest.raises(ValueError, match="beta"):
        adadfq_fast.fake_quant_act(x, 4, adadfq_fast.new_act_state(), beta=1.5)
    with pytest.raises(ValueError, match=r"state\[0\] \(x_min\) > state\[1\] \(x_max\)"):
        adadfq_fast.fake_quant_act(x, 4, torch.tensor([1.0, -1.0, 1.0]), update=False)
    with pytest.raises(TypeError, match="x: expected float32"):
        adadfq_fast.fake_quant_act(x.half().int(), 4, adadfq_fast.new_act_state())


def test_opcheck():
    x = torch.randn(4, 6, 5, 5, requires_grad=True)
    torch.library.opcheck(torch.ops.adadfq.fake_quant_act.default, (x, 4, adadfq_fast.new_act_state(), 0.9, True))
    torch.library.opcheck(torch.ops.adadfq.fake_quant_act.default, (x, 4, torch.tensor([-1.0, 1.0, 0.5]), 0.9, False))


def test_compile_fullgraph_forward_backward():
    def f(x, state):
        return (adadfq_fast.fake_quant_act(torch.relu(x), 4, state) * x).sum()

    x = torch.randn(4, 8, 6, 6, requires_grad=True)
    s1, s2 = adadfq_fast.new_act_state(), adadfq_fast.new_act_state()
    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    for _ in range(3):  # the in-place state update must survive compilation
        out = compiled(x, s1)
        (gx,) = torch.autograd.grad(out, x)
        expected = f(x, s2)
        (gx2,) = torch.autograd.grad(expected, x)
        assert torch.equal(out, expected) and torch.equal(gx, gx2) and torch.equal(s1, s2)
