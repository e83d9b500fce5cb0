"""Bad values that used to pass silently (adadfq_fast/ops/_checks.py): each is a ValueError naming the argument,
raised before anything is written, on every CPU backend and through both the eager path and the custom op."""
import pytest
import torch

import adadfq_fast
from adadfq_fast.ops import _checks

from helpers import both_paths


def _via_op(fn):
    """Run ``fn`` with the public ops routed through the registered custom ops (what torch.compile calls)."""
    from adadfq_fast.ops import _eager

    saved = _eager.use_custom_op
    _eager.use_custom_op = lambda *a: True  # FusedOp.call's dispatch (every op goes through it)
    try:
        return fn()
    finally:
        _eager.use_custom_op = saved


PATHS = {"eager": lambda fn: fn(), "custom_op": _via_op}


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_fake_quant_act_nonfinite_activation_leaves_state(cpu_backend, path, bad):
    state = torch.tensor([-0.5, 2.0, 0.81])
    before = state.clone()
    x = torch.rand(2, 3, 4, 4)
    x[1, 2, 0, 3] = bad
    with pytest.raises(ValueError, match=r"^x: NaN or inf in the activation .* left unchanged"):
        PATHS[path](lambda: adadfq_fast.fake_quant_act(x, 4, state))
    assert torch.equal(state, before)  # nothing lost: the range is the one before the call
    # The next good call updates from that state exactly as if the bad batch had never come.
    good = torch.rand(2, 3, 4, 4)
    ref_state = before.clone()
    out = adadfq_fast.fake_quant_act(good, 4, state)
    assert torch.equal(out, adadfq_fast.reference.fake_quant_act(good, 4, ref_state))
    assert torch.equal(state, ref_state) and torch.isfinite(state).all()


def test_fake_quant_act_nan_without_update_is_propagated(cpu_backend):
    """With update=False nothing is stored: a NaN activation gives a NaN output there, like the reference."""
    state = torch.tensor([0.0, 2.0, 0.5])
    x = torch.tensor([0.5, float("nan"), 2.0])
    out = adadfq_fast.fake_quant_act(x, 4, state, update=False)
    torch.testing.assert_close(out, adadfq_fast.reference.fake_quant_act(x, 4, state.clone(), update=False),
                               rtol=0, atol=0, equal_nan=True)
    assert torch.isnan(out[1]) and torch.isfinite(out[[0, 2]]).all()
    assert torch.equal(state, torch.tensor([0.0, 2.0, 0.5]))


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("update", [True, False])
@pytest.mark.parametrize("state, message", [
    ([float("nan"), 1.0, 1.0], r"^state: NaN or inf in the range state"),
    ([0.0, float("inf"), 0.9], r"^state: NaN or inf in the range state"),
    ([0.0, 1.0, float("nan")], r"^state: NaN or inf in the range state"),
    ([1.0, -1.0, 0.9], r"^state\[0\] \(x_min\) > state\[1\] \(x_max\): 1.0 > -1.0"),
    ([0.0, 1.0, 1.5], r"^state\[2\] \(beta_t\): expected the momentum power in \[0, 1\]"),
    ([0.0, 1.0, -0.1], r"^state\[2\] \(beta_t\)"),
])
def test_fake_quant_act_bad_state(cpu_backend, path, update, state, message):
    state = torch.tensor(state)
    before = state.clone()
    with pytest.raises(ValueError, match=message):
        PATHS[path](lambda: adadfq_fast.fake_quant_act(torch.rand(3, 5), 4, state, update=update))
    torch.testing.assert_close(state, before, rtol=0, atol=0, equal_nan=True)


def test_fake_quant_act_state_edges_accepted(cpu_backend):
    """The states a real run reaches are accepted: fresh [0, 0, 1], and beta_t underflowed to 0."""
    for st in ([0.0, 0.0, 1.0], [-1.0, 3.0, 0.0]):
        state = torch.tensor(st)
        adadfq_fast.fake_quant_act(torch.rand(8), 4, state)
        assert torch.isfinite(state).all()


def _logits():
    return torch.randn(6, 10), torch.randn(6, 10), torch.randint(0, 10, (6,))


