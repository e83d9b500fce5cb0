"""Multi-process training with ``torch.distributed`` (data parallel, one process per device, under ``torchrun``).

Every rank runs the whole game on samples of its own (its own z, y stream) and the ranks stay identical:

* at start, G, Q and P are broadcast from rank 0 (:func:`broadcast_module`);
* every gradient that G's or Q's optimiser steps with is averaged over the ranks (:func:`all_reduce_grads`),
  so each optimiser sees the gradient of the mean loss over ``world_size x batch_size`` samples and steps the
  same on every rank. Batch-level statistics stay per rank (L_BNS's BN statistics, the batch minimum in H'),
  as BatchNorm's do under DDP without SyncBatchNorm: each rank plays the paper's batch-``B`` game;
* after every Q forward that updates the activation ranges, :func:`sync_act_ranges` reduces them: x_min with
  MIN and x_max with MAX across ranks, so the stored range is the one a single process would have stored from
  the global batch. (``nn.DataParallel`` loses the updates made on its replicas; see the spec's known defects.)

Why the range reduction is exact. Every rank starts the forward from the same state ``(x_min, x_max, beta_t)``
(broadcast at start, kept equal by this reduction) and updates it from its own batch statistic ``m`` (the
minimum or the maximum of its activations):

    beta_t' = beta_t * b;    new(m) = (old * b + m * (1 - b)) / (1 - beta_t')

With ``1 - b > 0`` and ``1 - beta_t' > 0``, ``new`` is increasing in ``m``. Each float operation in it (multiply
by a positive constant, add a constant, divide by a positive constant) is correctly rounded and therefore
non-decreasing too, so the rounded ``new`` is non-decreasing in ``m``. Hence ``min_r new(m_r) = new(min_r m_r)``
bit for bit: MIN-reducing the updated x_min gives exactly the update with the global batch minimum; likewise MAX
for x_max, and beta_t' is the same on all ranks. The quantization inside that forward itself used the rank's own
updated range (one forward per rank, not one global forward); every later forward starts from the global state.

All functions are no-ops (no communication) in a single process.
"""
from __future__ import annotations

import os
from typing import Iterable, List, Optional, Sequence, Tuple, Union

import torch
import torch.distributed as dist
from torch import Tensor, nn

_initialised_here = False


def is_distributed() -> bool:
    """True when a process group with more than one rank is initialised."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def get_rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def get_world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main() -> bool:
    """Rank 0 (or a single process): the rank that evaluates, logs and writes files."""
    return get_rank() == 0


def _wants_cuda(device: Optional[Union[str, torch.device]]) -> bool:
    if device is None or str(device) == "auto":
        return torch.cuda.is_available()
    return torch.device(device).type == "cuda"


def init_from_env(device: Optional[Union[str, torch.device]] = None) -> Tuple[int, int]:
    """Join the process group that ``torchrun`` describes in the environment; returns ``(rank, world_size)``.

    Without ``WORLD_SIZE > 1`` in the environment this does nothing and returns ``(0, 1)``. Backend: nccl when
    the run uses CUDA (``device``: a torch device or ``auto``, default ``auto``), with this process's CUDA device
    set from ``LOCAL_RANK``; gloo otherwise. Calling it again returns the existing group's rank and size.
    """
    global _initialised_here
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1
    if not dist.is_available():
        raise RuntimeError("distributed: WORLD_SIZE > 1 but this PyTorch build has no torch.distributed")
    cuda = _wants_cuda(device)
    if cuda:
        # Before the group exists: nccl binds each rank to the current device.
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend="nccl" if cuda else "gloo")
    _initialised_here = True
    return dist.get_rank(), dist.get_world_size()


def shutdown() -> None:
    """Destroy the process group if :func:`init_from_env` created it."""
    global _initialised_here
    if _initialised_here and dist.is_initialized():
        dist.destroy_process_group()
    _initialised_here = False


def local_device(device: torch.device) -> torch.device:
    """``cuda`` without an index means this rank's device (set from LOCAL_RANK) once distributed."""
    if device.type == "cuda" and device.index is None and is_distributed():
        return torch.device("cuda", torch.cuda.current_device())
    return device


