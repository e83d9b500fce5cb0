"""Model zoo: pytorchcv-compatible CIFAR ResNets, build_model, checkpoints, bn_layers."""
import hashlib
import io
import os
import sys
import types
import zipfile

import pytest
import torch
from torch import nn

from adadfq_fast.models import (
    CIFARResNet,
    bn_layers,
    build_model,
    load_checkpoint,
    load_state_dict_file,
    pretrained_url,
    resnet_cifar,
)
from adadfq_fast.models import zoo

# pytorchcv's resnet20_cifar10 layout, written out from its source (resnet_cifar.py, resnet.py, common/conv.py):
# every conv block is <prefix>.conv.weight (no bias) followed by the five <prefix>.bn.* entries, in this order.
RESNET20_CONV_BLOCKS = [
    ("features.init_block", (16, 3, 3, 3)),
    *[(f"features.stage1.unit{u}.body.conv{c}", (16, 16, 3, 3)) for u in (1, 2, 3) for c in (1, 2)],
    ("features.stage2.unit1.body.conv1", (32, 16, 3, 3)),
    ("features.stage2.unit1.body.conv2", (32, 32, 3, 3)),
    ("features.stage2.unit1.identity_conv", (32, 16, 1, 1)),
    *[(f"features.stage2.unit{u}.body.conv{c}", (32, 32, 3, 3)) for u in (2, 3) for c in (1, 2)],
    ("features.stage3.unit1.body.conv1", (64, 32, 3, 3)),
    ("features.stage3.unit1.body.conv2", (64, 64, 3, 3)),
    ("features.stage3.unit1.identity_conv", (64, 32, 1, 1)),
    *[(f"features.stage3.unit{u}.body.conv{c}", (64, 64, 3, 3)) for u in (2, 3) for c in (1, 2)],
]
# Trainable parameter counts from pytorchcv's model_metainfos.csv ("net_weights").
PYTORCHCV_PARAM_COUNTS = {"resnet20_cifar10": 272474, "resnet20_cifar100": 278324, "resnet56_cifar10": 855770}


def expected_resnet20_layout(num_classes):
    out = []
    for prefix, shape in RESNET20_CONV_BLOCKS:
        out.append((f"{prefix}.conv.weight", shape))
        c = shape[0]
        for name, s in (("weight", (c,)), ("bias", (c,)), ("running_mean", (c,)), ("running_var", (c,)),
                        ("num_batches_tracked", ())):
            out.append((f"{prefix}.bn.{name}", s))
    out += [("output.weight", (num_classes, 64)), ("output.bias", (num_classes,))]
    return out


def layout(model):
    return [(k, tuple(v.shape)) for k, v in model.state_dict().items()]


