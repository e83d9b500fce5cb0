"""One iteration of the zero-sum game between the generator G and the quantized network Q.

Two schedules compute the same updates:

* ``faithful``: the official order (spec, "One iteration"): x = G(z, y); t = P(x) with BN inputs captured;
  s = Q(x); backward L_G through everything (P's and Q's parameters receive the original's useless gradients);
  Adam step on G; then a second Q forward s' = Q(x.detach()); backward L_Q; SGD step on Q once past warmup.
  Both Q forwards update Q's activation ranges while they are unfrozen.
* ``fast``: no parameter gradients for P or Q in the G step (``autograd.grad`` with G's parameters only prunes
  the weight-gradient kernels of P and Q); once Q's activation ranges are frozen, Q's single forward serves both
  steps: L_G's gradient reaches G through it, L_Q's reaches Q's parameters through it. While ranges are
  unfrozen (the first ``act_range_unfreeze_epochs`` epochs) the fast schedule still runs the second Q forward,
  because the faithful ranges are updated twice per iteration, the second time from activations computed with
  the once-updated ranges; skipping it would change every later range.

Where the two may differ: with ranges frozen, faithful's s' equals s bit for bit (same Q, same input), so both
schedules produce the same G and Q parameters up to float reassociation in the shared backward (tested). While
ranges are unfrozen, the only difference is that fast computes no gradients it does not use.

Every op runs on the backend selected around the call (``adadfq_fast.use_backend``): the trainer runs the
faithful schedule on the ``reference`` backend by default (the authors' math as chains of PyTorch ops) and
``fast`` on ``auto`` (the fused kernels). Each iteration returns its metrics as device tensors (no host
synchronisation inside the iteration).

Two optional hooks make one iteration data parallel (``adadfq_fast.game.distributed``; both default to None: a
single process, no overhead): ``after_q_forward()`` runs right after every Q forward that updates the ranges
(only while they are unfrozen; faithful and unfrozen fast run two), so the ranks reduce their ranges before
anything reads them again; ``reduce_grads(grads)`` averages, in place, the gradients G's and Q's optimisers are
about to step with (``p.grad`` after faithful's backward; the tensors from ``autograd.grad`` in fast).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Optional

import torch
from torch import Tensor, nn

import adadfq_fast
from adadfq_fast.quant_math import normalized_entropy

from .bn_capture import BNCapture

SCHEDULES = ("faithful", "fast")
METHODS = ("adadfq", "gdfq")


@dataclass
class LossWeights:
    """Hyper-parameters of the objectives (spec, "Losses"); gdfq uses bns_weight 0.1 and ignores the rest."""

    lambda_l: float = 0.1
    lambda_u: float = 0.8
    alpha_ds: float = 0.2
    alpha_as: float = 0.1
    beta_l_bal: float = 1.0
    gamma_bns: float = 1.0
    temperature: float = 20.0


class GameStep:
    """Holds P, G, Q, their optimisers and the BN capture; ``__call__`` runs one iteration."""

    def __init__(
        self,
        teacher: nn.Module,
        generator: nn.Module,
        quantized: nn.Module,
        opt_g: torch.optim.Optimizer,
        opt_q: torch.optim.Optimizer,
        num_classes: int,
        latent_dim: int,
        batch_size: int,
        weights: LossWeights,
        schedule: str = "fast",
        method: str = "adadfq",
        autocast_dtype: Optional[torch.dtype] = None,
        channels_last: bool = False,
        after_q_forward: Optional[Callable[[], None]] = None,
        reduce_grads: Optional[Callable[[List[Tensor]], None]] = None,
    ):
        if schedule not in SCHEDULES:
            raise ValueError(f"schedule: expected one of {SCHEDULES}, got {schedule!r}")
        if method not in METHODS:
            raise ValueError(f"method: expected one of {METHODS}, got {method!r}")
        self.P, self.G, self.Q = teacher, generator, quantized
        self.opt_g, self.opt_q = opt_g, opt_q
        self.num_classes, self.latent_dim, self.batch_size = num_classes, latent_dim, batch_size
        self.w = weights
        self.schedule, self.method = schedule, method
        self.autocast_dtype = autocast_dtype
        self.channels_last = channels_last
        self.after_q_forward = after_q_forward
        self.reduce_grads = reduce_grads
        if channels_last:  # weights too: oneDNN runs channels_last convolutions fastest when both agree
            for module in (teacher, generator, quantized):
                module.to(memory_format=torch.channels_last)
        self.capture = BNCapture(teacher).attach()
        self.g_params: List[nn.Parameter] = [p for p in generator.parameters() if p.requires_grad]
        self.q_params: List[nn.Parameter] = [p for p in quantized.parameters() if p.requires_grad]
        # P is frozen; the faithful schedule still lets its parameters collect the original's useless gradients.
        teacher.eval()
        quantized.eval()
        for p in teacher.parameters():
            p.requires_grad_(schedule == "faithful")

    @property
    def device(self) -> torch.device:
        return next(self.G.parameters()).device

    # ---- objectives ---------------------------------------------------------------------------------------
    def _generator_objective(self, t: Tensor, s: Tensor, y: Tensor, l_bns: Tensor) -> Dict[str, Tensor]:
        w = self.w
        if self.method == "gdfq":  # GDFQ's generator: CE(t, y) + 0.1 L_BNS
            ce = torch.nn.functional.cross_entropy(t.float(), y)
            return dict(loss_g=ce + 0.1 * l_bns, ce_g=ce, l_bns=l_bns)
        margin, bal, h = adadfq_fast.adadfq_generator_loss_with_entropy(
            t, s, y, w.lambda_l, w.lambda_u, w.alpha_ds, w.alpha_as)
        loss = margin + w.beta_l_bal * bal + w.gamma_bns * l_bns
        h_norm = normalized_entropy(h.detach(), t.shape[1])
        return dict(loss_g=loss, l_margin=margin, l_bal=bal, l_bns=l_bns, h_norm=h_norm)

    def _student_objective(self, t: Tensor, s: Tensor, y: Tensor) -> Tensor:
        if self.method == "gdfq":  # GDFQ's student: KD (KL to the teacher) + CE
            kd = torch.nn.functional.kl_div(torch.log_softmax(s.float(), 1), torch.softmax(t.float(), 1),
                                            reduction="batchmean")
            return kd + torch.nn.functional.cross_entropy(s.float(), y)
        return adadfq_fast.adadfq_student_loss(t, s, self.w.temperature)

    def _bns(self) -> Tensor:
        return self.capture.loss()

    # ---- forward pieces -----------------------------------------------------------------------------------
    def _generate(self):
        z = torch.randn(self.batch_size, self.latent_dim, device=self.device)
        y = torch.randint(0, self.num_classes, (self.batch_size,), device=self.device)
        with self._autocast():
            x = self.G(z, y)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x.float(), y

    def _teacher(self, x: Tensor) -> Tensor:
        with self.capture.capture(), self._autocast():
            return self.P(x).float()

    def _autocast(self):
        if self.autocast_dtype is None:
            return torch.autocast(self.device.type, enabled=False)
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def _q_forward(self, x: Tensor, ranges_frozen: bool) -> Tensor:
        s = self.Q(x)
        if not ranges_frozen and self.after_q_forward is not None:
            self.after_q_forward()
        return s

    def _reduce_param_grads(self, params: List[nn.Parameter]) -> None:
        if self.reduce_grads is not None:
            self.reduce_grads([p.grad for p in params if p.grad is not None])

    # ---- the iteration ------------------------------------------------------------------------------------
    def __call__(self, step_q: bool, ranges_frozen: bool) -> Dict[str, Tensor]:
        if self.schedule == "faithful":
            return self._faithful(step_q, ranges_frozen)
        return self._fast(step_q, ranges_frozen)

    def _faithful(self, step_q: bool, ranges_frozen: bool) -> Dict[str, Tensor]:
        x, y = self._generate()
        t = self._teacher(x)
        s = self._q_forward(x, ranges_frozen)
        m = self._generator_objective(t, s, y, self._bns())
        self.opt_g.zero_grad(set_to_none=True)
        m["loss_g"].backward()
        self._reduce_param_grads(self.g_params)
        self.opt_g.step()
        s2 = self._q_forward(x.detach(), ranges_frozen)
        loss_q = self._student_objective(t.detach(), s2, y)
        if step_q:
            self.opt_q.zero_grad(set_to_none=True)
            loss_q.backward()
            self._reduce_param_grads(self.q_params)
            self.opt_q.step()
        m["loss_q"] = loss_q.detach()
        return {k: v.detach() for k, v in m.items()}

    def _fast(self, step_q: bool, ranges_frozen: bool) -> Dict[str, Tensor]:
        x, y = self._generate()
        t = self._teacher(x)
        s = self._q_forward(x, ranges_frozen)
        m = self._generator_objective(t, s, y, self._bns())
        reduce = self.reduce_grads
        if ranges_frozen:
            # One Q forward serves both players: both gradients are taken before either optimiser steps, which
            # is what faithful computes too (its Q step reads x and t made before G's step).
            loss_q = self._student_objective(t.detach(), s, y)
            grads_g = torch.autograd.grad(m["loss_g"], self.g_params, retain_graph=step_q)
            grads_q = torch.autograd.grad(loss_q, self.q_params) if step_q else ()
            if reduce is not None:  # both sets are ready: one reduction for the two
                reduce(list(grads_g) + list(grads_q))
            _step(self.opt_g, self.g_params, grads_g)
            if step_q:
                _step(self.opt_q, self.q_params, grads_q)
        else:
            grads_g = torch.autograd.grad(m["loss_g"], self.g_params)
            if reduce is not None:
                reduce(list(grads_g))
            _step(self.opt_g, self.g_params, grads_g)
            s2 = self._q_forward(x.detach(), ranges_frozen)
            loss_q = self._student_objective(t.detach(), s2, y)
            if step_q:
                grads_q = torch.autograd.grad(loss_q, self.q_params)
                if reduce is not None:
                    reduce(list(grads_q))
                _step(self.opt_q, self.q_params, grads_q)
        m["loss_q"] = loss_q.detach()
        return {k: v.detach() for k, v in m.items()}


def _step(opt: torch.optim.Optimizer, params: List[Tensor], grads) -> None:
    for p, g in zip(params, grads):
        p.grad = g
    opt.step()