@torch.no_grad()
def _coalesced(tensors: Iterable[Tensor], collective) -> None:
    """Apply ``collective(flat)`` in place to one flat buffer per (device, dtype), then copy the result back:
    one collective per group instead of one per tensor."""
    groups: dict = {}
    for t in tensors:
        groups.setdefault((t.device, t.dtype), []).append(t)
    for group in groups.values():
        flat = torch.cat([t.reshape(-1) for t in group])
        collective(flat)
        pieces = flat.split([t.numel() for t in group])
        torch._foreach_copy_(group, [p.view_as(t) for p, t in zip(pieces, group)])


def broadcast_tensors(tensors: Sequence[Tensor], src: int = 0) -> None:
    if not is_distributed():
        return
    _coalesced([t.detach() for t in tensors], lambda flat: dist.broadcast(flat, src))


def broadcast_module(module: nn.Module, src: int = 0) -> None:
    """Overwrite ``module``'s parameters and buffers with rank ``src``'s."""
    broadcast_tensors(list(module.parameters()) + list(module.buffers()), src)


def all_reduce_grads(grads: Union[Sequence[Optional[Tensor]], Iterable[nn.Parameter]]) -> None:
    """Average gradients across ranks, in place: a list of gradient tensors (``None`` entries skipped), or
    parameters, whose ``.grad`` is averaged."""
    if not is_distributed():
        return
    tensors = [g.grad if isinstance(g, nn.Parameter) else g for g in grads]
    tensors = [g for g in tensors if g is not None]
    world = dist.get_world_size()

    def mean(flat: Tensor) -> None:
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat.div_(world)

    # Aliased gradients (one tensor listed twice) are fine: both copies reduce to the same value.
    _coalesced(tensors, mean)


def average_buffers(module: nn.Module) -> None:
    """Average ``module``'s floating-point buffers across ranks (integer ones, e.g. BN's counters, agree)."""
    if not is_distributed():
        return
    bufs = [b for b in module.buffers() if b.is_floating_point()]
    world = dist.get_world_size()

    def mean(flat: Tensor) -> None:
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat.div_(world)

    _coalesced(bufs, mean)


@torch.no_grad()
def sync_act_ranges(q_model: Union[nn.Module, Sequence[nn.Module]]) -> None:
    """Reduce the activation ranges of Q (a model, or its list of QuantActs) after a Q forward that updated
    them: x_min becomes the MIN and x_max the MAX over the ranks (exact: see the module docstring).

    All range states go in one tensor and one all_reduce (MAX of ``[-x_min, x_max]``; negation is exact).
    """
    if not is_distributed():
        return
    if isinstance(q_model, nn.Module):
        from adadfq_fast.nn import act_quantizers

        acts: List[nn.Module] = act_quantizers(q_model)
    else:
        acts = list(q_model)
    if not acts:
        return
    states = [m.state for m in acts]
    stacked = torch.stack(states)  # [L, 3]: x_min, x_max, beta_t
    lohi = stacked[:, :2].contiguous()
    lohi[:, 0].neg_()
    dist.all_reduce(lohi, op=dist.ReduceOp.MAX)
    lohi[:, 0].neg_()
    stacked[:, :2] = lohi
    torch._foreach_copy_(states, list(stacked.unbind(0)))


def broadcast_float(value: float, device: torch.device, src: int = 0) -> float:
    """Rank ``src``'s ``value`` on every rank (e.g. the accuracy only rank 0 measured)."""
    if not is_distributed():
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.broadcast(t, src)
    return float(t.item())


def all_reduce_mean(tensors: Sequence[Tensor]) -> List[Tensor]:
    """Mean over ranks of scalar tensors (the epoch's metric sums), in one collective; returns new tensors."""
    if not is_distributed() or not tensors:
        return list(tensors)
    flat = torch.stack([t.detach().float().reshape(()) for t in tensors])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat.div_(dist.get_world_size())
    return list(flat.unbind(0))