def perturbed(model, seed=0):
    """Random BN statistics/affine so that loading the wrong tensors cannot go unnoticed."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return model.eval()


# ----------------------------------------------------------------------------------------------- architecture

@pytest.mark.parametrize("name,num_classes", [("resnet20_cifar10", 10), ("resnet20_cifar100", 100)])
def test_resnet20_layout_matches_pytorchcv_committed(name, num_classes):
    model = build_model(name)
    assert layout(model) == expected_resnet20_layout(num_classes)
    assert sum(p.numel() for p in model.parameters()) == PYTORCHCV_PARAM_COUNTS[name]


def test_resnet56_param_count():
    count = sum(p.numel() for p in build_model("resnet56_cifar10").parameters())
    assert count == PYTORCHCV_PARAM_COUNTS["resnet56_cifar10"]


def test_resnet20_activation_and_bn_counts():
    model = build_model("resnet20_cifar10")
    relus = [m for m in model.modules() if isinstance(m, nn.ReLU)]
    assert len(relus) == 19  # the spec's 19 QuantAct sites
    assert not any(r.inplace for r in relus)
    assert len(bn_layers(model)) == 21


@pytest.mark.parametrize("in_channels,num_classes,in_size", [(3, 10, 32), (3, 100, 32), (1, 10, 28), (1, 10, 32),
                                                             (4, 7, 40), (2, 3, 16)])
def test_forward_shapes(in_channels, num_classes, in_size):
    model = build_model("resnet20", num_classes=num_classes, in_channels=in_channels, in_size=(in_size, in_size))
    assert not model.training
    assert model.in_size == (in_size, in_size) and model.num_classes == num_classes
    with torch.no_grad():
        y = model(torch.randn(2, in_channels, in_size, in_size))
    assert y.shape == (2, num_classes)
    assert model.features.init_block.conv.weight.shape == (16, in_channels, 3, 3)


def test_depths_and_bottleneck():
    assert len([m for m in resnet_cifar(32).modules() if isinstance(m, nn.ReLU)]) == 31
    net = build_model("resnet11bn", num_classes=5)  # 9n+2 with n = 1: one bottleneck unit per stage
    assert net.output.weight.shape == (5, 256)
    assert net(torch.randn(1, 3, 32, 32)).shape == (1, 5)
    assert "features.stage1.unit1.body.conv3.conv.weight" in net.state_dict()
    with pytest.raises(ValueError, match="6n\\+2"):
        build_model("resnet21")
    with pytest.raises(ValueError, match="9n\\+2"):
        resnet_cifar(21, bottleneck=True)


def test_build_model_names_and_errors():
    assert build_model("resnet20_cifar100").num_classes == 100
    assert build_model("resnet20").num_classes == 10
    assert build_model("resnet56_cifar100").num_classes == 100
    assert isinstance(build_model("resnet20_svhn"), CIFARResNet)
    with pytest.raises(ValueError, match="use 'resnet20'"):
        build_model("resnet20_cifar10", num_classes=100)
    with pytest.raises(ValueError, match="unknown model 'vgg16'"):
        build_model("vgg16")
    with pytest.raises(ValueError, match="not both"):
        build_model("resnet20", checkpoint="x.pth", pretrained=True)


def test_pytorchcv_models_need_pytorchcv(monkeypatch):
    for mod in ["pytorchcv", "pytorchcv.models", "pytorchcv.models.resnet", "pytorchcv.models.mobilenetv2"]:
        monkeypatch.setitem(sys.modules, mod, None)  # import fails as if not installed, even if imported before
    for name in ("resnet18", "resnet50", "mobilenetv2_w1"):
        with pytest.raises(ImportError, match="pip install --no-deps pytorchcv"):
            build_model(name)


def test_torchvision_missing_is_clear(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchvision", None)
    with pytest.raises(ImportError, match="torchvision"):
        build_model("torchvision:resnet18")


def test_bn_layers_forward_order_and_no_side_effects():
    class Swapped(nn.Module):  # registers a, b but runs b first, like pytorchcv's shortcut BN
        def __init__(self):
            super().__init__()
            self.a = nn.BatchNorm2d(2)
            self.b = nn.BatchNorm2d(2)
            self.unused = nn.BatchNorm2d(2)
            self.stateless = nn.BatchNorm2d(2, track_running_stats=False)  # never listed

        def forward(self, x):
            return self.stateless(self.a(self.b(x)))

    net = Swapped().train()
    x = torch.randn(4, 2, 3, 3)
    assert bn_layers(net, x) == [net.b, net.a]
    assert bn_layers(net) == [net.a, net.b, net.unused]  # no in_size: registration order
    assert bn_layers(net, x, trace=False) == [net.a, net.b, net.unused]
    assert net.training and net.a.training
    assert torch.equal(net.a.running_mean, torch.zeros(2)) and int(net.a.num_batches_tracked) == 0

    model = build_model("resnet20_cifar10").train()
    traced = bn_layers(model)  # traced through model.in_size
    assert traced == [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert model.training


# ------------------------------------------------------------------------------------------------ checkpoints

def test_checkpoint_round_trip_and_wrappers(tmp_path):
    src = perturbed(build_model("resnet20_cifar100"))
    x = torch.randn(3, 3, 32, 32)
    want = src(x)
    sd = src.state_dict()
    variants = {
        "raw.pth": sd,
        "wrapped.pth": {"state_dict": sd, "epoch": 7, "best_top1": 70.3},
        "dataparallel.pth": {"model": {f"module.{k}": v for k, v in sd.items()}},
        "compiled.pth": {f"_orig_mod.{k}": v for k, v in sd.items()},
        "old.pth": {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")},
    }
    for fname, obj in variants.items():
        path = tmp_path / fname
        torch.save(obj, path)
        model = build_model("resnet20_cifar100", checkpoint=path)
        assert not model.training
        assert torch.equal(model(x), want), fname
    # pytorchcv publishes <name>.pth inside a .zip
    with zipfile.ZipFile(tmp_path / "w.pth.zip", "w") as zf:
        buf = io.BytesIO()
        torch.save(sd, buf)
        zf.writestr("resnet20_cifar100-2964-a5322afe.pth", buf.getvalue())
    assert torch.equal(build_model("resnet20_cifar100", checkpoint=str(tmp_path / "w.pth.zip"))(x), want)


def test_checkpoint_errors(tmp_path):
    missing = tmp_path / "nope" / "model.pth"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        build_model("resnet20_cifar10", checkpoint=missing)

    path = tmp_path / "c100.pth"
    torch.save(build_model("resnet20_cifar100").state_dict(), path)
    with pytest.raises(ValueError, match="wrong num_classes") as e:
        build_model("resnet20_cifar10", checkpoint=path)
    assert "output.weight: checkpoint (100, 64), model (10, 64)" in str(e.value)
    with pytest.raises(ValueError, match="unexpected: features.stage1.unit2"):
        load_checkpoint(resnet_cifar(8, 100), path)  # shallower net: extra keys
    with pytest.raises(ValueError, match="missing: features.stage1.unit4"):
        load_checkpoint(resnet_cifar(26, 100), path)
    shallow = load_checkpoint(resnet_cifar(8, 100), path, ignore_unexpected=True)
    assert torch.equal(shallow.output.weight, torch.load(path)["output.weight"])

    bad = tmp_path / "meta.pth"
    torch.save({"epoch": 3, "optimizer": {"lr": 0.1}}, bad)
    with pytest.raises(ValueError, match="not a state dict"):
        load_state_dict_file(bad)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable torch checkpoint"):
        load_state_dict_file(junk)
    evil = tmp_path / "objects.pth"
    torch.save({"state_dict": build_model("resnet20").state_dict(), "fn": types.SimpleNamespace(a=1)}, evil)
    with pytest.raises(ValueError, match="other than tensors"):
        load_state_dict_file(evil)


def test_pretrained_offline_errors(tmp_path, monkeypatch):
    monkeypatch.setattr(zoo, "WEIGHTS_DIR", str(tmp_path))
    url = pretrained_url("resnet20_cifar10")
    assert url == ("https://github.com/osmr/imgclsmob/releases/download/v0.0.163/"
                   "resnet20_cifar10-0597-9b0024ac.pth.zip")
    monkeypatch.setitem(sys.modules, "pytorchcv", None)
    with pytest.raises(RuntimeError, match="--checkpoint PATH") as e:
        build_model("resnet20_cifar10", pretrained=True)
    assert url in str(e.value) and "pip install --no-deps pytorchcv" in str(e.value)

    # pytorchcv present but the download fails (no network): same advice, the cause attached
    monkeypatch.setitem(sys.modules, "pytorchcv", types.ModuleType("pytorchcv"))

    def offline(name, root):
        raise ConnectionError("Failed to resolve 'github.com'")

    monkeypatch.setattr(zoo, "_pytorchcv_fetch", offline)
    with pytest.raises(RuntimeError, match="no network.*--checkpoint PATH"):
        build_model("resnet20_cifar100", pretrained=True)
    with pytest.raises(ValueError, match="3 input channels"):
        build_model("resnet20_cifar10", pretrained=True, in_channels=1)
    with pytest.raises(ValueError, match="no pretrained weights"):
        build_model("resnet20", pretrained=True)


def test_pretrained_from_pytorchcv_store(tmp_path, monkeypatch):
    """A file already in pytorchcv's store (right name and sha1) loads offline, without pytorchcv."""
    src = perturbed(build_model("resnet20_cifar10"), seed=3)
    tmp = tmp_path / "tmp.pth"
    torch.save(src.state_dict(), tmp)
    sha1 = hashlib.sha1(tmp.read_bytes()).hexdigest()
    monkeypatch.setitem(zoo._PYTORCHCV_WEIGHTS, "resnet20_cifar10", ("v0.0.163", "0597", sha1))
    os.rename(tmp, tmp_path / f"resnet20_cifar10-0597-{sha1[:8]}.pth")
    monkeypatch.setattr(zoo, "WEIGHTS_DIR", str(tmp_path))
    monkeypatch.setitem(sys.modules, "pytorchcv", None)
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(build_model("resnet20_cifar10", pretrained=True)(x), src(x))


