"""``AdaDFQConfig``: every setting of one AdaDFQ run, typed and validated.

Defaults are the authors' CIFAR ResNet-20 W3A3 configuration (``cifar100_resnet20.hocon`` and the values
their code hard-codes); the presets in ``presets/*.toml`` say, value by value, where each setting comes from.
The config is frozen: derive variants with ``cfg.replace(key=value)``, which validates again.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import tomllib
import typing
from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Tuple

__all__ = ["AdaDFQConfig", "ConfigError", "DATASETS", "MODELS", "field_types", "parse_value", "to_toml"]


class ConfigError(ValueError):
    """A setting that does not exist, has the wrong type or an invalid value."""


# Class counts and input geometry of the datasets the engine knows (the original overrides nClasses from the
# dataset name in the same way, in Option.paramscheck).
DATASETS: Dict[str, Dict[str, int]] = {
    "cifar10": {"num_classes": 10, "img_size": 32, "channels": 3},
    "cifar100": {"num_classes": 100, "img_size": 32, "channels": 3},
    "imagenet": {"num_classes": 1000, "img_size": 224, "channels": 3},
    # Not in the paper: the offline real-data setting of `adadfq-fast quantize` (native 28 x 28, 1 channel).
    "fashion-mnist": {"num_classes": 10, "img_size": 28, "channels": 1},
}

# The authors' (pytorchcv) network names, as their configs' `network` key spells them.
MODELS = ("resnet20_cifar10", "resnet20_cifar100", "resnet18", "resnet50", "mobilenetv2_w1",
          # pytorchcv's CIFAR ResNet-20 for any class/channel count and input size (the Fashion-MNIST teacher)
          "resnet20")

_CHOICES = {
    "generator": ("cifar", "imagenet"),
    "schedule": ("faithful", "fast"),
    "q_optimizer": ("sgd", "rmsprop", "adam"),  # the original's opt_type options
    "ste": ("identity", "clipped"),
    "act_range_update": ("faithful", "standard"),
    "backend": ("auto", "reference", "cpp", "triton", "cuda"),
    "capture": ("none", "cuda_graph"),
}


def _f(default, help: str):
    if isinstance(default, (list, tuple)):
        return field(default_factory=lambda d=tuple(default): d, metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class AdaDFQConfig:
    # ---- experiment -------------------------------------------------------------------------------------
    name: str = _f("cifar100_resnet20_w3a3", "run name (the original's experimentID); names the run directory")
    dataset: str = _f("cifar100", f"one of {sorted(DATASETS)}")
    model: str = _f("resnet20_cifar100", f"teacher network P; one of {list(MODELS)}")
    num_classes: int = _f(100, "classes C (must match the dataset)")
    img_size: int = _f(32, "generated image side (divisible by 4)")
    channels: int = _f(3, "image channels")
    data_path: str = _f("", "root of the real test set (the original's dataPath); only evaluation reads it")
    # ---- quantization -----------------------------------------------------------------------------------
    wbits: int = _f(3, "weight bits, every conv/linear (2..8)")
    abits: int = _f(3, "activation bits, after every ReLU/ReLU6 (2..8)")
    ste: str = _f("identity", "fake-quant gradient: identity (faithful) or clipped (opt-in fix)")
    act_range_update: str = _f(
        "faithful", "activation-range EMA: faithful (compounding bias correction) or standard (opt-in fix)"
    )
    act_range_unfreeze_epochs: int = _f(4, "activation ranges update during epochs [0, this); hard-coded 4 in the original")
    # ---- schedule ---------------------------------------------------------------------------------------
    epochs: int = _f(400, "epochs (nEpochs)")
    iters_per_epoch: int = _f(200, "iterations per epoch (hard-coded 200 in the original trainer)")
    batch_size: int = _f(16, "generated images per iteration (batchSize)")
    warmup_epochs: int = _f(4, "epochs during which Q is not stepped (G still trains)")
    schedule: str = _f("faithful", "faithful: the official iteration order; fast: the engine's fused schedule")
    channels_last: bool = _f(True, "fast schedule: G, P, Q and the images in channels_last (oneDNN's faster conv "
                             "layout on CPU: 1.13x per iteration measured on ResNet-20); same values up to float order")
    capture: str = _f("none", "cuda_graph: record the fast schedule's steady-state iteration once and replay it (GPU)")
    seed: int = _f(1, "RNG seed (the original uses manualSeed = --id + 1, so 1 for run 0)")
    # ---- Q optimiser (the original's "S") -----------------------------------------------------------------
    q_optimizer: str = _f("sgd", "optimiser of Q (opt_type)")
    q_lr: float = _f(1e-4, "initial lr of Q (lr_S)")
    q_momentum: float = _f(0.9, "momentum of Q's optimiser")
    q_weight_decay: float = _f(1e-4, "weight decay of Q's optimiser (weightDecay)")
    q_nesterov: bool = _f(True, "Nesterov momentum (hard-coded True in the original)")
    q_lr_milestones: Tuple[int, ...] = _f((100, 200, 300), "epochs at which Q's lr is multiplied by q_lr_gamma (step_S)")
    q_lr_gamma: float = _f(0.1, "lr decay factor of Q (decayRate_S)")
    # ---- G optimiser --------------------------------------------------------------------------------------
    g_lr: float = _f(1e-3, "initial lr of G's Adam (lr_G)")
    g_betas: Tuple[float, float] = _f((0.5, 0.999), "Adam betas of G (b1, b2)")
    g_lr_milestones: Tuple[int, ...] = _f((100, 200, 300), "epochs at which G's lr is multiplied by g_lr_gamma (step_G)")
    g_lr_gamma: float = _f(0.1, "lr decay factor of G (decayRate_G)")
    # ---- generator --------------------------------------------------------------------------------------
    generator: str = _f("cifar", "cifar: label-embedding product, plain BNs; imagenet: conditional BNs")
    latent_dim: int = _f(100, "noise dimension")
    # ---- losses -----------------------------------------------------------------------------------------
    temperature: float = _f(20.0, "T of L_Q (hard-coded in the original: 20 CIFAR, 5 ImageNet)")
    lambda_l: float = _f(0.1, "lower margin of the normalised disagreement entropy")
    lambda_u: float = _f(0.8, "upper margin")
    alpha_ds: float = _f(0.2, "weight of the disagreement-sample CE in L_bal")
    alpha_as: float = _f(0.1, "weight of the agreement-sample CE in L_bal")
    beta_l_bal: float = _f(1.0, "weight of L_bal in L_G (beta)")
    gamma_bns: float = _f(1.0, "weight of L_BNS in L_G (gamma)")
    # ---- evaluation, output, runtime --------------------------------------------------------------------
    eval_every: int = _f(1, "evaluate Q on the real test set every this many epochs")
    eval_during_warmup: bool = _f(
        True, "false: evaluate only from epoch warmup_epochs - 1 on (the original's ImageNet code; Q's weights do not move before)"
    )
    eval_batch_size: int = _f(200, "test batch size (does not change results: P and Q are in eval mode, ranges frozen)")
    num_workers: int = _f(8, "data-loader workers for evaluation (nThreads)")
    output_dir: str = _f("runs", "where run directories (logs, checkpoints, config) go")
    checkpoint_every: int = _f(1, "save a resumable checkpoint every this many epochs (0: never)")
    tensorboard: bool = _f(False, "also log every epoch's metrics and H' histogram to TensorBoard in <run dir>/tb")
    resume: str = _f("", "checkpoint to resume from")
    device: str = _f("auto", "torch device: auto, cpu, cuda, cuda:N")
    backend: str = _f("auto", "adadfq_fast op backend")

    def __post_init__(self) -> None:
        types = field_types()
        for f in dataclasses.fields(self):
            value = _coerce(f.name, getattr(self, f.name), types[f.name])
            object.__setattr__(self, f.name, value)
        self._validate()

    # ---- validation -------------------------------------------------------------------------------------
    def _validate(self) -> None:
        for key, choices in _CHOICES.items():
            if getattr(self, key) not in choices:
                raise ConfigError(f"{key}={getattr(self, key)!r}: expected one of {list(choices)}")
        if self.dataset not in DATASETS:
            raise ConfigError(f"dataset={self.dataset!r}: expected one of {sorted(DATASETS)}")
        if self.model not in MODELS:
            raise ConfigError(f"model={self.model!r}: expected one of {list(MODELS)}")
        expected = DATASETS[self.dataset]["num_classes"]
        if self.num_classes != expected:
            raise ConfigError(f"num_classes={self.num_classes} does not match dataset {self.dataset!r} ({expected} classes)")
        for key in ("wbits", "abits"):
            if not 2 <= getattr(self, key) <= 8:
                raise ConfigError(f"{key}={getattr(self, key)}: expected 2..8")
        for key in ("num_classes", "img_size", "channels", "epochs", "iters_per_epoch", "batch_size", "latent_dim",
                    "eval_every", "eval_batch_size"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key}={getattr(self, key)}: expected >= 1")
        for key in ("warmup_epochs", "act_range_unfreeze_epochs", "num_workers", "checkpoint_every"):
            if getattr(self, key) < 0:
                raise ConfigError(f"{key}={getattr(self, key)}: expected >= 0")
        if self.img_size % 4:
            raise ConfigError(f"img_size={self.img_size}: the generator needs a multiple of 4")
        if self.batch_size < 2:
            # H' divides by (ln C - min H) over the batch and the BN statistics need > 1 sample.
            raise ConfigError(f"batch_size={self.batch_size}: expected >= 2")
        for key in ("q_lr", "g_lr", "temperature"):
            if not (math.isfinite(getattr(self, key)) and getattr(self, key) > 0):
                raise ConfigError(f"{key}={getattr(self, key)}: expected a positive number")
        for key in ("q_momentum", "q_weight_decay", "q_lr_gamma", "g_lr_gamma", "lambda_l", "lambda_u",
                    "alpha_ds", "alpha_as", "beta_l_bal", "gamma_bns"):
            if not (math.isfinite(getattr(self, key)) and getattr(self, key) >= 0):
                raise ConfigError(f"{key}={getattr(self, key)}: expected a finite number >= 0")
        for key in ("q_lr_milestones", "g_lr_milestones"):
            steps = getattr(self, key)
            if any(s < 0 for s in steps) or list(steps) != sorted(steps):
                raise ConfigError(f"{key}={list(steps)}: expected ascending epochs >= 0")
        if not all(0 <= b < 1 for b in self.g_betas):
            raise ConfigError(f"g_betas={self.g_betas}: expected two numbers in [0, 1)")
        if self.q_nesterov and self.q_optimizer == "sgd" and self.q_momentum <= 0:
            raise ConfigError("q_nesterov=true needs q_momentum > 0")

    # ---- helpers ----------------------------------------------------------------------------------------
    def replace(self, **changes: Any) -> "AdaDFQConfig":
        unknown = [k for k in changes if k not in field_types()]
        if unknown:
            raise ConfigError(_unknown_message(unknown[0]))
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> Dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def lr_q(self, epoch: int) -> float:
        """Q's lr in ``epoch`` (0-based): decayed once per milestone m with epoch >= m (the original's LRPolicy)."""
        return self.q_lr * self.q_lr_gamma ** sum(epoch >= m for m in self.q_lr_milestones)

    def lr_g(self, epoch: int) -> float:
        return self.g_lr * self.g_lr_gamma ** sum(epoch >= m for m in self.g_lr_milestones)

    def act_ranges_frozen(self, epoch: int) -> bool:
        return epoch >= self.act_range_unfreeze_epochs

    def q_stepped(self, epoch: int) -> bool:
        return epoch >= self.warmup_epochs

    def evaluates(self, epoch: int) -> bool:
        """Whether the run evaluates Q after ``epoch`` (0-based)."""
        if not self.eval_during_warmup and epoch < self.warmup_epochs - 1:
            return False
        # Also the last warm-up epoch: Q then has P's weights and calibrated ranges (the "calibration only" number).
        return (epoch + 1) % self.eval_every == 0 or epoch == self.epochs - 1 or epoch == self.warmup_epochs - 1


# ---- types, parsing, serialisation -------------------------------------------------------------------------
_TYPES: Dict[str, Any] = {}


def field_types() -> Dict[str, Any]:
    """Setting name -> its (resolved) annotation, in declaration order."""
    if not _TYPES:
        hints = typing.get_type_hints(AdaDFQConfig)
        _TYPES.update({f.name: hints[f.name] for f in dataclasses.fields(AdaDFQConfig)})
    return _TYPES


def _unknown_message(key: str) -> str:
    close = difflib.get_close_matches(key, list(field_types()), n=3)
    hint = f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""
    return f"unknown setting {key!r}{hint}; known settings: {', '.join(field_types())}"


def _type_name(tp) -> str:
    origin = typing.get_origin(tp)
    if origin is tuple:
        args = typing.get_args(tp)
        inner = args[0].__name__
        return f"list of {inner}" if args[-1] is Ellipsis else f"list of {len(args)} {inner}"
    return tp.__name__


def _coerce(key: str, value: Any, tp) -> Any:
    """Check ``value`` against ``tp``; widen int -> float and list -> tuple, nothing else."""
    bad = ConfigError(f"{key}={value!r}: expected {_type_name(tp)}, got {type(value).__name__}")
    origin = typing.get_origin(tp)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise bad
        args = typing.get_args(tp)
        elem = args[0]
        if args[-1] is not Ellipsis and len(value) != len(args):
            raise ConfigError(f"{key}={list(value)!r}: expected {_type_name(tp)}")
        try:
            return tuple(_coerce(key, v, elem) for v in value)
        except ConfigError:
            raise bad from None
    if tp is bool:
        if not isinstance(value, bool):
            raise bad
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise bad
        return value
    raise TypeError(f"unsupported setting type {tp!r} for {key}")  # pragma: no cover (schema bug)


def parse_value(key: str, text: str) -> Any:
    """Parse the text of a ``key=value`` override into the setting's type.

    Values are TOML literals (``4``, ``1e-5``, ``true``, ``[100, 200]``, ``"x"``); strings may also be bare
    (``device=cuda:1``) and lists may omit the brackets (``q_lr_milestones=100,200``; empty: ``[]``).
    """
    types = field_types()
    if key not in types:
        raise ConfigError(_unknown_message(key))
    tp = types[key]
    text = text.strip()
    try:
        value = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        value = None
        if tp is str:
            value = text
        elif typing.get_origin(tp) is tuple and text:
            try:
                value = tomllib.loads(f"v = [{text}]")["v"]
            except tomllib.TOMLDecodeError:
                pass
        if value is None:
            raise ConfigError(f"{key}={text!r}: cannot parse as {_type_name(tp)}") from None
    if tp is str and not isinstance(value, str):
        value = text  # e.g. name=2024 stays the string "2024"
    return _coerce(key, value, tp)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")  # pragma: no cover


def to_toml(cfg: AdaDFQConfig) -> str:
    """The full config as a flat TOML document that ``load_config(path)`` reads back to an equal config."""
    lines = ["# adadfq_fast run configuration (every setting, resolved)"]
    for key, value in cfg.to_dict().items():
        lines.append(f"{key} = {_toml_value(value)}")
    return "\n".join(lines) + "\n"


def from_mapping(values: Mapping[str, Any], base: AdaDFQConfig | None = None) -> AdaDFQConfig:
    """``base`` (default: the defaults) with ``values`` applied; unknown keys raise :class:`ConfigError`."""
    types = field_types()
    for key in values:
        if key not in types:
            raise ConfigError(_unknown_message(key))
    if base is None:
        return AdaDFQConfig(**dict(values))
    return dataclasses.replace(base, **dict(values))
