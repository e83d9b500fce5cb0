"""adadfq_fast.nn: the quantized network Q (QuantConv2d, QuantLinear, QuantAct, quantize_model, helpers).

The oracle for Q's forward is P itself with forward hooks that swap, step by step, each conv/linear output for
one computed with ``reference.fake_quant_weight`` and each ReLU/ReLU6 output for ``reference.fake_quant_act``
over its own range state: the spec written against the float model, independent of ``adadfq_fast.nn``.
"""
import copy
import io
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import adadfq_fast
from adadfq_fast import reference as ref
from adadfq_fast.nn import (
    QuantAct,
    QuantConv2d,
    QuantLinear,
    QuantReLU,
    act_quantizers,
    freeze_act_ranges,
    quantize_model,
    relu_call_counts,
    set_bits,
    unfreeze_act_ranges,
)


# ---------------------------------------------------------------------------------------------------------
# Small models
# ---------------------------------------------------------------------------------------------------------
def conv_bn_relu(cin, cout, stride=1, act=True, groups=1, act_type=nn.ReLU):
    layers = [nn.Conv2d(cin, cout, 3, stride, 1, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    return nn.Sequential(*layers, act_type()) if act else nn.Sequential(*layers)


def stack_net():
    """conv-bn-relu stack, biased first conv, linear head with a hidden ReLU."""
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(inplace=True),
        conv_bn_relu(8, 16, stride=2), conv_bn_relu(16, 16),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 10),
    )


class BasicUnit(nn.Module):
    """pytorchcv's ResUnit: a distinct ReLU module after conv1 and after the addition."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = conv_bn_relu(cin, cout, stride)
        self.conv2 = conv_bn_relu(cout, cout, act=False)
        self.identity = None
        if stride != 1 or cin != cout:
            self.identity = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        self.activ = nn.ReLU(inplace=True)

    def forward(self, x):
        idt = x if self.identity is None else self.identity(x)
        return self.activ(self.conv2(self.conv1(x)) + idt)


class ResNet20(nn.Module):
    """CIFAR ResNet-20 laid out like pytorchcv's resnet20_cifar10 (the original's P)."""

    def __init__(self, num_classes=10):
        super().__init__()
        layers = [conv_bn_relu(3, 16)]
        cin = 16
        for i, cout in enumerate((16, 32, 64)):
            for j in range(3):
                layers.append(BasicUnit(cin, cout, 2 if (j == 0 and i > 0) else 1))
                cin = cout
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1))
        self.output = nn.Linear(64, num_classes)

    def forward(self, x):
        return self.output(self.features(x).flatten(1))


class SharedReLUBlock(nn.Module):
    """torchvision's BasicBlock: ONE ReLU module applied twice per forward."""

    def __init__(self, c):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + x)


