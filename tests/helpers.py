"""Input builders shared by the op tests."""
import torch

import adadfq_fast

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def layouts(x: torch.Tensor):
    """The same values in the memory layouts the kernels must accept: contiguous, channels_last, strided."""
    out = {"contiguous": x.contiguous()}
    if x.dim() == 4:
        out["channels_last"] = x.contiguous(memory_format=torch.channels_last)
    # A non-dense view: every other element of an interleaved tensor (the op must copy it, not misread it).
    out["strided"] = torch.stack([x, torch.zeros_like(x)], dim=-1)[..., 0]
    assert torch.equal(out["strided"], x)
    return out


def both_paths(fn):
    """Run ``fn`` through the eager fast path and through the registered custom op; both must agree."""
    from adadfq_fast.ops import _eager

    eager = fn()
    original = _eager.use_custom_op
    try:
        import adadfq_fast.ops.bn_stat_loss as m1, adadfq_fast.ops.fake_quant as m2, adadfq_fast.ops.fake_quant_act as m3
        import adadfq_fast.ops.fake_quant_weight as m4, adadfq_fast.ops.generator_loss as m5, adadfq_fast.ops.student_loss as m6

        mods = (m1, m2, m3, m4, m5, m6)
        for m in mods:
            m.use_custom_op = lambda *a: True
        via_op = fn()
    finally:
        for m in mods:
            m.use_custom_op = original
    return eager, via_op


def backends_for_cpu():
    return [b for b in adadfq_fast.available_backends("cpu")]
