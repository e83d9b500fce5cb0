"""CIFAR ResNets (He et al. 2016, section 4.2) laid out like pytorchcv's ``CIFARResNet``.

Module names, parameter/buffer shapes and ``state_dict()`` key order equal those of pytorchcv's
``resnet{20,56,110,...}_cifar{10,100}`` / ``resnet{164,...}bn_cifar*``, so its checkpoints load unchanged:

    features.init_block.{conv,bn}                     3x3 conv (in_channels -> 16) + BN + ReLU
    features.stage{s}.unit{u}.body.conv{1,2}.{conv,bn}     basic block (conv{1,2,3} for bottleneck units)
    features.stage{s}.unit{u}.identity_conv.{conv,bn}      1x1 projection where shape changes
    features.final_pool                               global average pool (no parameters)
    output                                            Linear(64 or 256, num_classes)

Differences from pytorchcv that keep every key and every output the same:
* ``final_pool`` averages the whole final map whatever its size, so any ``in_size`` works (pytorchcv's fixed
  8x8 pool only fits 32x32 inputs); on 32x32 inputs it is the same 8x8 average pool, bit for bit.
* ReLUs are separate, not in-place modules (one per activation site: 19 in ResNet-20), so quantization wrappers
  can swap them one by one and forward hooks see unmodified tensors.
* A unit computes its shortcut after its body, so the order in which BatchNorms run equals their registration
  order (``model.modules()``); pytorchcv runs the shortcut's BN first.
"""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["ConvBN", "ResUnit", "GlobalAvgPool", "CIFARResNet", "resnet_cifar", "cifar_resnet_depths"]


class GlobalAvgPool(nn.Module):
    """Average pool whose window is the whole input map: output N x C x 1 x 1."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # avg_pool2d (not adaptive pooling) so the summation order, hence every bit, matches a fixed 8x8 pool.
        return nn.functional.avg_pool2d(x, kernel_size=x.shape[-2:])


class ConvBN(nn.Module):
    """conv (no bias) -> BatchNorm2d -> optional ReLU; submodule names ``conv``/``bn``/``activ`` as in pytorchcv."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, relu: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding=kernel_size // 2, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        # Parameter-free, so it adds no state_dict key; absent (not Identity) where pytorchcv has no activation.
        if relu:
            self.activ = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn(self.conv(x))
        return self.activ(x) if hasattr(self, "activ") else x


class _BasicBody(nn.Sequential):
    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.conv1 = ConvBN(in_channels, out_channels, 3, stride)
        self.conv2 = ConvBN(out_channels, out_channels, 3, 1, relu=False)


class _BottleneckBody(nn.Sequential):
    # pytorchcv's CIFAR bottleneck (conv1_stride=False): the stride sits on the 3x3 conv.
    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        mid = out_channels // 4
        self.conv1 = ConvBN(in_channels, mid, 1)
        self.conv2 = ConvBN(mid, mid, 3, stride)
        self.conv3 = ConvBN(mid, out_channels, 1, relu=False)


class ResUnit(nn.Module):
    """Residual unit: ``relu(body(x) + shortcut(x))``, shortcut a 1x1 conv+BN where the shape changes."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, bottleneck: bool = False):
        super().__init__()
        body = _BottleneckBody if bottleneck else _BasicBody
        self.body = body(in_channels, out_channels, stride)
        self.resize_identity = in_channels != out_channels or stride != 1
        if self.resize_identity:
            self.identity_conv = ConvBN(in_channels, out_channels, 1, stride, relu=False)
        self.activ = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        identity = self.identity_conv(x) if self.resize_identity else x
        return self.activ(y + identity)


class CIFARResNet(nn.Module):
    """ResNet for small images. ``channels[s]`` lists the output width of each unit of stage ``s``."""

    def __init__(
        self,
        channels: list[list[int]],
        init_block_channels: int = 16,
        bottleneck: bool = False,
        in_channels: int = 3,
        in_size: tuple[int, int] = (32, 32),
        num_classes: int = 10,
    ):
        super().__init__()
        if in_channels < 1 or num_classes < 1:
            raise ValueError(f"in_channels and num_classes must be >= 1, got {in_channels} and {num_classes}")
        self.in_channels = in_channels
        self.in_size = tuple(in_size)
        self.num_classes = num_classes
        self.features = nn.Sequential()
        self.features.add_module("init_block", ConvBN(in_channels, init_block_channels, 3))
        width = init_block_channels
        for i, stage_channels in enumerate(channels):
            stage = nn.Sequential()
            for j, out_channels in enumerate(stage_channels):
                stride = 2 if j == 0 and i != 0 else 1
                stage.add_module(f"unit{j + 1}", ResUnit(width, out_channels, stride, bottleneck))
                width = out_channels
            self.features.add_module(f"stage{i + 1}", stage)
        self.features.add_module("final_pool", GlobalAvgPool())
        self.output = nn.Linear(width, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        return self.output(x.flatten(1))


def cifar_resnet_depths(bottleneck: bool = False, limit: int = 1202) -> list[int]:
    """Valid depths: 6n+2 for basic units (20, 32, 44, 56, 110, ...), 9n+2 for bottleneck units (164, ...)."""
    step = 9 if bottleneck else 6
    return list(range(step + 2, limit + 1, step))


def resnet_cifar(
    depth: int = 20,
    num_classes: int = 10,
    in_channels: int = 3,
    in_size: tuple[int, int] = (32, 32),
    bottleneck: bool = False,
) -> CIFARResNet:
    """CIFAR ResNet of the given depth, widths 16/32/64 (x4 for bottleneck units), 3 stages of equal length."""
    step = 9 if bottleneck else 6
    if depth < step + 2 or (depth - 2) % step:
        kind = "bottleneck" if bottleneck else "basic-block"
        raise ValueError(f"a {kind} CIFAR ResNet needs depth = {step}n+2 (n >= 1), got {depth}")
    units = (depth - 2) // step
    widths = [16, 32, 64]
    if bottleneck:
        widths = [4 * w for w in widths]
    return CIFARResNet(
        channels=[[w] * units for w in widths],
        init_block_channels=16,
        bottleneck=bottleneck,
        in_channels=in_channels,
        in_size=in_size,
        num_classes=num_classes,
    )
