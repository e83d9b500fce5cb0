"""Capture the inputs of a network's BatchNorm layers during one forward, for L_BNS (spec, "Losses").

The original registers forward hooks on the teacher's BN layers once and appends (mean, var, running_mean,
running_var) to lists that are cleared only before the teacher's forward in the training loop, so every other
forward of the teacher (its test pass) keeps appending to them: they grow without bound. Here each capture
starts empty and only records inside its ``with`` block::

    cap = BNCapture(P)                    # finds P's BN layers; installs nothing yet
    with cap.capture():
        t = P(x)
    l_bns = adadfq_fast.bn_stat_loss(*cap.take())   # take() hands the tensors over and forgets them

``capture()`` installs one forward pre-hook per BN layer on entry and removes them on exit (a few microseconds
per layer), so forwards outside it (evaluation, Q, anything else) pay nothing. For a loop that captures on
every iteration, ``attach()`` once (or ``with BNCapture(P) as cap:``) keeps the hooks installed; they then
cost one Python call that returns immediately while not capturing.

Records are made in forward (hook-firing) order, each paired with the running statistics of the layer that
fired, so the pairing is right even when a layer is registered in a different order than it runs or runs twice.
The captured inputs are the live tensors (not detached): gradients of L_BNS flow back through P into whatever
produced its input (the generator). The running statistics are the layers' own buffers (no copy); P is
expected in ``eval()`` (spec), where they do not change. Layers without running statistics
(``track_running_stats=False``) have nothing to match and are skipped.

Not safe under ``nn.DataParallel`` (replicas would fire the hooks from several threads, in no fixed order);
use one process per device instead.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, List, Tuple, Type

from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..models.layers import bn_layers
from ..ops import bn_stat_loss

__all__ = ["BNCapture"]


class BNCapture:
    """Records the input of every BatchNorm layer of ``model`` during forwards run inside :meth:`capture`.

    ``types``: which modules count as BatchNorm (default: every ``nn.BatchNormNd`` / ``SyncBatchNorm``; the
    original hooks ``nn.BatchNorm2d`` only, which is the same set for its CNNs).
    """

    def __init__(self, model: nn.Module, types: Tuple[Type[nn.Module], ...] = (_BatchNorm,)):
        # Registration order: the hooks record in firing order, so no tracing forward is needed.
        self.modules: List[nn.Module] = bn_layers(model, trace=False, types=types)
        if not self.modules:
            raise ValueError(f"{type(model).__name__} has no BatchNorm layers with running statistics to capture")
        self._inputs: List[Tensor] = []
        self._layers: List[nn.Module] = []
        self._handles: list = []
        self._recording = False

    # ---- hooks --------------------------------------------------------------------------------------------
    def _hook(self, module: nn.Module, args) -> None:
        if self._recording:
            self._inputs.append(args[0])
            self._layers.append(module)

    @property
    def attached(self) -> bool:
        return bool(self._handles)

    def attach(self) -> "BNCapture":
        """Install the hooks (idempotent); they record only inside :meth:`capture`."""
        if not self._handles:
            self._handles = [m.register_forward_pre_hook(self._hook) for m in self.modules]
        return self

    def detach(self) -> None:
        """Remove the hooks and forget any captured tensors."""
        for h in self._handles:
            h.remove()
        self._handles = []
        self._recording = False
        self.clear()

    def __enter__(self) -> "BNCapture":
        return self.attach()

    def __exit__(self, *exc) -> None:
        self.detach()

    # ---- capturing ----------------------------------------------------------------------------------------
    @contextmanager
    def capture(self) -> Iterator["BNCapture"]:
        """Record the BN inputs of the forwards run inside the block; previous records are dropped first."""
        if self._recording:
            raise RuntimeError("BNCapture.capture() is already active (captures do not nest)")
        self.clear()
        temporary = not self._handles
        if temporary:
            self.attach()
        self._recording = True
        try:
            yield self
        finally:
            self._recording = False
            if temporary:
                # Remove only the hooks; the records stay readable after the block.
                for h in self._handles:
                    h.remove()
                self._handles = []

    def clear(self) -> None:
        self._inputs = []
        self._layers = []

    # ---- results ------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._inputs)

    @property
    def inputs(self) -> List[Tensor]:
        """The captured BN inputs, in forward order."""
        return list(self._inputs)

    @property
    def running_means(self) -> List[Tensor]:
        return [m.running_mean for m in self._layers]

    @property
    def running_vars(self) -> List[Tensor]:
        return [m.running_var for m in self._layers]

    @property
    def layers(self) -> List[nn.Module]:
        """The layer behind each captured input (a layer run twice appears twice)."""
        return list(self._layers)

    def take(self) -> Tuple[List[Tensor], List[Tensor], List[Tensor]]:
        """(inputs, running_means, running_vars) for ``bn_stat_loss``; the capture forgets them (frees memory)."""
        if not self._inputs:
            raise RuntimeError("nothing captured: run the model's forward inside `with cap.capture():` first")
        out = (self.inputs, self.running_means, self.running_vars)
        self.clear()
        return out

    def loss(self, clear: bool = True) -> Tensor:
        """L_BNS over the captured inputs (``adadfq_fast.bn_stat_loss``, on the current backend)."""
        if clear:
            feats, rms, rvs = self.take()
        else:
            if not self._inputs:
                raise RuntimeError("nothing captured: run the model's forward inside `with cap.capture():` first")
            feats, rms, rvs = self.inputs, self.running_means, self.running_vars
        return bn_stat_loss(feats, rms, rvs)

    def __repr__(self) -> str:
        state = "capturing" if self._recording else ("attached" if self._handles else "detached")
        return f"BNCapture({len(self.modules)} BN layers, {state}, {len(self._inputs)} captured)"
