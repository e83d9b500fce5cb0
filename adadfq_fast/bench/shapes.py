"""Tensor shapes of the networks in the paper, for benchmarks (no model code needed).

ResNet-20 (CIFAR, 32x32): conv1 16ch, three stages of 3 basic blocks (16/32/64 channels at 32/16/8 px). Its 19
main-path BN layers and the 19 activations after ReLUs both have the conv-output shapes below.
ResNet-18 (ImageNet, 224x224): conv1 64ch at 112 px, four stages of 2 basic blocks (64/128/256/512 at 56/28/14/7).
"""
from typing import Dict, List, Tuple

Shape = Tuple[int, ...]


def resnet20_feature_shapes(batch: int) -> List[Shape]:
    shapes = [(batch, 16, 32, 32)]
    for channels, px in ((16, 32), (32, 16), (64, 8)):
        shapes += [(batch, channels, px, px)] * 6
    return shapes


def resnet20_weight_shapes(num_classes: int = 10) -> List[Shape]:
    shapes = [(16, 3, 3, 3)]
    cin = 16
    for channels in (16, 32, 64):
        for _ in range(3):
            shapes += [(channels, cin, 3, 3), (channels, channels, 3, 3)]
            cin = channels
    return shapes + [(num_classes, 64)]


def resnet18_feature_shapes(batch: int) -> List[Shape]:
    shapes = [(batch, 64, 112, 112)]
    for channels, px in ((64, 56), (128, 28), (256, 14), (512, 7)):
        shapes += [(batch, channels, px, px)] * 4
    return shapes


def resnet18_weight_shapes(num_classes: int = 1000) -> List[Shape]:
    shapes = [(64, 3, 7, 7)]
    cin = 64
    for channels in (64, 128, 256, 512):
        for _ in range(2):
            shapes += [(channels, cin, 3, 3), (channels, channels, 3, 3)]
            cin = channels
    return shapes + [(num_classes, 512)]


# name -> (feature shapes, weight shapes, logits shape)
SETTINGS: Dict[str, Tuple[List[Shape], List[Shape], Shape]] = {
    "resnet20_b16": (resnet20_feature_shapes(16), resnet20_weight_shapes(10), (16, 10)),
    "resnet20_b256": (resnet20_feature_shapes(256), resnet20_weight_shapes(10), (256, 10)),
    "resnet18_b16": (resnet18_feature_shapes(16), resnet18_weight_shapes(1000), (16, 1000)),
    "logits_b256_c1000": ([], [], (256, 1000)),
}


# Integer convolutions (after the float stem) as (name, C, H, O, kernel, stride, occurrences per forward pass),
# for the int_conv2d benchmarks (CPU and GPU).
INT_CONV_RESNET20 = [
    ("s1.conv3x3", 16, 32, 16, 3, 1, 6),
    ("s2.conv3x3/2", 16, 32, 32, 3, 2, 1),
    ("s2.proj1x1/2", 16, 32, 32, 1, 2, 1),
    ("s2.conv3x3", 32, 16, 32, 3, 1, 5),
    ("s3.conv3x3/2", 32, 16, 64, 3, 2, 1),
    ("s3.proj1x1/2", 32, 16, 64, 1, 2, 1),
    ("s3.conv3x3", 64, 8, 64, 3, 1, 5),
]
INT_CONV_RESNET18 = [
    ("l1.conv3x3", 64, 56, 64, 3, 1, 4),
    ("l2.conv3x3/2", 64, 56, 128, 3, 2, 1),
    ("l2.proj1x1/2", 64, 56, 128, 1, 2, 1),
    ("l2.conv3x3", 128, 28, 128, 3, 1, 3),
    ("l3.conv3x3/2", 128, 28, 256, 3, 2, 1),
    ("l3.proj1x1/2", 128, 28, 256, 1, 2, 1),
    ("l3.conv3x3", 256, 14, 256, 3, 1, 3),
    ("l4.conv3x3/2", 256, 14, 512, 3, 2, 1),
    ("l4.proj1x1/2", 256, 14, 512, 1, 2, 1),
    ("l4.conv3x3", 512, 7, 512, 3, 1, 3),
]