def shared_relu_net():
    return nn.Sequential(conv_bn_relu(3, 8), SharedReLUBlock(8), SharedReLUBlock(8),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand + ReLU6, depthwise 3x3 + ReLU6, 1x1 project (linear), residual."""

    def __init__(self, cin, cout, stride, expand=4):
        super().__init__()
        mid = cin * expand
        self.conv = nn.Sequential(
            nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU6(inplace=True),
            nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False), nn.BatchNorm2d(mid), nn.ReLU6(inplace=True),
            nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout),
        )
        self.use_res = stride == 1 and cin == cout

    def forward(self, x):
        return x + self.conv(x) if self.use_res else self.conv(x)


def mobilenet_net():
    return nn.Sequential(conv_bn_relu(3, 8, stride=2, act_type=nn.ReLU6), InvertedResidual(8, 8, 1),
                         InvertedResidual(8, 16, 2), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2),
                         nn.Linear(16, 10))


class FunctionalReLUNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.bn, self.relu = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU()
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        x = self.relu(self.bn(self.conv(x)))
        x = F.relu(x - 0.1) + torch.relu(x) + F.relu6(x)
        return self.fc(x.mean((2, 3)).relu())


def randomize_bn(model):
    """Non-trivial BN statistics and affine parameters, so BN really does something in eval."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.2)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.2)
    return model


MODELS = {
    "stack": (stack_net, (2, 3, 16, 16)),
    "resnet20": (ResNet20, (2, 3, 32, 32)),
    "shared_relu": (shared_relu_net, (2, 3, 12, 12)),
    "mobilenet": (mobilenet_net, (2, 3, 16, 16)),
}


def make(kind):
    build, shape = MODELS[kind]
    return randomize_bn(build()).eval(), shape


# ---------------------------------------------------------------------------------------------------------
# The oracle: P with forward hooks applying the reference quantizers, one range state per ReLU call site
# ---------------------------------------------------------------------------------------------------------
class ReferenceQ:
    def __init__(self, model, wbits, abits, beta=0.9, per_call_site=True):
        self.model, self.wbits, self.abits, self.beta = model, wbits, abits, beta
        self.per_call_site = per_call_site
        self.states = {}  # (relu module name, call index) -> state
        self.frozen = False
        self.names = {id(m): n for n, m in model.named_modules()}
        for m in model.modules():
            if type(m) in (nn.Conv2d, nn.Linear):
                m.register_forward_hook(self._weight_hook)
            elif type(m) in (nn.ReLU, nn.ReLU6):
                m.register_forward_hook(self._act_hook)

    def _weight_hook(self, m, inputs, out):
        w_q = ref.fake_quant_weight(m.weight, self.wbits)
        if isinstance(m, nn.Linear):
            return F.linear(inputs[0], w_q, m.bias)
        return F.conv2d(inputs[0], w_q, m.bias, m.stride, m.padding, m.dilation, m.groups)

    def _act_hook(self, m, inputs, out):
        name = self.names[id(m)]
        i = self.calls.get(name, 0)
        self.calls[name] = i + 1
        key = (name, i if self.per_call_site else 0)
        state = self.states.setdefault(key, adadfq_fast.new_act_state())
        return ref.fake_quant_act(out, self.abits, state, self.beta, update=not self.frozen)

    def __call__(self, x):
        self.calls = {}
        return self.model(x)


def q_states(q):
    """{(name, site): state} of Q, keyed like ReferenceQ.states (the QuantReLU's name is the ReLU's)."""
    return {(n, i): qa.state for n, m in q.named_modules() if isinstance(m, QuantReLU) for i, qa in enumerate(m.quant)}


def assert_states_equal(q, oracle):
    got = q_states(q)
    used = {k: v for k, v in got.items() if not torch.equal(v, adadfq_fast.new_act_state())}
    assert used.keys() == oracle.states.keys()
    for k, v in oracle.states.items():
        assert torch.equal(got[k], v), f"{k}: {got[k]} vs {v}"


def count(model, cls):
    return sum(1 for m in model.modules() if type(m) is cls)


# ---------------------------------------------------------------------------------------------------------
# Structure
# ---------------------------------------------------------------------------------------------------------
def test_resnet20_counts():
    p = ResNet20().eval()
    for example in (None, torch.randn(1, 3, 32, 32)):
        q = quantize_model(p, 4, 4, example_input=example)
        assert len(act_quantizers(q)) == 19  # spec: one after every ReLU, 19 in ResNet-20
        assert count(q, QuantReLU) == 19 and count(q, QuantConv2d) == 21 and count(q, QuantLinear) == 1
        assert count(q, nn.Conv2d) == 0 and count(q, nn.Linear) == 0
        assert count(q, nn.BatchNorm2d) == count(p, nn.BatchNorm2d) == 21  # BN untouched, not folded
        assert all(isinstance(m.act, nn.ReLU) for m in q.modules() if isinstance(m, QuantReLU))
        assert isinstance(q.features[0][0], QuantConv2d) and isinstance(q.output, QuantLinear)  # first, last


def test_pytorchcv_resnet20_counts():
    resnet_cifar = pytest.importorskip("pytorchcv.models.resnet_cifar")
    p = resnet_cifar.resnet20_cifar10(pretrained=False).eval()
    q = quantize_model(p, 3, 3, example_input=torch.randn(1, 3, 32, 32))
    assert len(act_quantizers(q)) == 19 and count(q, QuantConv2d) == 21 and count(q, QuantLinear) == 1


def test_other_model_counts():
    q = quantize_model(stack_net(), 4, 4)
    assert count(q, QuantConv2d) == 3 and count(q, QuantLinear) == 2 and len(act_quantizers(q)) == 4
    q = quantize_model(mobilenet_net(), 4, 4)
    assert count(q, QuantConv2d) == 7 and count(q, QuantLinear) == 1 and len(act_quantizers(q)) == 5
    assert all(isinstance(m.act, nn.ReLU6) for m in q.modules() if isinstance(m, QuantReLU))
    assert count(q, nn.Dropout) == 1 and count(q, nn.AdaptiveAvgPool2d) == 1


def test_state_dict_keys_keep_original_names():
    p = ResNet20()
    q = quantize_model(p, 4, 4)
    p_keys, q_keys = set(p.state_dict()), set(q.state_dict())
    assert p_keys <= q_keys  # conv/linear/BN keys unchanged
    extra = q_keys - p_keys
    assert len(extra) == 2 * 19 and all(".quant.0." in k for k in extra)
    assert "features.1.activ.quant.0.state" in extra and "features.1.activ.quant.0._extra_state" in extra
    # A float checkpoint of P loads into Q; only the range states are missing.
    missing, unexpected = q.load_state_dict(p.state_dict(), strict=False)
    assert set(missing) == extra and not unexpected


def test_shared_relu_call_sites():
    """A ReLU module applied twice per forward: one QuantAct per call site when traced, else one shared."""
    p = shared_relu_net().eval()
    x = torch.randn(2, 3, 12, 12)
    per_module, functional = relu_call_counts(p, x)
    assert per_module == {"0.2": 1, "1.relu": 2, "2.relu": 2} and functional == 0

    q = quantize_model(p, 4, 4, example_input=x)
    assert len(act_quantizers(q)) == 5 and len(q[1].relu.quant) == 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        q(x)
        q(x)
    assert all(not torch.equal(qa.state, adadfq_fast.new_act_state()) for qa in act_quantizers(q))

    q1 = quantize_model(p, 4, 4)  # the original's behaviour: one QuantAct per module, shared by its calls
    assert len(act_quantizers(q1)) == 3
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        q1(x)
    assert sorted(str(w.message).split(":")[0] for w in record) == ["QuantReLU 1.relu", "QuantReLU 2.relu"]
    assert "called more than 1 time(s) per forward" in str(record[0].message)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        q1(x)  # once per module


def test_functional_relu_detected():
    p = FunctionalReLUNet().eval()
    per_module, functional = relu_call_counts(p, torch.randn(2, 3, 8, 8))
    assert per_module == {"relu": 1} and functional == 4
    with pytest.warns(UserWarning, match="4 functional ReLU"):
        q = quantize_model(p, 4, 4, example_input=torch.randn(2, 3, 8, 8))
    assert len(act_quantizers(q)) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        quantize_model(stack_net(), 4, 4, example_input=torch.randn(2, 3, 8, 8))  # nothing functional


def test_original_untouched_and_bn_stats_fixed():
    p = randomize_bn(ResNet20()).train()  # train mode: the trace must still not touch BN statistics
    before = copy.deepcopy(p.state_dict())
    types = [type(m) for m in p.modules()]
    q = quantize_model(p, 4, 4, example_input=torch.randn(2, 3, 32, 32))
    assert [type(m) for m in p.modules()] == types and p.training and q.training
    for k, v in p.state_dict().items():
        assert torch.equal(v, before[k]), k
        assert torch.equal(q.state_dict()[k], v), k  # Q starts from P's values, BN stats included
        assert q.state_dict()[k].data_ptr() != v.data_ptr(), k  # a copy, not shared storage
    q.eval()
    q(torch.randn(2, 3, 32, 32))
    loss = q(torch.randn(2, 3, 32, 32)).sum()
    loss.backward()
    assert all(p_.grad is None for p_ in p.parameters())
    for k, v in p.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_tied_modules_stay_tied():
    conv = nn.Conv2d(4, 4, 3, padding=1)
    relu = nn.ReLU()
    p = nn.Sequential(conv, relu, conv, relu)
    q = quantize_model(p, 4, 4, example_input=torch.randn(1, 4, 6, 6))
    assert q[0] is q[2] and isinstance(q[0], QuantConv2d) and q[1] is q[3] and len(q[1].quant) == 2


def test_already_quantized_and_bad_arguments():
    q = quantize_model(stack_net(), 4, 4)
    with pytest.raises(ValueError, match="already contains quantized modules"):
        quantize_model(q, 4, 4)
    for bad in (1, 9, 4.0, True, "4", None):
        with pytest.raises(ValueError, match="wbits"):
            quantize_model(stack_net(), bad, 4)
        with pytest.raises(ValueError, match="abits"):
            quantize_model(stack_net(), 4, bad)
        if bad is not None:  # set_bits: None means "leave unchanged"
            with pytest.raises(ValueError, match="wbits"):
                set_bits(q, wbits=bad)
        with pytest.raises(ValueError, match="abits"):
            QuantAct(bad)
        with pytest.raises(ValueError, match="wbits"):
            QuantConv2d(3, 4, 3, wbits=bad)
    for bad in (1.0, -0.1, True):
        with pytest.raises(ValueError, match="beta"):
            quantize_model(stack_net(), 4, 4, beta=bad)
    with pytest.raises(TypeError, match="model"):
        quantize_model(lambda x: x, 4, 4)


def test_set_bits():
    q = quantize_model(stack_net(), 4, 4)
    set_bits(q, wbits=3)
    assert all(m.wbits == 3 for m in q.modules() if isinstance(m, (QuantConv2d, QuantLinear)))
    assert all(m.abits == 4 for m in act_quantizers(q))
    set_bits(q, abits=8)
    assert all(m.abits == 8 for m in act_quantizers(q))


# ---------------------------------------------------------------------------------------------------------
# Numerics
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", list(MODELS))
def test_forward_matches_reference(cpu_backend, kind):
    """Unfrozen steps, a range reset, then frozen steps: outputs and every range state bit-exact with the
    oracle at every step."""
    p, shape = make(kind)
    q = quantize_model(p, 3, 4, example_input=torch.randn(shape))
    oracle = ReferenceQ(copy.deepcopy(p), 3, 4)
    levels = []  # distinct values out of the first QuantAct: the comparison must not be of degenerate outputs
    act_quantizers(q)[0].register_forward_hook(lambda m, i, o: levels.append(o.unique().numel()))
    for step in range(6):
        if step == 3:
            # The faithful EMA overshoots for ~50 updates (spec), leaving few levels; restart it, update once
            # and freeze, so the frozen steps quantize over a sensible range.
            for a in act_quantizers(q):
                a.reset_range()
            oracle.states = {}
        if step == 4:
            freeze_act_ranges(q)
            oracle.frozen = True
        x = torch.randn(shape) * (1 + step % 3)
        with torch.no_grad():
            out, expected = q(x), oracle(x)
        assert torch.equal(out, expected), f"step {step}: max diff {(out - expected).abs().max()}"
        assert_states_equal(q, oracle)
    assert levels[0] > 8 and min(levels[3:]) > 4, levels


def test_shared_site_matches_reference(cpu_backend):
    """Without a trace a reused ReLU shares one state, as in the original; the oracle agrees."""
    p, shape = make("shared_relu")
    q = quantize_model(p, 4, 4)
    oracle = ReferenceQ(copy.deepcopy(p), 4, 4, per_call_site=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(3):
            x = torch.randn(shape)
            assert torch.equal(q(x), oracle(x))
    assert_states_equal(q, oracle)


def test_ranges_update_only_while_unfrozen():
    p, shape = make("stack")
    q = quantize_model(p, 4, 4)
    acts = act_quantizers(q)
    assert all(not a.frozen for a in acts)
    q(torch.randn(shape))
    s1 = [a.state.clone() for a in acts]
    assert all(s[2] == pytest.approx(0.9) for s in s1)  # beta_t = 0.9 after one update
    q(torch.randn(shape))
    assert all(not torch.equal(a.state, s) for a, s in zip(acts, s1))
    freeze_act_ranges(q)
    assert all(a.frozen for a in acts)
    s2 = [a.state.clone() for a in acts]
    out = q(torch.randn(shape) * 5)
    assert all(torch.equal(a.state, s) for a, s in zip(acts, s2))
    # Frozen: the last activation is quantized over the stored range, so the logits use its levels.
    assert torch.isfinite(out).all()
    unfreeze_act_ranges(q)
    q(torch.randn(shape))
    assert all(not torch.equal(a.state, s) for a, s in zip(acts, s2))
    # Updates do not depend on train()/eval(): Q stays in eval() for the whole game.
    q.train()
    s3 = [a.state.clone() for a in acts]
    q(torch.randn(shape))
    assert all(not torch.equal(a.state, s) for a, s in zip(acts, s3))


@pytest.mark.parametrize("kind", ["resnet20", "mobilenet"])
def test_gradients_reach_weights_and_bn_affine(kind):
    """Q in eval(): gradients (STE) reach every weight, bias and BN affine parameter, equal to the oracle's,
    and BN running statistics do not move."""
    p, shape = make(kind)
    q = quantize_model(p, 4, 4)
    oracle_model = copy.deepcopy(p)
    oracle = ReferenceQ(oracle_model, 4, 4)
    x = torch.randn(shape)
    bn_before = {k: v.clone() for k, v in q.state_dict().items() if "running" in k}
    g = torch.randn(shape[0], 10)
    q(x).backward(g)
    oracle(x).backward(g)
    named_ref = dict(oracle_model.named_parameters())
    for name, param in q.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name
        torch.testing.assert_close(param.grad, named_ref[name].grad, rtol=1e-5, atol=1e-6, msg=name)
    for k, v in bn_before.items():
        assert torch.equal(q.state_dict()[k], v), k
    assert any(isinstance(m, nn.BatchNorm2d) and m.weight.grad is not None for m in q.modules())


def test_input_gradient_flows_to_generator_side():
    """s = Q(x) with x not detached: the generator needs d s / d x through the STE."""
    p, shape = make("stack")
    q = quantize_model(p, 4, 4)
    x = torch.randn(shape, requires_grad=True)
    q(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_state_dict_round_trip():
    p, shape = make("shared_relu")
    x0 = torch.randn(shape)
    q = quantize_model(p, 4, 3, example_input=x0)
    for _ in range(3):
        q(torch.randn(shape))
    acts = act_quantizers(q)
    acts[0].freeze()
    acts[3].freeze()
    buf = io.BytesIO()
    torch.save(q.state_dict(), buf)
    buf.seek(0)
    sd = torch.load(buf, weights_only=True)

    q2 = quantize_model(p, 4, 3, example_input=x0)
    q2.load_state_dict(sd)  # strict: every key, range states and frozen flags included
    acts2 = act_quantizers(q2)
    assert [a.frozen for a in acts2] == [a.frozen for a in acts] == [True, False, False, True, False]
    assert all(torch.equal(a.state, b.state) for a, b in zip(acts, acts2))
    x = torch.randn(shape)
    assert torch.equal(q(x), q2(x))
    assert all(torch.equal(a.state, b.state) for a, b in zip(acts, acts2))
    # A full-module deepcopy (e.g. the engine's best-epoch snapshot) carries everything and counts call sites
    # independently of the original.
    q3 = copy.deepcopy(q)
    assert torch.equal(q3(x), q(x))
    assert all(torch.equal(a.state, b.state) for a, b in zip(act_quantizers(q3), acts))


def test_dtype_and_channels_last(cpu_backend):
    p, shape = make("resnet20")
    q = quantize_model(p, 4, 4)
    q(torch.randn(shape))  # some range history that a dtype change must not round
    states = [a.state.clone() for a in act_quantizers(q)]

    qb = copy.deepcopy(q).to(torch.bfloat16)
    assert all(a.state.dtype == torch.float32 and torch.equal(a.state, s) for a, s in zip(act_quantizers(qb), states))
    assert qb.features[0][0].weight.dtype == torch.bfloat16
    oracle = ReferenceQ(copy.deepcopy(p).to(torch.bfloat16), 4, 4)
    oracle.states = {k: v.clone() for k, v in q_states(q).items()}
    x = torch.randn(shape).to(torch.bfloat16)
    out = qb(x)
    assert out.dtype == torch.bfloat16 and torch.equal(out, oracle(x))
    assert_states_equal(qb, oracle)
    qh = copy.deepcopy(q).half()
    assert all(a.state.dtype == torch.float32 for a in act_quantizers(qh))

    oracle = ReferenceQ(copy.deepcopy(p), 4, 4)
    oracle.states = {k: v.clone() for k, v in q_states(q).items()}
    x = torch.randn(shape).contiguous(memory_format=torch.channels_last)
    out = q(x)
    assert torch.equal(out, oracle(x))
    assert_states_equal(q, oracle)
    q_cl = copy.deepcopy(q).to(memory_format=torch.channels_last)
    torch.testing.assert_close(q_cl(x), oracle(x), rtol=1e-4, atol=1e-4)


def test_quant_modules_direct():
    """The layers on their own: drop-in construction, float bias, weight quantized per output channel."""
    conv = QuantConv2d(3, 6, 3, padding=1, wbits=2)
    lin = QuantLinear(5, 4, wbits=8)
    x = torch.randn(2, 3, 5, 5)
    w_q = ref.fake_quant_weight(conv.weight, 2)
    assert torch.equal(conv(x), F.conv2d(x, w_q, conv.bias, padding=1))
    assert len(torch.unique(w_q[0])) <= 4  # 2 bits per channel
    v = torch.randn(3, 5)
    assert torch.equal(lin(v), F.linear(v, ref.fake_quant_weight(lin.weight, 8), lin.bias))
    conv(x).sum().backward()
    assert conv.weight.grad is not None and conv.bias.grad is not None
    assert "wbits=2" in repr(conv)

    qa = QuantAct(4)
    assert torch.equal(qa.state, torch.tensor([0.0, 0.0, 1.0])) and qa.state.dtype == torch.float32
    assert "state" in dict(qa.named_buffers())
    qa(torch.rand(10))
    assert qa.beta_t.item() == pytest.approx(0.9)
    qa.reset_range()
    assert torch.equal(qa.state, adadfq_fast.new_act_state())
    assert "frozen=False" in repr(qa.freeze().unfreeze())


def test_compiles_fullgraph_without_recompiles():
    """Q (call-site counters, in-place range updates) traces as one graph and matches eager step by step."""
    p, shape = make("shared_relu")
    q = quantize_model(p, 4, 4, example_input=torch.randn(shape))
    q_eager = copy.deepcopy(q)
    torch._dynamo.reset()
    compiled = torch.compile(q, backend="aot_eager", fullgraph=True)
    with torch._dynamo.config.patch(error_on_recompile=True):
        for step in range(3):
            x = torch.randn(shape)
            assert torch.equal(compiled(x), q_eager(x)), step
    assert all(torch.equal(a.state, b.state) for a, b in zip(act_quantizers(q), act_quantizers(q_eager)))
