"""Triton kernels (installed as ``adadfq_fast.kernels``). ``KERNELS`` maps kernel names to launchers with the
signatures of ``adadfq_fast.ops.native.SCHEMAS``."""
KERNELS = {}
