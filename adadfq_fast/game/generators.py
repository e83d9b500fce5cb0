"""The AdaDFQ generators (spec, "Generator").

Two architectures, as in the authors' code (``Generator`` / ``Generator_imagenet`` in their ``main.py``):

* :class:`CifarGenerator`: ``Embedding(C, latent)(y) * z`` -> Linear -> 128 x s x s (s = img_size // 4) ->
  BN(128) -> up x2 -> Conv3x3(128, 128) -> BN(128, eps=0.8) -> LeakyReLU(0.2) -> up x2 -> Conv3x3(128, 64) ->
  BN(64, eps=0.8) -> LeakyReLU(0.2) -> Conv3x3(64, channels) -> Tanh -> BN(channels, affine=False).
* :class:`ImageNetGenerator`: the same trunk without the label product (``z`` goes straight into the Linear);
  the three affine BNs become :class:`CategoricalConditionalBatchNorm2d` (per-class scale/shift).

Module names, creation order and default initialisations are the original's, so (a) the authors' generator
``state_dict`` loads as is and (b) under the same seed the initial weights are the same. The original hard-codes
1000 classes in the ImageNet generator and 32/224-pixel images only through its configs; here any class count,
channel count and image size divisible by 4 works.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "CategoricalConditionalBatchNorm2d",
    "CifarGenerator",
    "ImageNetGenerator",
    "GENERATOR_KINDS",
    "build_generator",
]


class CategoricalConditionalBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d without its own affine, followed by a per-class affine read from two Embeddings.

    ``out = weights[y] * BN(x) + biases[y]``; the embeddings start at 1 and 0, so at initialisation it is a plain
    BatchNorm2d. Running statistics behave exactly as ``nn.BatchNorm2d``'s (the original re-implements the same
    ``F.batch_norm`` call). The state_dict keys (``weights.weight``, ``biases.weight``, running buffers) match the
    original class of the same name.
    """

    def __init__(self, num_classes: int, num_features: int, eps: float = 1e-5, momentum: float = 0.1):
        super().__init__(num_features, eps=eps, momentum=momentum, affine=False, track_running_stats=True)
        self.num_classes = num_classes
        self.weights = nn.Embedding(num_classes, num_features)
        self.biases = nn.Embedding(num_classes, num_features)
        self._init_affine()

    def _init_affine(self) -> None:
        nn.init.ones_(self.weights.weight)
        nn.init.zeros_(self.biases.weight)

    def reset_parameters(self) -> None:
        super().reset_parameters()
        if hasattr(self, "weights"):  # BatchNorm2d.__init__ calls this before the embeddings exist
            self._init_affine()

    def forward(self, x: Tensor, y: Tensor) -> Tensor:  # type: ignore[override]
        out = super().forward(x)
        w = self.weights(y)[:, :, None, None]
        b = self.biases(y)[:, :, None, None]
        return out * w + b

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, " + super().extra_repr()


def _check_args(num_classes: int, img_size: int, channels: int, latent_dim: int) -> None:
    for name, value in (("num_classes", num_classes), ("img_size", img_size), ("channels", channels), ("latent_dim", latent_dim)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if img_size % 4:
        # Two nearest x2 upsamplings from img_size // 4: other sizes would silently come out smaller.
        raise ValueError(f"img_size must be divisible by 4, got {img_size}")


class _GeneratorBase(nn.Module):
    num_classes: int
    latent_dim: int
    init_size: int

    def _check_inputs(self, z: Tensor, y: Tensor) -> None:
        if z.dim() != 2 or z.shape[1] != self.latent_dim:
            raise ValueError(f"z must have shape [B, {self.latent_dim}], got {tuple(z.shape)}")
        if y.dim() != 1 or y.shape[0] != z.shape[0]:
            raise ValueError(f"y must have shape [{z.shape[0]}] (one label per row of z), got {tuple(y.shape)}")
        if y.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"y must be an integer (long) tensor of labels, got {y.dtype}")

    def sample_inputs(self, batch_size: int, device=None, generator: torch.Generator | None = None):
        """(z, y) as the game draws them: z ~ N(0, I) [B, latent_dim], y ~ U{0..C-1} [B]."""
        z = torch.randn(batch_size, self.latent_dim, device=device, generator=generator)
        y = torch.randint(0, self.num_classes, (batch_size,), device=device, generator=generator)
        return z, y