# ------------------------------------------------------------------------------ against pytorchcv, if installed

@pytest.mark.parametrize("name", ["resnet20_cifar10", "resnet20_cifar100", "resnet56_cifar10", "resnet164bn_cifar100"])
def test_same_keys_and_outputs_as_pytorchcv(name):
    ptcv = pytest.importorskip("pytorchcv.models.resnet_cifar")
    theirs = perturbed(getattr(ptcv, name)(), seed=1)
    ours = build_model(name)
    assert layout(ours) == layout(theirs)
    if name.startswith("resnet20"):
        assert layout(theirs) == expected_resnet20_layout(ours.num_classes)  # the committed table is right
    ours.load_state_dict(theirs.state_dict())  # strict
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(ours(x), theirs(x))  # same ops in the same order: bit-identical


def test_pytorchcv_imagenet_models():
    pytest.importorskip("pytorchcv.models.resnet")
    from pytorchcv.models import mobilenetv2, resnet

    r18 = build_model("resnet18")
    assert layout(r18) == layout(resnet.resnet18())
    assert not r18.training
    with torch.no_grad():
        assert r18(torch.randn(1, 3, 224, 224)).shape == (1, 1000)
    traced = bn_layers(r18)
    assert len(traced) == 20
    names = {m: n for n, m in r18.named_modules()}
    first_down = [names[m] for m in traced if "stage2.unit1" in names[m]]
    assert first_down[0] == "features.stage2.unit1.identity_conv.bn"  # runs before the body
    mb = build_model("mobilenetv2_w1", num_classes=10)
    assert layout(mb) == layout(mobilenetv2.mobilenetv2_w1(num_classes=10))
    assert len(bn_layers(mb)) == 53  # init block, 17 units x 3, final 1x1 block
