"""Public fused ops (namespace ``adadfq``); one op per module. Importing this registers them."""
from . import native  # noqa: F401  (kernel-level schemas must exist before the native libraries load)
from .bn_stat_loss import bn_stat_loss
from .fake_quant import fake_quant
from .fake_quant_act import fake_quant_act, new_act_state
from .fake_quant_weight import fake_quant_weight
from .generator_loss import adadfq_generator_loss, adadfq_generator_loss_with_entropy
from .int_conv2d import int_conv2d
from .quantize_codes import quantize_codes
from .student_loss import adadfq_student_loss

__all__ = [
    "fake_quant",
    "fake_quant_weight",
    "fake_quant_act",
    "new_act_state",
    "bn_stat_loss",
    "adadfq_generator_loss",
    "adadfq_generator_loss_with_entropy",
    "adadfq_student_loss",
    "int_conv2d",
    "quantize_codes",
]
