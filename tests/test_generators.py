"""adadfq_fast.game.generators: the CIFAR- and ImageNet-style generators of the spec ("Generator")."""
import pytest
import torch
from torch import nn

from adadfq_fast.game import CategoricalConditionalBatchNorm2d, CifarGenerator, ImageNetGenerator, build_generator

# (kind, classes, img_size, channels, batch)
SHAPES = [
    ("cifar", 10, 32, 3, 4),
    ("cifar", 100, 32, 3, 2),
    ("cifar", 7, 28, 1, 3),
    ("cifar", 3, 16, 4, 2),
    ("imagenet", 1000, 224, 3, 2),
    ("imagenet", 5, 64, 3, 3),
    ("imagenet", 2, 20, 1, 2),
]


@pytest.mark.parametrize("kind,classes,size,channels,batch", SHAPES)
def test_output_shape_and_final_bn(kind, classes, size, channels, batch):
    G = build_generator(kind, classes, size, channels)
    z, y = G.sample_inputs(batch)
    x = G(z, y)
    assert x.shape == (batch, channels, size, size) and x.dtype == torch.float32
    # The last layer is BN(channels, affine=False) in training mode: zero mean, unit (biased) variance per channel.
    torch.testing.assert_close(x.mean(dim=(0, 2, 3)), torch.zeros(channels), atol=1e-5, rtol=0)
    torch.testing.assert_close(x.var(dim=(0, 2, 3), unbiased=False), torch.ones(channels), atol=1e-2, rtol=0)  # v / (v + eps)
    G.eval()
    assert G(z[:1], y[:1]).shape == (1, channels, size, size)  # eval mode: running stats, batch of one


def test_latent_dim_and_classes_are_parameters():
    G = build_generator("cifar", 12, 32, 3, latent_dim=37)
    assert G.label_emb.weight.shape == (12, 37) and G.l1[0].in_features == 37
    assert G(*G.sample_inputs(2)).shape == (2, 3, 32, 32)
    Gi = build_generator("imagenet", 12, 32, 3, latent_dim=37)
    assert Gi.conv_blocks1_1.weights.weight.shape == (12, 128)
    assert Gi(*Gi.sample_inputs(2)).shape == (2, 3, 32, 32)


def test_cifar_architecture():
    G = CifarGenerator(num_classes=10, img_size=32, channels=3)
    bns = [m for m in G.modules() if isinstance(m, nn.BatchNorm2d)]
    assert [(b.num_features, b.eps, b.affine) for b in bns] == [(128, 1e-5, True), (128, 0.8, True), (64, 0.8, True), (3, 1e-5, False)]
    assert G.l1[0].out_features == 128 * 8 * 8
    convs = [m for m in G.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.padding) for c in convs] == [
        (128, 128, (3, 3), (1, 1)), (128, 64, (3, 3), (1, 1)), (64, 3, (3, 3), (1, 1))]
    assert all(m.negative_slope == 0.2 for m in G.modules() if isinstance(m, nn.LeakyReLU))
    # The label multiplies the noise: the same z with another label gives another image.
    z = torch.randn(2, 100)
    assert not torch.allclose(G(z, torch.tensor([0, 1])), G(z, torch.tensor([2, 3])))


