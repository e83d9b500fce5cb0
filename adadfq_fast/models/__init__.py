"""Full-precision models for AdaDFQ: CIFAR ResNets with pytorchcv-compatible weights, a name-based zoo, and the
layer queries the engine needs (``bn_layers`` for L_BNS). pytorchcv and torchvision are imported only when a
model needs them."""
from .layers import bn_layers, example_input, measure_bn_statistics
from .resnet_cifar import CIFARResNet, resnet_cifar
from .zoo import available_models, build_model, load_checkpoint, load_state_dict_file, pretrained_url

__all__ = [
    "CIFARResNet",
    "resnet_cifar",
    "build_model",
    "load_checkpoint",
    "load_state_dict_file",
    "available_models",
    "pretrained_url",
    "bn_layers",
    "measure_bn_statistics",
    "example_input",
]
