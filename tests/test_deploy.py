"""Integer deployment (adadfq_fast.deploy): export of Q, the integer model against the fake-quant Q, the .adq file
format, and (when the shipped teacher and Fashion-MNIST are present) accuracy on real data.

How exact can the integer model be? Its convolutions are exact integer sums; Q's are float32 sums in some
order, so an activation that lies within float32 rounding of a quantization boundary can land on the other code
(measured: ~2e-6 of the codes per layer). Fed Q's own codes, each integer layer must reproduce Q's next codes up
to those rare one-step flips (``test_layer_codes_match_q``); end to end a flip propagates, so the logits are
compared by rows untouched, mean error and top-1 agreement (``test_logits_match_q``).
"""
from __future__ import annotations

import copy
import io
import os
import struct

import pytest
import torch
from torch import nn

import adadfq_fast
from adadfq_fast import _backend
from adadfq_fast.deploy import FormatError, UnsupportedModuleError, export, load, pack_bits, save, unpack_bits
from adadfq_fast.deploy.export import quantize_weight
from adadfq_fast.deploy.format import MAGIC
from adadfq_fast.deploy.modules import dequantized_weight
from adadfq_fast.models import build_model, measure_bn_statistics
from adadfq_fast.nn import QuantConv2d, QuantLinear, QuantReLU, freeze_act_ranges, quantize_model

WEIGHTS = os.path.join(os.path.dirname(adadfq_fast.__file__), "weights", "resnet20_fashion_mnist.pt")
FASHION_MNIST = "/usr/share/datasets/fashion-mnist"


