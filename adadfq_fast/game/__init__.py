"""The AdaDFQ game: generators, BN-statistics capture (and, later, objectives, schedules and the trainer)."""
from .bn_capture import BNCapture
from .generators import (
    GENERATOR_KINDS,
    CategoricalConditionalBatchNorm2d,
    CifarGenerator,
    ImageNetGenerator,
    build_generator,
)

__all__ = [
    "BNCapture",
    "GENERATOR_KINDS",
    "CategoricalConditionalBatchNorm2d",
    "CifarGenerator",
    "ImageNetGenerator",
    "build_generator",
]
