"""adadfq_fast.game.BNCapture: BN inputs captured in forward order give the same L_BNS as a direct computation."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import adadfq_fast
from adadfq_fast import reference as ref
from adadfq_fast.game import BNCapture, build_generator
from conftest import TOL


class Net(nn.Module):
    """Residual CNN whose BN layers are registered in a different order than they run; `bn_shared` runs twice,
    `bn_nostats` has no running statistics (nothing to match, so it is not captured)."""

    def __init__(self, c=3, classes=5):
        super().__init__()
        self.bn_head = nn.BatchNorm1d(8)  # registered first, runs last
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn_shared = nn.BatchNorm2d(8)
        self.conv1 = nn.Conv2d(c, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.bn_nostats = nn.BatchNorm2d(8, track_running_stats=False)
        self.fc = nn.Linear(8, classes)
        self.fc0 = nn.Linear(8, 8)

    def forward(self, x):
        h = F.relu(self.bn1(self.conv1(x)))
        r = F.relu(self.bn_shared(self.conv2(h))) + h
        r = self.bn_nostats(r)
        r = F.relu(self.bn_shared(self.conv2(r))) + r  # the same layer again
        v = self.fc0(r.mean(dim=(2, 3)))
        return self.fc(F.relu(self.bn_head(v)))


def _net():
    net = Net()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
                m.running_mean.copy_(torch.randn_like(m.running_mean))
                m.running_var.copy_(torch.rand_like(m.running_var) + 0.5)
                m.weight.copy_(torch.rand_like(m.weight) + 0.5)
    return net.eval()


def _direct(net, x):
    """The BN inputs and their layers' running stats, written out by hand (the oracle)."""
    a = net.conv1(x)
    h = F.relu(net.bn1(a))
    b = net.conv2(h)
    r = F.relu(net.bn_shared(b)) + h
    r = net.bn_nostats(r)
    c = net.conv2(r)
    r = F.relu(net.bn_shared(c)) + r
    v = net.fc0(r.mean(dim=(2, 3)))
    layers = [net.bn1, net.bn_shared, net.bn_shared, net.bn_head]
    return [a, b, c, v], [m.running_mean for m in layers], [m.running_var for m in layers]


def test_loss_matches_direct_computation(cpu_backend):
    net = _net()
    x = torch.randn(6, 3, 8, 8)
    cap = BNCapture(net)
    assert len(cap.modules) == 3  # bn_head, bn_shared, bn1; not bn_nostats
    xa = x.clone().requires_grad_()
    with cap.capture():
        net(xa)
    assert [m for m in cap.layers] == [net.bn1, net.bn_shared, net.bn_shared, net.bn_head]  # forward order
    assert [f.shape for f in cap.inputs] == [(6, 8, 8, 8)] * 3 + [(6, 8)]
    loss = adadfq_fast.bn_stat_loss(cap.inputs, cap.running_means, cap.running_vars)
    (gx,) = torch.autograd.grad(loss, xa)

    xb = x.clone().requires_grad_()
    feats, rms, rvs = _direct(net, xb)
    expected = ref.bn_stat_loss(feats, rms, rvs)
    (gx_ref,) = torch.autograd.grad(expected, xb)
    torch.testing.assert_close(loss, expected, **TOL[torch.float32])
    torch.testing.assert_close(gx, gx_ref, **TOL[torch.float32])

    # cap.loss() is the same thing, and hands the tensors over.
    with cap.capture():
        net(x)
    torch.testing.assert_close(cap.loss(), expected.detach(), **TOL[torch.float32])
    assert len(cap) == 0


def test_no_growth_across_iterations_and_outside_captures():
    net = _net()
    x = torch.randn(4, 3, 8, 8)
    with BNCapture(net) as cap:  # hooks stay installed for the whole loop
        assert cap.attached
        for _ in range(5):
            with cap.capture():
                net(x)
            assert len(cap) == 4
            net(x)  # e.g. an evaluation forward: not recorded
            with torch.no_grad():
                net(x)
            assert len(cap) == 4
            cap.take()
            assert len(cap) == 0
    assert not cap.attached
    assert all(len(m._forward_pre_hooks) == 0 for m in net.modules())


def test_temporary_hooks_leave_nothing_behind():
    net = _net()
    cap = BNCapture(net)
    with cap.capture():
        net(torch.randn(3, 3, 8, 8))
        assert all(len(m._forward_pre_hooks) == 1 for m in cap.modules)
    assert all(len(m._forward_pre_hooks) == 0 for m in net.modules())
    feats, rms, rvs = cap.take()  # records survive the block
    assert len(feats) == len(rms) == len(rvs) == 4
    assert rms[0] is net.bn1.running_mean  # the layers' own buffers, no copies


def test_eval_mode_statistics_unchanged_and_errors():
    net = _net()
    before = [m.running_mean.clone() for m in BNCapture(net).modules]
    cap = BNCapture(net)
    with cap.capture():
        net(torch.randn(4, 3, 8, 8) * 5 + 3)
    assert all(torch.equal(a, m.running_mean) for a, m in zip(before, cap.modules))
    cap.clear()
    with pytest.raises(RuntimeError, match="nothing captured"):
        cap.take()
    with pytest.raises(RuntimeError, match="nothing captured"):
        cap.loss()
    with cap.capture():
        with pytest.raises(RuntimeError, match="do not nest"):
            with cap.capture():
                pass
    with pytest.raises(ValueError, match="no BatchNorm"):
        BNCapture(nn.Sequential(nn.Linear(2, 2)))


def test_gradient_reaches_the_generator(cpu_backend):
    """The path L_BNS -> P -> x -> G of the game: every generator parameter gets a gradient."""
    net = _net()
    for p in net.parameters():
        p.requires_grad_(False)
    G = build_generator("cifar", 5, 8, 3)
    cap = BNCapture(net)
    z, y = G.sample_inputs(4)
    with cap.capture():
        net(G(z, y))
    cap.loss().backward()
    for name, p in G.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
