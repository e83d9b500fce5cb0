"""The quantized network Q: quantized layers, the activation quantizer and ``quantize_model``."""
from .checkpoint import is_q_checkpoint, load_q_checkpoint, read_q_checkpoint, save_q_checkpoint
from .modules import QuantAct, QuantConv2d, QuantLinear, QuantReLU
from .quantize import (
    act_quantizers,
    freeze_act_ranges,
    quantize_model,
    relu_call_counts,
    set_bits,
    set_quant_options,
    unfreeze_act_ranges,
    weight_quantizers,
)

__all__ = [
    "QuantConv2d",
    "QuantLinear",
    "QuantAct",
    "QuantReLU",
    "quantize_model",
    "relu_call_counts",
    "act_quantizers",
    "weight_quantizers",
    "freeze_act_ranges",
    "unfreeze_act_ranges",
    "set_bits",
    "set_quant_options",
    "save_q_checkpoint",
    "load_q_checkpoint",
    "read_q_checkpoint",
    "is_q_checkpoint",
]