@pytest.mark.parametrize("lams, message", [
    ((0.8, 0.1), r"^lambda_l > lambda_u: 0.8 > 0.1"),
    ((float("nan"), 0.8), r"^lambda_l: expected a finite margin"),
    ((0.1, float("inf")), r"^lambda_u: expected a finite margin"),
])
def test_generator_loss_bad_margins(cpu_backend, lams, message):
    t, s, y = _logits()
    for path in PATHS.values():
        with pytest.raises(ValueError, match=message):
            path(lambda: adadfq_fast.adadfq_generator_loss(t, s, y, lambda_l=lams[0], lambda_u=lams[1]))
    with pytest.raises(ValueError, match=message):  # the op called directly, and its fake (torch.compile)
        torch.ops.adadfq.adadfq_generator_loss(t, s, y, lams[0], lams[1], 0.2, 0.1)
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode() as mode, pytest.raises(ValueError, match=message):
        ft, fs, fy = (mode.from_tensor(v) for v in (t, s, y))
        torch.ops.adadfq.adadfq_generator_loss(ft, fs, fy, lams[0], lams[1], 0.2, 0.1)


def test_generator_loss_equal_margins_accepted(cpu_backend):
    t, s, y = _logits()
    margin, _ = adadfq_fast.adadfq_generator_loss(t, s, y, lambda_l=0.5, lambda_u=0.5)
    want, _ = adadfq_fast.reference.adadfq_generator_loss(t, s, y, lambda_l=0.5, lambda_u=0.5)
    torch.testing.assert_close(margin, want)


@pytest.mark.parametrize("which, value, message", [
    ("var", -1e-3, r"^running_vars\[1\]: expected finite non-negative variances, got -0.001.* at channel 2"),
    ("var", float("nan"), r"^running_vars\[1\]: expected finite non-negative variances, got nan"),
    ("var", float("inf"), r"^running_vars\[1\]: expected finite non-negative"),
    ("mean", float("nan"), r"^running_means\[1\]: NaN or inf in a running mean"),
])
def test_bn_stat_loss_bad_running_statistics(cpu_backend, which, value, message):
    feats = [torch.randn(4, 3, 5, 5, requires_grad=True), torch.randn(4, 4, 3, 3, requires_grad=True)]
    rms = [torch.zeros(3), torch.zeros(4)]
    rvs = [torch.ones(3), torch.ones(4)]
    (rvs if which == "var" else rms)[1][2] = value
    for path in PATHS.values():
        with pytest.raises(ValueError, match=message):
            path(lambda: adadfq_fast.bn_stat_loss(feats, rms, rvs))


def test_bn_stat_loss_zero_variance_accepted(cpu_backend):
    feats = [torch.randn(4, 3, 5, 5)]
    rms, rvs = [torch.zeros(3)], [torch.zeros(3)]
    eager, via_op = both_paths(lambda: adadfq_fast.bn_stat_loss(feats, rms, rvs))
    torch.testing.assert_close(eager, adadfq_fast.reference.bn_stat_loss(feats, rms, rvs))
    torch.testing.assert_close(via_op, eager)


def test_value_checks_need_opt_in_off_cpu(monkeypatch):
    """Off the CPU a value check reads device memory (a host sync, fatal inside a CUDA graph capture): it runs only
    with ADADFQ_CHECK_VALUES=1. A meta tensor stands in for a device tensor here (no GPU needed)."""
    bad = torch.empty(3, device="meta")
    monkeypatch.delenv("ADADFQ_CHECK_VALUES", raising=False)
    assert not _checks.values_checkable(bad)
    _checks.check_act_update(bad)  # skipped: nothing read
    _checks.check_act_state_values(bad)
    _checks.check_bn_values([bad], [bad])
    monkeypatch.setenv("ADADFQ_CHECK_VALUES", "1")
    assert _checks.values_checkable(bad)
    assert _checks.values_checkable(torch.empty(3))  # CPU: always
    _checks.check_margins(0.1, 0.8)  # Python numbers: always checked, no device involved
    with pytest.raises(ValueError, match="lambda_l > lambda_u"):
        _checks.check_margins(0.9, 0.8)
