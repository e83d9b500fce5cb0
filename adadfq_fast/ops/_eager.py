"""The skeleton every public op is built from: :class:`FusedOp`.

An op module writes only what is its own: the checks and kernel arguments (``prepare``), the fake (meta)
implementation, and for a differentiable op its autograd formula. :class:`FusedOp` then

* declares the custom op ``adadfq::<name>``, whose implementation runs ``prepare`` and the kernel that the
  backend selection gives (``_backend.kernel_for``), and registers the fake and the autograd formula;
* for a fused backward, declares ``adadfq::<name>_backward`` (kernel ``<kernel>_backward``) the same way;
* provides the eager fast path (:meth:`FusedOp.call`).

Why an eager fast path: calling a ``torch.library.custom_op`` costs tens of microseconds of Python (argument
flattening, the autograd wrapper, two dispatcher hops), which is more than the fused kernels themselves take at
the game loop's sizes (e.g. both losses at batch 16). So in plain eager mode an op calls the *same* checked
kernels directly: the native op when a compiled backend serves it and carries its own C++ autograd formula
(csrc/cpu/autograd.cpp), else a light ``torch.autograd.Function`` (reference, Triton, or a native kernel without
C++ autograd), else, for an op without autograd, the checked kernel itself. Under ``torch.compile``/export
tracing, inside a dispatch mode (fake tensors, functionalization) or with tensor subclasses, it calls the
registered custom op, which is what those systems understand. Both paths run the same functions; tests compare
them (``tests/helpers.both_paths``).
"""
from __future__ import annotations

from typing import Callable, Dict, Optional, Sequence, Tuple

import torch

from .. import _backend
from .native import SCHEMAS, has_native_kernel, native_op


def use_custom_op(*tensors: torch.Tensor) -> bool:
    if torch.compiler.is_compiling() or torch._C._len_torch_dispatch_stack() > 0:
        return True
    return any(type(t) not in _PLAIN for t in tensors)


# Plain tensors and parameters run eagerly; any other subclass (FakeTensor, FunctionalTensor, user subclasses)
# goes through the custom op, whose dispatch those subclasses implement.
_PLAIN = (torch.Tensor, torch.nn.Parameter)

# Whether adadfq_native::<kernel> carries a C++ autograd formula (fixed once the libraries are loaded).
_NATIVE_AUTOGRAD: Dict[str, bool] = {}


def _device(arg) -> torch.device:
    """The device of an op's first argument: a tensor, or a list of them (bn_stat_loss)."""
    return arg.device if isinstance(arg, torch.Tensor) else arg[0].device


def straight_through(num_inputs: int) -> Callable:
    """The straight-through estimator's formula: the first output's gradient goes to the first input unchanged."""
    nones = (None,) * (num_inputs - 1)

    def backward(ctx, bwd, grad, *unused):
        return (grad,) + nones

    return backward