class CifarGenerator(_GeneratorBase):
    """CIFAR-style generator: label embedding multiplied into the noise, plain BatchNorms. ``G(z, y)``."""

    kind = "cifar"

    def __init__(self, num_classes: int, img_size: int = 32, channels: int = 3, latent_dim: int = 100):
        super().__init__()
        _check_args(num_classes, img_size, channels, latent_dim)
        self.num_classes, self.img_size, self.channels, self.latent_dim = num_classes, img_size, channels, latent_dim
        self.init_size = img_size // 4
        # Same names and creation order as the original (state_dict compatibility, same init under one seed).
        self.label_emb = nn.Embedding(num_classes, latent_dim)
        self.l1 = nn.Sequential(nn.Linear(latent_dim, 128 * self.init_size**2))
        self.conv_blocks0 = nn.Sequential(nn.BatchNorm2d(128))
        self.conv_blocks1 = nn.Sequential(
            nn.Conv2d(128, 128, 3, stride=1, padding=1),
            nn.BatchNorm2d(128, eps=0.8),  # the original's positional 0.8 is eps
            nn.LeakyReLU(0.2, inplace=True),
        )
        self.conv_blocks2 = nn.Sequential(
            nn.Conv2d(128, 64, 3, stride=1, padding=1),
            nn.BatchNorm2d(64, eps=0.8),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(64, channels, 3, stride=1, padding=1),
            nn.Tanh(),
            nn.BatchNorm2d(channels, affine=False),
        )

    def forward(self, z: Tensor, y: Tensor) -> Tensor:
        self._check_inputs(z, y)
        out = self.l1(self.label_emb(y) * z)
        img = out.view(out.shape[0], 128, self.init_size, self.init_size)
        img = self.conv_blocks0(img)
        img = F.interpolate(img, scale_factor=2)  # nearest
        img = self.conv_blocks1(img)
        img = F.interpolate(img, scale_factor=2)
        return self.conv_blocks2(img)


class ImageNetGenerator(_GeneratorBase):
    """ImageNet-style generator: no label product; labels enter through conditional BatchNorms. ``G(z, y)``."""

    kind = "imagenet"

    def __init__(self, num_classes: int = 1000, img_size: int = 224, channels: int = 3, latent_dim: int = 100):
        super().__init__()
        _check_args(num_classes, img_size, channels, latent_dim)
        self.num_classes, self.img_size, self.channels, self.latent_dim = num_classes, img_size, channels, latent_dim
        self.init_size = img_size // 4
        self.l1 = nn.Sequential(nn.Linear(latent_dim, 128 * self.init_size**2))
        self.conv_blocks0_0 = CategoricalConditionalBatchNorm2d(num_classes, 128)
        self.conv_blocks1_0 = nn.Conv2d(128, 128, 3, stride=1, padding=1)
        self.conv_blocks1_1 = CategoricalConditionalBatchNorm2d(num_classes, 128, eps=0.8)
        self.conv_blocks1_2 = nn.LeakyReLU(0.2, inplace=True)
        self.conv_blocks2_0 = nn.Conv2d(128, 64, 3, stride=1, padding=1)
        self.conv_blocks2_1 = CategoricalConditionalBatchNorm2d(num_classes, 64, eps=0.8)
        self.conv_blocks2_2 = nn.LeakyReLU(0.2, inplace=True)
        self.conv_blocks2_3 = nn.Conv2d(64, channels, 3, stride=1, padding=1)
        self.conv_blocks2_4 = nn.Tanh()
        self.conv_blocks2_5 = nn.BatchNorm2d(channels, affine=False)

    def forward(self, z: Tensor, y: Tensor) -> Tensor:
        self._check_inputs(z, y)
        out = self.l1(z)
        img = out.view(out.shape[0], 128, self.init_size, self.init_size)
        img = self.conv_blocks0_0(img, y)
        img = F.interpolate(img, scale_factor=2)
        img = self.conv_blocks1_2(self.conv_blocks1_1(self.conv_blocks1_0(img), y))
        img = F.interpolate(img, scale_factor=2)
        img = self.conv_blocks2_2(self.conv_blocks2_1(self.conv_blocks2_0(img), y))
        return self.conv_blocks2_5(self.conv_blocks2_4(self.conv_blocks2_3(img)))


GENERATOR_KINDS = {"cifar": CifarGenerator, "imagenet": ImageNetGenerator}


def build_generator(kind: str, num_classes: int, img_size: int, channels: int = 3, latent_dim: int = 100) -> nn.Module:
    """``kind``: "cifar" (label-embedding product, plain BNs) or "imagenet" (conditional BNs)."""
    try:
        cls = GENERATOR_KINDS[kind]
    except KeyError:
        raise ValueError(f"unknown generator kind {kind!r}; expected one of {sorted(GENERATOR_KINDS)}") from None
    return cls(num_classes=num_classes, img_size=img_size, channels=channels, latent_dim=latent_dim)
