"""The AdaDFQ training loop: epochs of game iterations, the spec's schedules, evaluation, checkpoints, logs.

``Trainer(cfg, teacher, evaluate_fn=...)`` builds G and Q from the config (or takes them), runs
``cfg.epochs x cfg.iters_per_epoch`` iterations of :class:`~adadfq_fast.game.schedules.GameStep`, and after every
``cfg.eval_every`` epochs evaluates Q with ``evaluate_fn(Q) -> top-1 %`` and tracks the best epoch (the paper
reports the best epoch). Per-epoch metrics go to ``<run_dir>/metrics.jsonl``; a resumable checkpoint (G, Q,
optimisers, schedulers, range states, RNG states, epoch, history) to ``<run_dir>/checkpoint.pt``.

Schedule of the official configs (spec): activation ranges update during epochs [0, act_range_unfreeze_epochs)
and are frozen after; Q is stepped only from ``warmup_epochs`` on; both learning rates are multiplied by their
gamma at their milestones (per epoch).

Multi-process (``torchrun``; the process group must be initialised before the Trainer is built, e.g. by
:func:`adadfq_fast.game.distributed.init_from_env`): every rank builds the players from ``cfg.seed`` and then takes
rank 0's G, Q and P; each iteration averages G's and Q's gradients and reduces Q's activation ranges across the
ranks (:mod:`adadfq_fast.game.distributed`), so all ranks keep identical players while each generates its own
samples (effective batch ``world_size x batch_size``). Each rank's sampling RNGs (python, numpy, torch) are
reseeded at the start of every epoch from ``(seed, rank, epoch)``: the streams differ across ranks and epochs,
and a resumed run draws exactly what the uninterrupted one drew without storing any rank's RNG state (the
checkpoint keeps rank 0's, which only a single-process resume uses). Only rank 0 evaluates (the accuracy is
broadcast so every rank tracks the same best epoch), prints, and writes logs, checkpoints and ``best_q.pt``. The
logged losses are means over the ranks; ``iters_per_s`` is per rank (each iteration is ``world_size`` batches).
G's BatchNorm running statistics (never used: G stays in train mode) are averaged over the ranks every epoch.
Every rank must be given an ``evaluate_fn`` or none (rank 0's is the one called); on resume every rank reads the
checkpoint (multi-node runs need it on a shared filesystem).
"""
from __future__ import annotations

import functools
import json
import math
import os
import random
import time
import warnings
from typing import Callable, Dict, List, Optional

import numpy as np
import torch
from torch import Tensor, nn

import adadfq_fast

from . import distributed as ddp
from .generators import build_generator
from .schedules import GameStep, LossWeights


class RangeNotConvergedWarning(UserWarning):
    """Q's activation ranges froze while still far above the activations they quantize."""


# A frozen x_max this many times the largest activation of a generated batch means the range has not converged:
# the quantizer then maps nearly every activation to its lowest level(s). A converged EMA of batch maxima sits
# within ~2x of one batch's max; the faithful EMA's overshoot after a short warm-up is 1e2-1e5x.
RANGE_BLOWUP = 10.0


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device: {name!r} was requested but no CUDA device is available")
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict:
    state = dict(python=random.getstate(), numpy=np.random.get_state(), torch=torch.get_rng_state())
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def rank_seed(seed: int, rank: int, epoch: int) -> int:
    """Seed of one rank's sampling streams in one epoch (multi-process runs): well mixed, so that nearby
    (seed, rank, epoch) give unrelated streams."""
    return int(np.random.SeedSequence([seed, rank, epoch]).generate_state(1)[0])


def build_q_optimizer(cfg, params) -> torch.optim.Optimizer:
    """Q's optimiser as the original's ``opt_type`` chooses it (SGD with Nesterov by default; RMSprop, Adam)."""
    if cfg.q_optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.q_lr, momentum=cfg.q_momentum, weight_decay=cfg.q_weight_decay,
                               nesterov=cfg.q_nesterov)
    if cfg.q_optimizer == "rmsprop":
        return torch.optim.RMSprop(params, lr=cfg.q_lr, momentum=cfg.q_momentum, weight_decay=cfg.q_weight_decay)
    return torch.optim.Adam(params, lr=cfg.q_lr, weight_decay=cfg.q_weight_decay)