def make_q(cin: int, size: int, bits: int, calib_batch: int = 32) -> nn.Module:
    """A random ResNet-20 Q with realistic statistics: BN running statistics measured on random images (so
    activations are normalised), then activation ranges from one calibration forward, frozen. (One forward sets
    the exact batch range; more EMA updates would inflate it, the spec's compounding bias correction.)"""
    fp = build_model("resnet20", num_classes=10, in_channels=cin, in_size=(size, size))
    for m in fp.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.3, 0.3)
    measure_bn_statistics(fp, torch.randn(32, cin, size, size))
    nn.init.normal_(fp.output.weight, std=0.5)  # spread the logits so that top-1 is meaningful
    q = quantize_model(fp, bits, bits, example_input=torch.zeros(1, cin, size, size)).eval()
    with torch.no_grad():
        q(torch.randn(calib_batch, cin, size, size))
    return freeze_act_ranges(q)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """These are correctness tests on whole networks; on a shared 2-core machine, two OpenMP threads wait on each
    other at every op (measured: 20x slower under load). One thread keeps the file at a few tens of seconds;
    the kernels' multi-threaded paths are tested in tests/test_int_conv2d.py."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


CASES = [(1, 28, 8), (1, 28, 4), (1, 28, 3), (3, 32, 8), (3, 32, 4), (3, 32, 3)]


@pytest.fixture(scope="module")
def q_models():
    torch.manual_seed(1234)
    return {case: make_q(*case) for case in CASES}


def test_exported_weights_are_the_fake_quant_weights(q_models):
    q = q_models[(3, 32, 3)]
    for m in q.modules():
        if isinstance(m, (QuantConv2d, QuantLinear)):
            q_w, z_w, s_w = quantize_weight(m.weight, m.wbits)
            half = 2 ** (m.wbits - 1)
            assert q_w.dtype == torch.int8 and z_w.dtype == torch.int32 and s_w.dtype == torch.float32
            assert int(q_w.min()) >= -half and int(q_w.max()) <= half - 1
            assert torch.equal(dequantized_weight(q_w, z_w, s_w), m.quantized_weight().detach())


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"c{c[0]}_{c[1]}px_w{c[2]}a{c[2]}")
def test_layer_codes_match_q(q_models, case):
    """Teacher forcing: every layer gets Q's own input codes; its output codes must equal Q's next codes."""
    q = q_models[case]
    im = export(q)
    x = torch.randn(8, case[0], case[1], case[1])
    q_outs = []
    hooks = [m.register_forward_hook(lambda mod, a, out: q_outs.append(out)) for m in q.modules()
             if isinstance(m, QuantReLU)]
    try:
        with torch.no_grad():
            q_logits = q(x)
    finally:
        for h in hooks:
            h.remove()
    kernel = _backend.kernel_for("int_conv2d", x.device)
    regs = [None] * im.num_registers
    regs[0] = x
    site, flips, total = 0, 0, 0
    with torch.no_grad():
        for layer, run in zip(im.layers, im._runners):
            run(regs, kernel)
            if layer.kind == "conv" and layer.cfg["out_bits"]:
                q_codes = torch.round(q_outs[site] * layer.cfg["out_scale"])  # Q's x^ = m / s -> m
                diff = (q_codes - regs[layer.cfg["out"]].float()).abs()
                assert diff.max() <= 1, layer.cfg["name"]
                if site == 0:  # the float first layer runs Q's own float32 ops: its codes are Q's, bit for bit
                    assert diff.max() == 0
                flips += int((diff > 0).sum())
                total += diff.numel()
                regs[layer.cfg["out"]] = q_codes.to(torch.uint8).contiguous(memory_format=torch.channels_last)
                site += 1
    assert site == len(q_outs) == 19  # every QuantAct of ResNet-20 became an integer requantization
    assert flips <= max(2, 1e-4 * total), f"{flips} of {total} codes differ from Q's"
    # With Q's codes everywhere, the integer head gives Q's logits to float32 rounding.
    torch.testing.assert_close(regs[im.output_register], q_logits, rtol=1e-4, atol=1e-4 * float(q_logits.abs().max()))


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"c{c[0]}_{c[1]}px_w{c[2]}a{c[2]}")
def test_logits_match_q(q_models, case):
    q = q_models[case]
    im = export(q)
    x = torch.randn(64, case[0], case[1], case[1])
    with torch.no_grad():
        ref = q(x)
        out = im(x)
    assert out.dtype == torch.float32 and out.shape == ref.shape
    diff = (out - ref).abs()
    exact_rows = (diff.amax(dim=1) <= 1e-4 * ref.abs().max()).float().mean()
    assert exact_rows >= 0.5, f"only {exact_rows:.0%} of the rows match Q's logits"
    assert diff.mean() <= 0.02 * ref.std(), f"mean |diff| {diff.mean():.3g} vs logit std {ref.std():.3g}"
    agree = (out.argmax(1) == ref.argmax(1)).float().mean()
    assert agree >= 0.95, f"top-1 agreement {agree:.1%}"
    # Layers: the first conv in float, every other conv one fused integer call, no float fallback.
    convs = [L for L in im.layers if L.kind == "conv"]
    assert not convs[0].cfg["int"] and all(L.cfg["int"] for L in convs[1:])
    assert len(convs) == 21 and im.layers[-1].kind == "head" and im.layers[-1].cfg["in_kind"] == "codes"


def test_reference_backend_gives_the_same_logits(q_models):
    """The model dispatches int_conv2d through the backend registry; the kernels are bit-exact, so are logits."""
    im = export(q_models[(1, 28, 4)])
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        with adadfq_fast.use_backend("reference"):
            ref = im(x)
        out = im(x)
    assert torch.equal(out, ref)


def test_empty_batch_and_input_checks(q_models):
    im = export(q_models[(1, 28, 4)])
    assert im(torch.randn(0, 1, 28, 28)).shape == (0, 10)
    with pytest.raises(ValueError, match="input channels"):
        im(torch.randn(2, 3, 28, 28))
    with pytest.raises(ValueError, match="float image"):
        im(torch.zeros(2, 1, 28, 28, dtype=torch.uint8))


def test_activation_range_that_does_not_fit_a_byte_falls_back_to_float(q_models):
    """A range starting far from 0 would need codes above 255: that site runs as float fake-quant."""
    q = copy.deepcopy(q_models[(1, 28, 4)])
    act = q.features.stage2.unit2.body.conv1.activ.quant[0]
    act.state[0] = act.state[1] * 0.95  # the code of lo is round(15 * 0.95 / 0.05) = 285 > 255
    im = export(q)
    kinds = [L.kind for L in im.layers]
    assert "act" in kinds
    consumer = next(L for L in im.layers if L.cfg.get("name") == "features.stage2.unit2.body.conv2.conv")
    assert not consumer.cfg["int"] and consumer.cfg["in_kind"] == "float"
    x = torch.randn(32, 1, 28, 28)
    with torch.no_grad():
        ref, out = q(x), im(x)
    assert (out.argmax(1) == ref.argmax(1)).float().mean() >= 0.95
    assert (out - ref).abs().mean() <= 0.02 * ref.std()


def test_save_load_round_trip(q_models, tmp_path):
    for case in [(1, 28, 3), (3, 32, 8)]:
        q = q_models[case]
        im = export(q)
        path = tmp_path / f"m{case[2]}.adq"
        size = save(im, path)
        assert size == path.stat().st_size
        im2 = load(path)
        x = torch.randn(8, case[0], case[1], case[1])
        with torch.no_grad():
            assert torch.equal(im2(x), im(x))
        for a, b in zip(im.layers, im2.layers):
            assert a.kind == b.kind and a.cfg == b.cfg and a.tensors.keys() == b.tensors.keys()
            assert all(torch.equal(a.tensors[k], b.tensors[k]) for k in a.tensors)
        buf = io.BytesIO()
        torch.save(q.state_dict(), buf)
        # k-bit weights, per-channel int32 zero points and float32 scales: well under the FP32 state dict.
        assert size < buf.tell() * (case[2] / 32 + 0.25)


def _saved(q_models, tmp_path):
    path = tmp_path / "m.adq"
    save(export(q_models[(1, 28, 4)]), path)
    return path, path.read_bytes()


def test_foreign_file_is_refused(q_models, tmp_path):
    other = tmp_path / "state.pt"
    torch.save(q_models[(1, 28, 4)].state_dict(), other)
    with pytest.raises(FormatError, match="not an adadfq_fast integer model"):
        load(other)
    empty = tmp_path / "empty.adq"
    empty.write_bytes(b"")
    with pytest.raises(FormatError, match="not an adadfq_fast integer model"):
        load(empty)
    with pytest.raises(FileNotFoundError):
        load(tmp_path / "missing.adq")


def test_corrupted_file_is_refused(q_models, tmp_path):
    path, blob = _saved(q_models, tmp_path)
    bad = bytearray(blob)
    bad[len(bad) // 2] ^= 0x40
    path.write_bytes(bytes(bad))
    with pytest.raises(FormatError, match="corrupted.*SHA-256"):
        load(path)
    path.write_bytes(blob[: len(blob) - 100])
    with pytest.raises(FormatError, match="truncated"):
        load(path)
    path.write_bytes(blob[:30])
    with pytest.raises(FormatError, match="truncated"):
        load(path)
    path.write_bytes(blob + b"junk")
    with pytest.raises(FormatError, match="unexpected bytes"):
        load(path)


def test_newer_or_unknown_version_is_refused(q_models, tmp_path):
    path, blob = _saved(q_models, tmp_path)
    assert blob.startswith(MAGIC)
    for version, message in ((2, "newer than this adadfq_fast"), (0, "unknown format version")):
        path.write_bytes(blob[:8] + struct.pack("<H", version) + blob[10:])
        with pytest.raises(FormatError, match=message):
            load(path)


@pytest.mark.parametrize("bits", range(2, 9))
def test_pack_round_trip(bits):
    half = 2 ** (bits - 1)
    for n in (0, 1, 7, 8, 9, 1001):
        q = torch.randint(-half, half, (n,), dtype=torch.int8)
        if n >= 2:
            q[0], q[1] = -half, half - 1  # the extreme levels
        packed = pack_bits(q, bits)
        assert packed.dtype == torch.uint8 and packed.numel() == (n * bits + 7) // 8
        assert torch.equal(unpack_bits(packed, bits, [n]), q)
    q = torch.randint(-half, half, (3, 5, 2, 2), dtype=torch.int8)
    assert torch.equal(unpack_bits(pack_bits(q, bits), bits, list(q.shape)), q)
    if bits < 8:
        with pytest.raises(ValueError, match="cannot be packed"):
            pack_bits(torch.tensor([half], dtype=torch.int8), bits)
    with pytest.raises(FormatError, match="bytes for"):
        unpack_bits(pack_bits(q, bits)[:-1], bits, list(q.shape))


def test_pack_rejects_bad_arguments():
    with pytest.raises(ValueError, match="bits"):
        pack_bits(torch.zeros(3, dtype=torch.int8), 9)
    with pytest.raises(TypeError, match="int8"):
        pack_bits(torch.zeros(3), 4)


def test_unsupported_modules_raise(q_models):
    base = q_models[(1, 28, 4)]
    q = copy.deepcopy(base)
    q.features.stage2.unit1.body.conv1 = nn.Sequential(nn.Sigmoid())
    with pytest.raises(UnsupportedModuleError, match=r"features\.stage2\.unit1\.body\.conv1: Sequential is not a conv"):
        export(q)
    q = copy.deepcopy(base)
    q.features.stage1.unit1.body.conv1.activ.act = nn.GELU()
    with pytest.raises(UnsupportedModuleError, match=r"unit1\.body\.conv1\.activ: activation GELU"):
        export(q)
    q = copy.deepcopy(base)
    q.features.stage3.add_module("extra", nn.Upsample(scale_factor=2))
    with pytest.raises(UnsupportedModuleError, match=r"features\.stage3\.extra: Upsample"):
        export(q)
    q = copy.deepcopy(base)
    q.features.init_block.conv = nn.Conv2d(1, 16, 3, padding=1, bias=False)  # not quantized
    with pytest.raises(UnsupportedModuleError, match="not a QuantConv2d"):
        export(q)
    with pytest.raises(UnsupportedModuleError, match="features"):
        export(freeze_act_ranges(nn.Sequential(QuantReLU(nn.ReLU(), 4))).eval())


def test_unfrozen_or_unquantized_model_raises(q_models):
    from adadfq_fast.nn import unfreeze_act_ranges

    q = unfreeze_act_ranges(copy.deepcopy(q_models[(1, 28, 4)]))
    with pytest.raises(ValueError, match="not frozen"):
        export(q)
    with pytest.raises(ValueError, match="no QuantAct"):
        export(build_model("resnet20", num_classes=10))


# ---------------------------------------------------------------------------------------------------------------
# Real data: the shipped Fashion-MNIST teacher
# ---------------------------------------------------------------------------------------------------------------
def _real_data_or_skip():
    if not os.path.isfile(WEIGHTS):
        pytest.skip(f"shipped teacher {WEIGHTS} not present (trained by `adadfq-fast pretrain`)")
    if not os.path.isdir(FASHION_MNIST):
        pytest.skip(f"Fashion-MNIST not found in {FASHION_MNIST} (apt-get install dataset-fashion-mnist)")


@pytest.mark.parametrize("bits", [4, 8])
def test_teacher_on_fashion_mnist(bits):
    _real_data_or_skip()
    from adadfq_fast.data import load_dataset

    fp = build_model("resnet20", num_classes=10, in_channels=1, in_size=(28, 28), checkpoint=WEIGHTS)
    test = load_dataset("fashion-mnist", split="test")
    train = load_dataset("fashion-mnist", split="train")
    n = 2000  # a fixed subset keeps the test to a few seconds; `adadfq-fast infer --compare` runs all 10k
    x = torch.stack([test[i][0] for i in range(n)])
    y = torch.tensor([test[i][1] for i in range(n)])
    calib = torch.stack([train[i][0] for i in range(0, 60000, 235)])  # 256 training images, one forward
    q = quantize_model(fp, bits, bits, example_input=calib[:1]).eval()
    with torch.no_grad():
        q(calib)
    freeze_act_ranges(q)
    im = export(q)
    with torch.no_grad():
        ref = torch.cat([q(b) for b in x.split(500)])
        out = torch.cat([im(b) for b in x.split(500)])
    agree = (ref.argmax(1) == out.argmax(1)).float().mean().item()
    acc_q = (ref.argmax(1) == y).float().mean().item() * 100
    acc_int = (out.argmax(1) == y).float().mean().item() * 100
    assert agree >= 0.995, f"top-1 agreement {agree:.2%}"
    assert abs(acc_q - acc_int) <= 0.2, f"fake-quant {acc_q:.2f}% vs integer {acc_int:.2f}%"
    assert acc_int > 50.0  # the teacher is a real classifier, not chance


@pytest.mark.parametrize("name", ["resnet18", "mobilenetv2_w1"])
def test_pytorchcv_models(name):
    """pytorchcv's ResNet-18 (max pool on codes, projection shortcuts) and MobileNetV2 (ReLU6 absorbed into the
    range, float fallback convs after each linear bottleneck, float residuals, 1x1-conv classifier)."""
    pytest.importorskip("pytorchcv")
    fp = measure_bn_statistics(build_model(name, num_classes=1000, in_size=(224, 224)), torch.randn(4, 3, 224, 224))
    q = quantize_model(fp, 8, 8, example_input=torch.zeros(1, 3, 224, 224)).eval()
    with torch.no_grad():
        q(torch.randn(4, 3, 224, 224))
    freeze_act_ranges(q)
    im = export(q)
    kinds = {L.kind for L in im.layers}
    assert kinds == ({"conv", "maxpool", "head"} if name == "resnet18" else {"conv", "head"})
    if name == "mobilenetv2_w1":
        fallbacks = [L for L in im.layers if L.kind == "conv" and not L.cfg["int"]]
        assert all(L.cfg["in_kind"] == "float" for L in fallbacks) and len(fallbacks) == 18  # first + 16 + final
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        ref, out = q(x), im(x)
    assert (ref.argmax(1) == out.argmax(1)).all()
    if name == "resnet18":  # the max pool fused into the float first conv: the same codes as pooling the codes
        assert im._runners[1].fused and im._runners[0].pool is not None
        unfused = copy.deepcopy(im)
        unfused.FUSE_FLOAT_POOL = False
        unfused._build()
        assert not unfused._runners[1].fused
        regs = {}
        for model in (im, unfused):
            r = [None] * model.num_registers
            r[0] = x.contiguous(memory_format=torch.channels_last)
            with torch.no_grad():
                for run in model._runners[:2]:
                    run(r, None)
            regs[model is im] = r[model.layers[1].cfg["out"]]
        assert regs[True].dtype == torch.uint8 and torch.equal(regs[True], regs[False])
    assert (out - ref).abs().mean() <= 0.05 * ref.std()


def test_cli_export_and_infer(q_models, tmp_path, capsys):
    if not os.path.isdir(FASHION_MNIST):
        pytest.skip(f"Fashion-MNIST not found in {FASHION_MNIST}")
    from adadfq_fast.cli import main
    from adadfq_fast.nn import save_q_checkpoint

    ckpt, out = tmp_path / "q.pt", tmp_path / "q.adq"
    save_q_checkpoint(ckpt, q_models[(1, 28, 4)], model="resnet20", num_classes=10, in_channels=1,
                      in_size=(28, 28), wbits=4, abits=4)
    assert main(["export", str(ckpt), "--out", str(out)]) == 0
    assert "file size" in capsys.readouterr().out and load(out).meta["zoo_model"] == "resnet20"
    assert main(["infer", str(out), "--limit", "300", "--batch-size", "128", "--compare", str(ckpt)]) == 0
    text = capsys.readouterr().out
    assert "integer model on fashion-mnist (300 images): top-1" in text and "top-1 agreement" in text
    assert "KiB" in text
