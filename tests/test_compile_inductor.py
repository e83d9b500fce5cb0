"""One end-to-end torch.compile(fullgraph=True) with the default (inductor) backend over every op, forward and
backward. The per-op files use the cheaper aot_eager backend; this checks the real compiler path once."""
import pytest
import torch

import adadfq_fast


@pytest.mark.slow
def test_all_ops_under_inductor():
    torch._dynamo.reset()
    conv = torch.nn.Conv2d(4, 8, 3, padding=1)
    fc = torch.nn.Linear(8, 10)
    rm, rv = torch.zeros(8), torch.ones(8)
    y = torch.randint(0, 10, (6,))

    def step(x, teacher_logits, state):
        w = adadfq_fast.fake_quant_weight(conv.weight, 4)
        h = torch.nn.functional.conv2d(x, w, conv.bias, padding=1)
        l_bns = adadfq_fast.bn_stat_loss([h], [rm], [rv])
        h = adadfq_fast.fake_quant_act(torch.relu(h), 4, state)
        h = adadfq_fast.fake_quant(h, 4, torch.tensor(0.0), torch.tensor(2.0))
        s = fc(h.mean(dim=(2, 3)))
        margin, bal = adadfq_fast.adadfq_generator_loss(teacher_logits, s, y)
        return margin + bal + l_bns + adadfq_fast.adadfq_student_loss(teacher_logits, s)

    x = torch.randn(6, 4, 8, 8, requires_grad=True)
    t = torch.randn(6, 10)
    s1, s2 = adadfq_fast.new_act_state(), adadfq_fast.new_act_state()
    compiled = torch.compile(step, fullgraph=True)
    out = compiled(x, t, s1)
    grads = torch.autograd.grad(out, (x, conv.weight, fc.weight))
    expected = step(x, t, s2)
    grads_eager = torch.autograd.grad(expected, (x, conv.weight, fc.weight))
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)
    for a, b in zip(grads, grads_eager):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5)
    assert torch.equal(s1, s2)
