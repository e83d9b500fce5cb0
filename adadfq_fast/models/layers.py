"""Layer queries the engine needs on any model (ours, pytorchcv's or torchvision's)."""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["bn_layers", "example_input", "measure_bn_statistics"]


def example_input(model: nn.Module, batch: int = 1) -> torch.Tensor | None:
    """A zero input batch for ``model``, or None when its input shape is unknown.

    Uses ``model.in_size`` (our CIFAR ResNets and pytorchcv models have it) and the first Conv2d's
    ``in_channels``; device and dtype follow the model's first parameter.
    """
    in_size = getattr(model, "in_size", None)
    first_conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    if in_size is None or first_conv is None:
        return None
    p = first_conv.weight
    return torch.zeros(batch, first_conv.in_channels, *in_size, device=p.device, dtype=p.dtype)


def bn_layers(model: nn.Module, example: torch.Tensor | None = None, trace: bool = True,
              types: tuple[type[nn.Module], ...] = (nn.BatchNorm2d,)) -> list[nn.Module]:
    """The model's BatchNorm2d modules (``types``) in the order the forward pass runs them (the layers of L_BNS).

    Registration order (``model.modules()``) is not always forward order: pytorchcv's ResNet units register the
    shortcut after the body but run it first. So, when ``trace`` is true and an input is known (``example``, else
    one built from ``model.in_size``), one no-grad forward in eval mode records the call order; training flags
    and running statistics are left as they were. BatchNorms that this forward never reaches are left out.
    Without an input, or with ``trace=False``, registration order is returned; for ``CIFARResNet`` the two
    orders are equal. Tracing runs the model once, so pass ``trace=False`` for a model whose forward has side
    effects (e.g. a quantized copy whose activation ranges are still being updated; ``game.BNCapture``, which
    pairs inputs with layers as the hooks fire, needs no order either).
    """
    # Layers without running statistics (track_running_stats=False) have nothing for L_BNS to match.
    registered = [m for m in model.modules() if isinstance(m, types) and getattr(m, "running_mean", None) is not None]
    if not trace or not registered:
        return registered
    if example is None:
        example = example_input(model)
        if example is None:
            return registered
    order: list[nn.Module] = []
    seen: set[int] = set()

    def record(module, _inputs):
        if id(module) not in seen:
            seen.add(id(module))
            order.append(module)

    handles = [m.register_forward_pre_hook(record) for m in registered]
    modes = {m: m.training for m in model.modules()}
    try:
        model.eval()  # eval: running statistics must not move
        with torch.no_grad():
            model(example)
    finally:
        for h in handles:
            h.remove()
        for m, training in modes.items():
            m.training = training
    return order


def measure_bn_statistics(model: nn.Module, images: torch.Tensor) -> nn.Module:
    """``model`` in eval mode with every BatchNorm2d's running statistics measured on ``images`` (one training-mode
    forward, momentum None: the plain average), so that a randomly initialised network normalises its activations
    as a trained one does. Benchmarks and tests use it in place of pretrained weights."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = None
    model.train()
    with torch.no_grad():
        model(images)
    return model.eval()
