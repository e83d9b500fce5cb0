"""Schemas of the kernel-level ops that the compiled libraries implement.

Declared here, once, in Python (the torchao pattern): ``csrc/`` only provides ``TORCH_LIBRARY_IMPL`` for the CPU
(``adadfq_fast._C``) and CUDA (``adadfq_fast._C_cuda``) dispatch keys. These are internal: users call the public
ops in ``adadfq_fast.ops`` (namespace ``adadfq``), which pick a backend and handle autograd. Every backend's
kernel has exactly these signatures; the pure-PyTorch versions are in ``adadfq_fast.reference``.

Conventions shared by every implementation:
* float32, float16 and bfloat16 inputs; arithmetic in float32; outputs in the input dtype except losses and
  statistics, which are float32.
* ``axis = -1`` means per tensor (``lo``/``hi`` hold one value); otherwise ``lo``/``hi`` have ``x.shape[axis]``
  entries. ``x`` may be contiguous in any dimension order (e.g. channels_last); outputs keep its strides.
* ``fake_quant_act`` is functional: it returns ``(out, new_state)`` and the public op copies ``new_state``
  into the caller's state (a mutating op could not carry an autograd formula).
* Upstream gradients of losses arrive as 0-d tensors and are read on the device (no host synchronisation).
"""
import torch

NAMESPACE = "adadfq_native"

SCHEMAS = {
    "fake_quant": "(Tensor x, int bits, Tensor lo, Tensor hi, int axis) -> Tensor",
    "fake_quant_weight": "(Tensor w, int bits) -> Tensor",
    "fake_quant_act": "(Tensor x, int bits, Tensor state, float beta, bool update) -> (Tensor, Tensor)",
    "bn_stat_loss": "(Tensor[] feats, Tensor[] running_means, Tensor[] running_vars) -> (Tensor, Tensor)",
    "bn_stat_loss_backward": (
        "(Tensor grad, Tensor[] feats, Tensor[] running_means, Tensor[] running_vars, Tensor stats) -> Tensor[]"
    ),
    "generator_loss": (
        "(Tensor t, Tensor s, Tensor y, float lambda_l, float lambda_u, float alpha_ds, float alpha_as)"
        " -> (Tensor, Tensor, Tensor)"
    ),
    "generator_loss_backward": (
        "(Tensor grad_margin, Tensor grad_bal, Tensor t, Tensor s, Tensor y, Tensor row_stats,"
        " float lambda_l, float lambda_u, float alpha_ds, float alpha_as) -> (Tensor, Tensor)"
    ),
    "student_loss": "(Tensor t, Tensor s, float temperature) -> (Tensor, Tensor)",
    "student_loss_backward": "(Tensor grad, Tensor t, Tensor s, Tensor row_stats, float temperature) -> Tensor",
    # Integer inference (see adadfq_fast/ops/int_conv2d.py): uint8 activation codes x int8 weight levels, fused
    # float32 epilogue; out_bits = 0 returns float32, else uint8 codes.
    "int_conv2d": (
        "(Tensor x, Tensor weight, Tensor weight_zero, int[2] stride, int[2] padding, int[2] dilation,"
        " int groups, Tensor out_mult, Tensor out_bias, Tensor? residual, float residual_scale, bool relu,"
        " int out_bits, float out_scale, float out_zero) -> Tensor"
    ),
    # The QuantAct steps of the integer model's float layers in one pass (adadfq_fast/ops/quantize_codes.py):
    # float32 -> uint8 codes, optionally after a per-channel fma (a float layer's eval BatchNorm).
    "quantize_codes": (
        "(Tensor y, float scale, float zero, int bits, bool relu, Tensor? channel_mult=None,"
        " Tensor? channel_add=None) -> Tensor"
    ),
}

# Kernels that the CUDA library does not implement: on CUDA tensors the triton backend serves them (quantize_codes:
# one elementwise pass, written for the GPU in Triton only), else the reference.
NOT_IN_CUDA_LIBRARY = ("quantize_codes",)

_lib = torch.library.Library(NAMESPACE, "DEF")
for _name, _schema in SCHEMAS.items():
    _lib.define(_name + _schema)


_HANDLES = {}


def has_native_kernel(name: str, dispatch_key: str) -> bool:
    """Whether a loaded native library implements ``adadfq_native::<name>`` for ``dispatch_key`` ("CPU", "CUDA").

    A schema may be declared before every library implements it (the kernels of a new op land per backend), so
    backends register only the kernels that exist; the others fall back to a backend that has them."""
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"{NAMESPACE}::{name}", dispatch_key)


def native_op(name: str):
    """The ``adadfq_native::<name>`` overload (cached: attribute lookups on torch.ops cost microseconds)."""
    op = _HANDLES.get(name)
    if op is None:
        op = _HANDLES[name] = getattr(getattr(torch.ops, NAMESPACE), name).default
    return op