def _schedule_backend(cfg) -> str:
    """Ops backend for the run: the config's (``auto``: the fused kernels, for both schedules).

    ``faithful`` used to default to ``reference`` (the authors' math as chains of PyTorch ops); measured against
    the authors' own loop on this CPU (benchmarks/results/authors_loop_cpu.md) that was 1-7% slower than theirs,
    while faithful on the fused kernels (bit-identical fake-quant, losses equal to float tolerance) is ~1.1x
    faster. ``backend=reference`` still selects the pure-PyTorch math."""
    return getattr(cfg, "backend", "auto")


class Trainer:
    def __init__(
        self,
        cfg,
        teacher: nn.Module,
        quantized: Optional[nn.Module] = None,
        generator: Optional[nn.Module] = None,
        evaluate_fn: Optional[Callable[[nn.Module], float]] = None,
        run_dir: Optional[str] = None,
        progress: bool = True,
        method: str = "adadfq",
        autocast_dtype: Optional[torch.dtype] = None,
    ):
        from adadfq_fast.nn import act_quantizers, quantize_model, set_quant_options

        self.cfg = cfg
        self.rank, self.world_size = ddp.get_rank(), ddp.get_world_size()
        self.is_main = self.rank == 0
        self.device = ddp.local_device(resolve_device(cfg.device))
        seed_everything(cfg.seed)
        self.P = teacher.to(self.device).eval()
        example = torch.zeros(1, cfg.channels, cfg.img_size, cfg.img_size, device=self.device)
        self.Q = (quantized if quantized is not None else
                  quantize_model(self.P, cfg.wbits, cfg.abits, example_input=example)).to(self.device).eval()
        set_quant_options(self.Q, ste=cfg.ste, act_range_update=cfg.act_range_update)  # the opt-in fixes
        self.G = (generator if generator is not None else
                  build_generator(cfg.generator, cfg.num_classes, cfg.img_size, cfg.channels, cfg.latent_dim)
                  ).to(self.device).train()
        if self.world_size > 1:  # every rank starts from rank 0's players (buffers and range states included)
            for module in (self.P, self.Q, self.G):
                ddp.broadcast_module(module)
        self.opt_g = torch.optim.Adam(self.G.parameters(), lr=cfg.g_lr, betas=tuple(cfg.g_betas))
        # Every parameter of Q is trained (weights and BN affine), whatever the teacher's flags: the fast schedule
        # turns off P's requires_grad, and a Q copied later from the same P object would inherit that.
        self.Q.requires_grad_(True)
        self.opt_q = build_q_optimizer(cfg, self.Q.parameters())
        self.sched_g = torch.optim.lr_scheduler.MultiStepLR(self.opt_g, list(cfg.g_lr_milestones), cfg.g_lr_gamma)
        self.sched_q = torch.optim.lr_scheduler.MultiStepLR(self.opt_q, list(cfg.q_lr_milestones), cfg.q_lr_gamma)
        weights = LossWeights(cfg.lambda_l, cfg.lambda_u, cfg.alpha_ds, cfg.alpha_as, cfg.beta_l_bal, cfg.gamma_bns,
                              cfg.temperature)
        hooks = {}
        if self.world_size > 1:
            sync_ranges = functools.partial(ddp.sync_act_ranges, act_quantizers(self.Q))
            hooks = dict(after_q_forward=sync_ranges, reduce_grads=ddp.all_reduce_grads)
        self.step = GameStep(self.P, self.G, self.Q, self.opt_g, self.opt_q, cfg.num_classes, cfg.latent_dim,
                             cfg.batch_size, weights, schedule=cfg.schedule, method=method,
                             autocast_dtype=autocast_dtype,
                             channels_last=cfg.schedule == "fast" and getattr(cfg, "channels_last", False), **hooks)
        self.run_step = self.step
        if getattr(cfg, "capture", "none") == "cuda_graph":
            from .cuda_graph import CudaGraphStep

            self.run_step = CudaGraphStep(self.step)
        self.backend = _schedule_backend(cfg)
        self.evaluate_fn = evaluate_fn
        self.run_dir = run_dir if self.is_main else None  # only rank 0 writes
        self.progress = progress and self.is_main
        self.epoch = 0  # next epoch to run
        self.best_acc = -math.inf
        self.best_epoch = -1
        self.fit_seconds: Optional[float] = None  # wall time of the last fit() call
        self.history: List[dict] = []
        self.h_norm_first: Optional[List[float]] = None
        self.h_norm_last: Optional[List[float]] = None
        self._range_warned = False
        if self.run_dir:
            os.makedirs(self.run_dir, exist_ok=True)
        self.tb = _tensorboard_writer(self.run_dir) if getattr(cfg, "tensorboard", False) and self.run_dir else None

    # ---- one epoch ----------------------------------------------------------------------------------------
    def ranges_frozen(self, epoch: int) -> bool:
        return epoch >= self.cfg.act_range_unfreeze_epochs

    def train_epoch(self, epoch: int, iters: Optional[int] = None) -> dict:
        from adadfq_fast.nn import freeze_act_ranges, unfreeze_act_ranges

        cfg = self.cfg
        iters = cfg.iters_per_epoch if iters is None else iters
        frozen = self.ranges_frozen(epoch)
        (freeze_act_ranges if frozen else unfreeze_act_ranges)(self.Q)
        step_q = epoch >= cfg.warmup_epochs
        if self.world_size > 1:
            seed_everything(rank_seed(cfg.seed, self.rank, epoch))
        sums: Dict[str, Tensor] = {}
        h_all: List[Tensor] = []  # every sample's H' this epoch, kept on the device (16 floats per iteration)
        bar = _progress(range(iters), f"epoch {epoch + 1}/{cfg.epochs}", self.progress)
        start = time.perf_counter()
        with adadfq_fast.use_backend(self.backend):
            for i in bar:
                metrics = self.run_step(step_q=step_q, ranges_frozen=frozen)
                h = metrics.pop("h_norm", None)
                if h is not None:
                    h_all.append(h.detach())
                    metrics["h_norm_mean"] = h.mean()
                    metrics["h_norm_in_margin"] = ((h >= cfg.lambda_l) & (h <= cfg.lambda_u)).float().mean()
                for k, v in metrics.items():
                    sums[k] = sums[k] + v if k in sums else v.clone()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        if self.world_size > 1:  # log the means over all ranks' samples; one collective per epoch
            sums = dict(zip(sums, ddp.all_reduce_mean(list(sums.values()))))
            ddp.average_buffers(self.G)
        record = {k: (v / iters).item() for k, v in sums.items()}  # the epoch's one host synchronisation
        record.update(epoch=epoch, iters=iters, seconds=seconds, iters_per_s=iters / seconds,
                      lr_g=self.opt_g.param_groups[0]["lr"], lr_q=self.opt_q.param_groups[0]["lr"],
                      q_stepped=step_q, ranges_frozen=frozen)
        if self.world_size > 1:
            record["world_size"] = self.world_size
        if not frozen and self.ranges_frozen(epoch + 1) and self.is_main:
            # The ranges freeze after this epoch: say now (once) if they have not converged.
            record.update(self.check_act_ranges())
        if h_all:  # H' of all samples of the first epoch and of the latest one (the histograms of the main job)
            h_epoch = torch.cat(h_all).float().cpu().tolist()
            if self.h_norm_first is None:
                self.h_norm_first = h_epoch
            self.h_norm_last = h_epoch
        with warnings.catch_warnings():
            # During warmup Q's optimiser has not stepped yet; its schedule still counts epochs, as the original's.
            warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step\\(\\)` before")
            self.sched_g.step()
            self.sched_q.step()
        return record

    @torch.no_grad()
    def check_act_ranges(self, factor: float = RANGE_BLOWUP, warn: bool = True) -> dict:
        """Compare every QuantAct's x_max with the largest activation it sees on one generated batch.

        Returns ``act_range_ratio`` (the worst x_max / max activation over the sites that see a positive one)
        and ``act_range_site``; warns (:class:`RangeNotConvergedWarning`, once per run) above ``factor``. The
        probe batch changes nothing: RNG states, G's BN buffers and Q's ranges are restored or left untouched.
        """
        from adadfq_fast.nn import QuantAct

        sites = [(name, m) for name, m in self.Q.named_modules() if isinstance(m, QuantAct)]
        if not sites:
            return {}
        seen: Dict[str, Tensor] = {}
        hooks = [m.register_forward_pre_hook(
            lambda mod, args, name=name: seen.__setitem__(name, torch.maximum(
                seen.get(name, args[0].new_zeros((), dtype=torch.float32)), args[0].detach().float().amax())))
            for name, m in sites]
        frozen = [m.frozen for _, m in sites]
        g_buffers = {k: v.clone() for k, v in self.G.named_buffers()}
        rng = rng_state()
        try:
            for _, m in sites:
                m.freeze()
            with adadfq_fast.use_backend(self.backend):
                x, _ = self.step._generate()
                self.Q(x)
        finally:
            for h in hooks:
                h.remove()
            for (_, m), f in zip(sites, frozen):
                m.frozen = f
            set_rng_state(rng)
            for k, v in self.G.named_buffers():
                v.copy_(g_buffers[k])
        ratios = {name: (m.x_max / seen[name]).item() for name, m in sites if name in seen and seen[name] > 0}
        if not ratios:
            return {}
        worst = max(ratios, key=ratios.get)
        above = sum(r > factor for r in ratios.values())
        if warn and above and not self._range_warned:
            self._range_warned = True
            x_max = dict(sites)[worst].x_max.item()
            warnings.warn(
                f"Q's activation ranges have not converged when they freeze (after epoch "
                f"{self.cfg.act_range_unfreeze_epochs}, {self.cfg.act_range_unfreeze_epochs * self.cfg.iters_per_epoch}"
                f" iterations): {above} of the {len(ratios)} sites that see a positive activation on a generated "
                f"batch have x_max above {factor:g}x its largest value (worst: {worst}, x_max {x_max:.3g} = "
                f"{ratios[worst]:.3g}x; sites behind a blown range see only zeros), so Q maps almost "
                f"every activation to its lowest levels and its accuracy will be near chance. The faithful range EMA "
                f"(act_range_update=faithful) overshoots by up to ~1e5x during its first ~100 updates. Remedy: a "
                f"longer warm-up (more epochs/iterations before the ranges freeze: act_range_unfreeze_epochs, or "
                f"--warmup-epochs / --iters-per-epoch in `adadfq-fast quantize`) or the standard EMA "
                f"(act_range_update=standard, --act-range-update standard).",
                RangeNotConvergedWarning, stacklevel=3)
        return dict(act_range_ratio=ratios[worst], act_range_site=worst, act_range_sites_blown=above)

    # ---- the run ------------------------------------------------------------------------------------------
    def fit(self, epochs: Optional[int] = None) -> dict:
        cfg = self.cfg
        last = cfg.epochs if epochs is None else min(cfg.epochs, self.epoch + epochs)
        fit_start = time.perf_counter()
        while self.epoch < last:
            epoch = self.epoch
            record = self.train_epoch(epoch)
            if self.evaluate_fn is not None and cfg.evaluates(epoch):
                # The original freezes Q's ranges before testing (real data must not move them); the next epoch
                # sets them again from its own number.
                from adadfq_fast.nn import freeze_act_ranges

                freeze_act_ranges(self.Q)
                # Only rank 0 evaluates; the others wait for its number so that best tracking agrees.
                eval_start = time.perf_counter()
                acc = float(self.evaluate_fn(self.Q)) if self.is_main else 0.0
                record["q_acc"] = ddp.broadcast_float(acc, self.device)
                record["eval_seconds"] = time.perf_counter() - eval_start
                if record["q_acc"] > self.best_acc:
                    self.best_acc, self.best_epoch = record["q_acc"], epoch
                    if self.run_dir:
                        self.save_q(os.path.join(self.run_dir, "best_q.pt"), top1=record["q_acc"], epoch=epoch)
            record["best_acc"] = self.best_acc if self.best_epoch >= 0 else None
            record["best_epoch"] = self.best_epoch if self.best_epoch >= 0 else None
            self.history.append(record)
            self.epoch = epoch + 1
            self._log(record)
            if self.run_dir and cfg.checkpoint_every and self.epoch % cfg.checkpoint_every == 0:
                self.save_checkpoint(os.path.join(self.run_dir, "checkpoint.pt"))
        self.fit_seconds = time.perf_counter() - fit_start
        return self.summary()

    def summary(self) -> dict:
        done = [r for r in self.history if "iters_per_s" in r]
        return dict(
            epochs_done=self.epoch,
            best_acc=self.best_acc if self.best_epoch >= 0 else None,
            best_epoch=self.best_epoch if self.best_epoch >= 0 else None,
            iters_per_s=(sum(r["iters"] for r in done) / sum(r["seconds"] for r in done)) if done else None,
            # Wall time of the last fit() call: game, evaluations, checkpoints and logging.
            fit_seconds=self.fit_seconds,
            eval_seconds=sum(r.get("eval_seconds", 0.0) for r in self.history),
            h_norm_first=self.h_norm_first,
            h_norm_last=self.h_norm_last,
        )

    def _log(self, record: dict) -> None:
        if self.run_dir:
            with open(os.path.join(self.run_dir, "metrics.jsonl"), "a") as f:
                f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            step = (record["epoch"] + 1) * record["iters"]  # x axis: game iterations
            for key, value in record.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool) and key not in ("epoch", "iters"):
                    self.tb.add_scalar(key, value, step)
            if self.h_norm_last:
                self.tb.add_histogram("h_norm", torch.tensor(self.h_norm_last), step)
            self.tb.flush()
        if self.progress:
            keys = [k for k in ("loss_g", "loss_q", "l_bns", "h_norm_mean", "q_acc", "iters_per_s") if k in record]
            print(f"epoch {record['epoch'] + 1}: " + ", ".join(f"{k}={record[k]:.4g}" for k in keys), flush=True)

    # ---- checkpoints --------------------------------------------------------------------------------------
    def save_q(self, path: str, **meta) -> None:
        """Q as a self-describing checkpoint (``load_q_checkpoint``, ``adadfq-fast eval/export`` read it)."""
        from adadfq_fast.nn import save_q_checkpoint

        cfg = self.cfg
        save_q_checkpoint(path, self.Q, model=cfg.model, num_classes=cfg.num_classes, in_channels=cfg.channels,
                          in_size=(cfg.img_size, cfg.img_size), wbits=cfg.wbits, abits=cfg.abits,
                          meta={"run": cfg.name, **meta})

    def state_dict(self) -> dict:
        return dict(
            format="adadfq_fast.trainer/1", epoch=self.epoch, G=self.G.state_dict(), Q=self.Q.state_dict(),
            opt_g=self.opt_g.state_dict(), opt_q=self.opt_q.state_dict(), sched_g=self.sched_g.state_dict(),
            sched_q=self.sched_q.state_dict(), best_acc=self.best_acc, best_epoch=self.best_epoch,
            history=self.history, h_norm_first=self.h_norm_first, h_norm_last=self.h_norm_last, rng=rng_state(),
            config=_config_dict(self.cfg),
        )

    def load_state_dict(self, state: dict) -> None:
        if state.get("format") != "adadfq_fast.trainer/1":
            raise ValueError(f"checkpoint: unknown format {state.get('format')!r} (expected adadfq_fast.trainer/1)")
        self.G.load_state_dict(state["G"])
        self.Q.load_state_dict(state["Q"])
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_q.load_state_dict(state["opt_q"])
        self.sched_g.load_state_dict(state["sched_g"])
        self.sched_q.load_state_dict(state["sched_q"])
        self.epoch, self.best_acc, self.best_epoch = state["epoch"], state["best_acc"], state["best_epoch"]
        self.history = list(state["history"])
        self.h_norm_first, self.h_norm_last = state.get("h_norm_first"), state.get("h_norm_last")
        set_rng_state(state["rng"])

    def save_checkpoint(self, path: str) -> None:
        tmp = path + ".tmp"
        torch.save(self.state_dict(), tmp)
        os.replace(tmp, path)  # never leave a half-written checkpoint behind

    def load_checkpoint(self, path: str) -> None:
        if not os.path.exists(path):
            raise FileNotFoundError(f"resume: no checkpoint at {path}")
        self.load_state_dict(torch.load(path, map_location=self.device, weights_only=False))


def _tensorboard_writer(run_dir: str):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as e:
        raise RuntimeError("tensorboard=true needs the tensorboard package (pip install tensorboard)") from e
    return SummaryWriter(os.path.join(run_dir, "tb"))


def _config_dict(cfg) -> dict:
    import dataclasses

    return dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else dict(vars(cfg))


def _progress(it, desc: str, enabled: bool):
    if not enabled:
        return it
    from tqdm import tqdm

    return tqdm(it, desc=desc, leave=False, dynamic_ncols=True)
