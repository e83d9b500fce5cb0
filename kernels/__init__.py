"""Triton kernels (installed as ``adadfq_fast.kernels``). ``KERNELS`` maps kernel names to launchers with the
signatures of ``adadfq_fast.ops.native.SCHEMAS``.

They run on CUDA tensors, and on CPU tensors under ``TRITON_INTERPRET=1`` (which must be set before this package
is imported: ``@triton.jit`` reads it when the kernels are defined)."""
from .bn_stat_loss import bn_stat_loss, bn_stat_loss_backward
from .fake_quant import fake_quant
from .fake_quant_act import fake_quant_act
from .fake_quant_weight import fake_quant_weight
from .generator_loss import generator_loss, generator_loss_backward
from .int_conv2d import int_conv2d
from .quantize_codes import quantize_codes
from .student_loss import student_loss, student_loss_backward

KERNELS = {
    "fake_quant": fake_quant,
    "fake_quant_weight": fake_quant_weight,
    "fake_quant_act": fake_quant_act,
    "bn_stat_loss": bn_stat_loss,
    "bn_stat_loss_backward": bn_stat_loss_backward,
    "generator_loss": generator_loss,
    "generator_loss_backward": generator_loss_backward,
    "student_loss": student_loss,
    "student_loss_backward": student_loss_backward,
    "int_conv2d": int_conv2d,
    "quantize_codes": quantize_codes,
}