class FusedOp:
    """One public op ``adadfq::<name>`` computed by the backend kernel ``kernel``.

    ``prepare(*args)``: checks, then the kernel's arguments (same order). ``fake(*args)``: the meta outputs.
    ``empty(*kernel_args)``: the outputs for an empty first input, where the kernels are not called (optional).
    Autograd (optional; without it the op is inference only):
    ``backward(ctx, bwd, *grads)`` returns one gradient per input (a list of them for a list input); ``bwd`` is
    the fused backward (``adadfq::<name>_backward`` while tracing, its implementation eagerly) when
    ``backward_fake`` is given, else None. ``save(ctx, inputs, outputs)`` keeps what ``backward`` reads;
    ``backward_prepare`` turns the fused backward's arguments into its kernel's. Outputs listed in
    ``non_differentiable`` get no gradient. ``list_args``: some inputs are lists of tensors (the eager
    ``autograd.Function`` takes them flattened).
    """

    def __init__(self, name: str, kernel: str, prepare: Callable, fake: Callable, *, empty: Optional[Callable] = None,
                 backward: Optional[Callable] = None, save: Optional[Callable] = None,
                 backward_fake: Optional[Callable] = None, backward_prepare: Optional[Callable] = None,
                 non_differentiable: Sequence[int] = (), list_args: bool = False,
                 check_outputs: Optional[Callable] = None):
        self.kernel, self.prepare, self.empty = kernel, prepare, empty
        self.check_outputs = check_outputs  # (kernel args, outputs): value checks on what the kernel returned
        # The public op has its kernel's signature (ops/native.py), so every backend's kernel takes its arguments.
        self.op = torch.library.custom_op(f"adadfq::{name}", self.forward, mutates_args=(), schema=SCHEMAS[kernel])
        self.op.register_fake(fake)
        self.differentiable = backward is not None
        if not self.differentiable:
            self._eager = self.forward
            return
        bwd_op = bwd_impl = None
        if backward_fake is not None:
            backward_kernel = kernel + "_backward"
            unprepared = backward_prepare or (lambda *a: a)

            def bwd_impl(*args):
                kargs = unprepared(*args)  # (upstream gradient(s), the forward's inputs, ...): device of the latter
                return _backend.kernel_for(backward_kernel, _device(kargs[1]))(*kargs)

            bwd_op = torch.library.custom_op(f"adadfq::{name}_backward", bwd_impl, mutates_args=(),
                                             schema=SCHEMAS[backward_kernel])
            bwd_op.register_fake(backward_fake)
        self.op.register_autograd(lambda ctx, *grads: backward(ctx, bwd_op, *grads), setup_context=save)
        self._eager = self._eager_function(name, backward, save, bwd_impl, tuple(non_differentiable), list_args)

    def forward(self, *args):
        """The checked kernel call (the custom op's implementation, and the eager path's forward)."""
        kargs = self.prepare(*args)
        if self.empty is not None and kargs[0].numel() == 0:
            return self.empty(*kargs)
        out = _backend.kernel_for(self.kernel, _device(kargs[0]))(*kargs)
        if self.check_outputs is not None:
            self.check_outputs(kargs, out)
        return out

    def _eager_function(self, name, backward, save, bwd_impl, non_differentiable, list_args) -> Callable:
        forward_impl = self.forward

        # Old-style forward(ctx, ...): the setup_context style re-inspects the signature on every call (~40 us).
        def forward(ctx, *args):
            if list_args:
                args = _unflatten(args[0], args[1:])
            out = forward_impl(*args)
            if save is not None:
                save(ctx, args, out)
            for i in non_differentiable:
                ctx.mark_non_differentiable(out[i])
            return out

        if not list_args:
            def eager_backward(ctx, *grads):
                return backward(ctx, bwd_impl, *grads)

            return type(f"_Eager_{name}", (torch.autograd.Function,),
                        dict(forward=staticmethod(forward), backward=staticmethod(eager_backward))).apply

        def eager_backward(ctx, *grads):
            flat = [None]  # the lengths argument
            for g, n in zip(backward(ctx, bwd_impl, *grads), ctx.lengths):
                flat.extend(([None] * n if g is None else g) if n >= 0 else [g])
            return tuple(flat)

        def forward_lists(ctx, lengths, *flat):
            ctx.lengths = lengths
            return forward(ctx, lengths, *flat)

        apply = type(f"_Eager_{name}", (torch.autograd.Function,),
                     dict(forward=staticmethod(forward_lists), backward=staticmethod(eager_backward))).apply

        def call_flat(*args):
            lengths = tuple(len(a) if isinstance(a, list) else -1 for a in args)
            flat = [t for a in args for t in (a if isinstance(a, list) else (a,))]
            return apply(lengths, *flat)

        return call_flat

    def _native_fast_path(self, device: torch.device) -> bool:
        """Whether the compiled backend's op alone is the whole eager call: it serves this kernel here and carries
        its own C++ autograd formula, so its backward also runs without Python."""
        if not self.differentiable or _backend.resolve(self.kernel, device) not in _backend.NATIVE_BACKENDS:
            return False
        has = _NATIVE_AUTOGRAD.get(self.kernel)
        if has is None:
            has = _NATIVE_AUTOGRAD[self.kernel] = has_native_kernel(self.kernel, "Autograd")
        return has

    def call(self, args: Tuple, tensors: Sequence[torch.Tensor]):
        """The public function's dispatch: the custom op under tracing/modes/subclasses, else the eager path."""
        if use_custom_op(*tensors):
            return self.op(*args)
        if self._native_fast_path(tensors[0].device):
            kargs = self.prepare(*args)
            out = native_op(self.kernel)(*kargs)
            if self.check_outputs is not None:
                self.check_outputs(kargs, out)
            return out
        return self._eager(*args)


def _unflatten(lengths: Tuple[int, ...], flat: Sequence) -> list:
    args, i = [], 0
    for n in lengths:
        if n < 0:
            args.append(flat[i])
            i += 1
        else:
            args.append(list(flat[i:i + n]))
            i += n
    return args