def test_state_dict_keys_match_the_original():
    """Same module names as the authors' Generator / Generator_imagenet, so their checkpoints load as is."""
    cifar = set(CifarGenerator(10).state_dict())
    bn = lambda p: {f"{p}.{k}" for k in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")}
    assert cifar == ({"label_emb.weight", "l1.0.weight", "l1.0.bias", "conv_blocks1.0.weight", "conv_blocks1.0.bias",
                      "conv_blocks2.0.weight", "conv_blocks2.0.bias", "conv_blocks2.3.weight", "conv_blocks2.3.bias",
                      "conv_blocks2.5.running_mean", "conv_blocks2.5.running_var", "conv_blocks2.5.num_batches_tracked"}
                     | bn("conv_blocks0.0") | bn("conv_blocks1.1") | bn("conv_blocks2.1"))
    cbn = lambda p: {f"{p}.{k}" for k in ("weights.weight", "biases.weight", "running_mean", "running_var", "num_batches_tracked")}
    imnet = set(ImageNetGenerator(10, img_size=32).state_dict())
    assert imnet == ({"l1.0.weight", "l1.0.bias"} | cbn("conv_blocks0_0") | cbn("conv_blocks1_1") | cbn("conv_blocks2_1")
                     | {f"conv_blocks{i}.{k}" for i in ("1_0", "2_0", "2_3") for k in ("weight", "bias")}
                     | {f"conv_blocks2_5.{k}" for k in ("running_mean", "running_var", "num_batches_tracked")})


def test_conditional_bn_init_and_per_class_affine():
    G = ImageNetGenerator(num_classes=6, img_size=16, channels=3)
    cbns = [m for m in G.modules() if isinstance(m, CategoricalConditionalBatchNorm2d)]
    assert [(m.num_features, m.eps) for m in cbns] == [(128, 1e-5), (128, 0.8), (64, 0.8)]
    for m in cbns:
        assert not m.affine and m.weight is None
        assert torch.equal(m.weights.weight, torch.ones(6, m.num_features))
        assert torch.equal(m.biases.weight, torch.zeros(6, m.num_features))
    assert isinstance(G.conv_blocks2_5, nn.BatchNorm2d) and not G.conv_blocks2_5.affine

    m = CategoricalConditionalBatchNorm2d(4, 3, eps=0.5)
    x = torch.randn(5, 3, 4, 4)
    y = torch.tensor([0, 1, 2, 3, 1])
    plain = nn.functional.batch_norm(x, None, None, training=True, eps=0.5)
    torch.testing.assert_close(m(x, y), plain)  # at init: a plain BN
    with torch.no_grad():
        m.weights.weight.copy_(torch.arange(12.0).view(4, 3))
        m.biases.weight.copy_(-torch.arange(12.0).view(4, 3))
    w, b = m.weights.weight[y][:, :, None, None], m.biases.weight[y][:, :, None, None]
    torch.testing.assert_close(m(x, y), plain * w + b)
    m.reset_parameters()
    assert torch.equal(m.weights.weight, torch.ones(4, 3)) and torch.equal(m.running_var, torch.ones(3))


def test_imagenet_generator_ignores_labels_only_at_init():
    G = ImageNetGenerator(num_classes=4, img_size=16)
    z = torch.randn(3, 100)
    # No label product: with all class affines equal (init), the label does not matter...
    torch.testing.assert_close(G(z, torch.tensor([0, 1, 2])), G(z, torch.tensor([3, 3, 3])))
    with torch.no_grad():
        G.conv_blocks1_1.biases.weight[3].fill_(1.0)
    # ...until the per-class affines differ.
    assert not torch.allclose(G(z, torch.tensor([0, 1, 2])), G(z, torch.tensor([3, 3, 3])))


@pytest.mark.parametrize("kind", ["cifar", "imagenet"])
def test_gradients_reach_every_parameter(kind):
    G = build_generator(kind, 5, 16, 3)
    with torch.no_grad():  # make the conditional affines class-dependent so their gradients are generic
        for m in G.modules():
            if isinstance(m, CategoricalConditionalBatchNorm2d):
                m.weights.weight.add_(0.1 * torch.randn_like(m.weights.weight))
    z, y = G.sample_inputs(4)
    y = torch.tensor([0, 1, 2, 4])
    target = torch.randn(4, 3, 16, 16)
    ((G(z, y) - target) ** 2).mean().backward()
    for name, p in G.named_parameters():
        assert p.grad is not None, name
        if name.endswith("weights.weight") or name.endswith("biases.weight") or name == "label_emb.weight":
            used = p.grad[torch.tensor([0, 1, 2, 4])]
            assert used.abs().sum() > 0, name
            assert torch.count_nonzero(p.grad[3]) == 0, name  # class 3 was not drawn
        else:
            assert p.grad.abs().sum() > 0, name


def test_errors():
    with pytest.raises(ValueError, match="divisible by 4"):
        build_generator("cifar", 10, 30, 3)
    with pytest.raises(ValueError, match="unknown generator kind"):
        build_generator("gan", 10, 32, 3)
    with pytest.raises(ValueError, match="num_classes"):
        build_generator("imagenet", 0, 32, 3)
    G = build_generator("cifar", 10, 16, 3)
    with pytest.raises(ValueError, match="z must have shape"):
        G(torch.randn(2, 99), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="y must have shape"):
        G(torch.randn(2, 100), torch.tensor([0, 1, 2]))
    with pytest.raises(TypeError, match="integer"):
        G(torch.randn(2, 100), torch.tensor([0.0, 1.0]))
