"""adadfq_fast.config: presets carry the spec's values, overrides are type-checked, hocon files map with warnings."""
import dataclasses
import warnings

import pytest

from adadfq_fast.config import AdaDFQConfig, ConfigError, list_presets, load_config, save_config
from adadfq_fast.config.hocon import HoconIgnoredKeyWarning

SETTINGS = {
    "cifar10_resnet20": dict(dataset="cifar10", num_classes=10, img_size=32, generator="cifar"),
    "cifar100_resnet20": dict(dataset="cifar100", num_classes=100, img_size=32, generator="cifar"),
    "imagenet_resnet18": dict(dataset="imagenet", model="resnet18", num_classes=1000, img_size=224, generator="imagenet"),
    "imagenet_mobilenetv2": dict(dataset="imagenet", model="mobilenetv2_w1", num_classes=1000, img_size=224, generator="imagenet"),
    "imagenet_resnet50": dict(dataset="imagenet", model="resnet50", num_classes=1000, img_size=224, generator="imagenet"),
}
ALL_PRESETS = [f"{s}_w{b}a{b}" for s in SETTINGS for b in (3, 4, 5)]

# Spec, "Schedule" table (+ the configs' comments for 4/5-bit); milestones as the configs write them.
CIFAR = dict(warmup_epochs=4, q_lr=1e-4, q_lr_milestones=(100, 200, 300), g_lr_milestones=(100, 200, 300),
             temperature=20.0, lambda_l=0.1, alpha_ds=0.2, eval_during_warmup=True)
R18_MV2 = dict(warmup_epochs=50, q_lr=1e-5, q_lr_milestones=(350, 400), g_lr_milestones=(350, 400), temperature=5.0,
               eval_during_warmup=False)
EXPECTED = {
    **{f"{d}_resnet20_w{b}a{b}": CIFAR for d in ("cifar10", "cifar100") for b in (3, 4, 5)},
    "imagenet_resnet18_w3a3": dict(R18_MV2, lambda_l=0.1, alpha_ds=0.2),
    "imagenet_resnet18_w4a4": dict(R18_MV2, lambda_l=0.3, alpha_ds=0.2),
    "imagenet_resnet18_w5a5": dict(R18_MV2, lambda_l=0.3, alpha_ds=0.3),  # config comment "0.3 for 5 bit"
    "imagenet_mobilenetv2_w3a3": dict(R18_MV2, lambda_l=0.1, alpha_ds=0.2),
    "imagenet_mobilenetv2_w4a4": dict(R18_MV2, lambda_l=0.1, alpha_ds=0.3),  # config comment "0.3 for 4 bit"
    "imagenet_mobilenetv2_w5a5": dict(R18_MV2, lambda_l=0.1, alpha_ds=0.2),
    "imagenet_resnet50_w3a3": dict(warmup_epochs=100, q_lr=1e-4, q_lr_milestones=(150, 300, 400), temperature=5.0,
                                   lambda_l=0.4, alpha_ds=0.2),
    "imagenet_resnet50_w4a4": dict(warmup_epochs=50, q_lr=1e-4, q_lr_milestones=(200, 300, 400),
                                   g_lr_milestones=(200, 300, 400), lambda_l=0.3, alpha_ds=0.1),
    "imagenet_resnet50_w5a5": dict(warmup_epochs=50, q_lr=1e-4, q_lr_milestones=(350, 400), g_lr_milestones=(350, 400),
                                   lambda_l=0.3, alpha_ds=0.2),
}
COMMON = dict(epochs=400, iters_per_epoch=200, batch_size=16, act_range_unfreeze_epochs=4, q_optimizer="sgd",
              q_momentum=0.9, q_weight_decay=1e-4, q_nesterov=True, q_lr_gamma=0.1, g_lr=1e-3, g_betas=(0.5, 0.999),
              g_lr_gamma=0.1, lambda_u=0.8, alpha_as=0.1, beta_l_bal=1.0, gamma_bns=1.0, channels=3, latent_dim=100,
              schedule="faithful", ste="identity", act_range_update="faithful", seed=1)


def test_every_published_setting_has_a_preset():
    assert sorted(list_presets()) == sorted(ALL_PRESETS)


@pytest.mark.parametrize("name", ALL_PRESETS)
def test_preset_values(name):
    cfg = load_config(name)
    bits = int(name[-1])
    stem = name.rsplit("_", 1)[0]
    assert cfg.name == name and cfg.wbits == bits and cfg.abits == bits
    for key, value in {**COMMON, **SETTINGS[stem], **EXPECTED[name]}.items():
        assert getattr(cfg, key) == value, (name, key)


def test_lr_schedule_and_phases():
    cfg = load_config("cifar100_resnet20_w3a3")
    assert [cfg.lr_q(e) for e in (0, 99, 100, 199, 200, 300, 399)] == pytest.approx(
        [1e-4, 1e-4, 1e-5, 1e-5, 1e-6, 1e-7, 1e-7])
    assert cfg.lr_g(100) == pytest.approx(1e-4)
    assert not cfg.act_ranges_frozen(3) and cfg.act_ranges_frozen(4)
    assert not cfg.q_stepped(3) and cfg.q_stepped(4)
    assert cfg.evaluates(0)
    r50 = load_config("imagenet_resnet50_w3a3")
    assert r50.lr_q(399) == pytest.approx(1e-6)  # the milestone 400 never fires in 400 epochs
    assert not r50.evaluates(98) and r50.evaluates(99)  # the original's ImageNet test: epoch > warmup - 2


def test_overrides_are_parsed_and_type_checked():
    cfg = load_config("imagenet_resnet18_w3a3", [
        "wbits=4", "q_lr=1e-6", "q_nesterov=false", "q_lr_milestones=100,200", "g_betas=[0.9, 0.99]",
        "device=cuda:1", "name=2024", "temperature=4", "output_dir = /tmp/run a",
    ])
    assert (cfg.wbits, cfg.abits, cfg.q_lr, cfg.q_nesterov) == (4, 3, 1e-6, False)
    assert cfg.q_lr_milestones == (100, 200) and cfg.g_betas == (0.9, 0.99)
    assert cfg.device == "cuda:1" and cfg.name == "2024" and cfg.output_dir == "/tmp/run a"
    assert cfg.temperature == 4.0 and isinstance(cfg.temperature, float)
    assert load_config("cifar10_resnet20_w3a3", ["q_lr_milestones=[]"]).q_lr_milestones == ()
    assert load_config(None, {"abits": 5}).abits == 5
    assert load_config(cfg, ["seed=7"]).seed == 7


@pytest.mark.parametrize("override,match", [
    ("q_lrr=1e-5", r"unknown setting 'q_lrr' \(did you mean 'q_lr'"),
    ("wbits=4.5", "wbits=4.5: expected int"),
    ("wbits=true", "expected int"),
    ("q_lr=fast", "cannot parse as float"),
    ("q_nesterov=1", "expected bool"),
    ("g_betas=[0.5]", "expected list of 2 float"),
    ("q_lr_milestones=[1.5]", "expected list of int"),
    ("wbits", "expected key=value"),
    ("wbits=9", "expected 2..8"),
    ("img_size=30", "multiple of 4"),
    ("num_classes=10", "does not match dataset"),
    ("schedule=quick", "expected one of"),
    ("q_lr_milestones=[300,100]", "ascending"),
])
def test_override_errors(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config("cifar100_resnet20_w3a3", [override])


def test_config_is_frozen_and_replace_validates():
    cfg = AdaDFQConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.wbits = 4
    assert cfg.replace(wbits=4).wbits == 4
    with pytest.raises(ConfigError, match="unknown setting"):
        cfg.replace(bits=4)
    with pytest.raises(ConfigError, match="expected int"):
        cfg.replace(epochs="400")
    with pytest.raises(ConfigError, match="unknown preset"):
        load_config("cifar100_resnet20_w6a6")


def test_toml_round_trip_and_user_files(tmp_path):
    cfg = load_config("imagenet_resnet50_w4a4", ["device=cpu", 'name=quote"d'])
    path = tmp_path / "run.toml"
    save_config(cfg, path)
    assert load_config(str(path)) == cfg

    user = tmp_path / "mine.toml"
    user.write_text('preset = "cifar10_resnet20_w4a4"\nq_lr = 2e-4\nname = "mine"\n')
    mine = load_config(str(user), ["seed=3"])
    assert (mine.dataset, mine.wbits, mine.q_lr, mine.name, mine.seed) == ("cifar10", 4, 2e-4, "mine", 3)

    bad = tmp_path / "bad.toml"
    bad.write_text("q_lrr = 1e-4\n")
    with pytest.raises(ConfigError, match="bad.toml: unknown setting 'q_lrr'"):
        load_config(str(bad))
    (tmp_path / "tables.toml").write_text("[w3a3]\nwbits = 3\n")
    with pytest.raises(ConfigError, match="flat"):
        load_config(str(tmp_path / "tables.toml"))
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(str(tmp_path / "missing.toml"))


# A GDFQ-family config in the authors' format (their Option keys), with a 4-bit ResNet-50 setting, an unknown key
# and a nested block, written here so the test does not depend on the authors' files.
SAMPLE_HOCON = """
#  ------------ General options ----------------------------------------
save_path = "./save_ImageNet/"
dataPath = "/data/imagenet"
dataset = "imagenet" # options: imagenet | cifar100/10
nGPU = 1  # number of GPUs to use by default
GPU = 0
visible_devices = "2"
network = "resnet50"
nThreads = 4
nEpochs = 400
batchSize = 16
momentum = 0.9
weightDecay = "1e-4"
opt_type = "SGD"
warmup_epochs = 50
lr_S = 0.0001
lrPolicy_S = "multi_step"
step_S = [200,300,400]
decayRate_S = 0.1
experimentID = "imganet_4bit_"
nClasses = 1000
qw = 4
qa = 4
alpha_ds = 0.1
alpha_as = 0.1
lambda_l = 0.3
lambda_u = 0.8
beta = 1
gamma = 1
temperature = 7
alpha = 1
latent_dim = 100
img_size = 224
channels = 3
lr_G = 0.001
lrPolicy_G = "multi_step"
step_G = [0.5, 0.75]   # fractions of nEpochs, as the original's LRPolicy reads them
decayRate_G = 0.1
b1 = 0.5
b2 = 0.99
manualSeed = 3
extra { note = "x" }
"""


def test_hocon_mapping_with_warnings(tmp_path):
    pytest.importorskip("pyhocon")
    path = tmp_path / "imagenet_res50.hocon"
    path.write_text(SAMPLE_HOCON)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cfg = load_config(str(path), ["device=cpu"])
    ignored = {str(w.message).split("key ")[1].split(" =")[0].strip("'"): str(w.message)
               for w in caught if issubclass(w.category, HoconIgnoredKeyWarning)}
    assert set(ignored) == {"nGPU", "GPU", "visible_devices", "temperature", "alpha", "manualSeed", "extra.note"}
    assert "ignored, as by the original code" in ignored["temperature"] and "temperature=5.0" in ignored["temperature"]
    assert "ignored, as by the original code" in ignored["alpha"]
    assert "does not read" in ignored["manualSeed"]

    assert cfg.temperature == 5.0  # hard-coded for ImageNet in the original, whatever the file says
    assert (cfg.dataset, cfg.model, cfg.num_classes, cfg.generator) == ("imagenet", "resnet50", 1000, "imagenet")
    assert (cfg.wbits, cfg.abits, cfg.warmup_epochs, cfg.lambda_l, cfg.alpha_ds) == (4, 4, 50, 0.3, 0.1)
    assert cfg.q_lr_milestones == (200, 300, 400) and cfg.g_lr_milestones == (200, 300)
    assert cfg.q_weight_decay == 1e-4 and cfg.q_optimizer == "sgd" and cfg.g_betas == (0.5, 0.99)
    assert (cfg.name, cfg.output_dir, cfg.data_path, cfg.num_workers) == ("imganet_4bit_", "./save_ImageNet/", "/data/imagenet", 4)
    assert (cfg.iters_per_epoch, cfg.act_range_unfreeze_epochs, cfg.device) == (200, 4, "cpu")


def test_hocon_errors(tmp_path):
    pytest.importorskip("pyhocon")
    path = tmp_path / "c.hocon"
    path.write_text('dataset = "cifar100"\nnetwork = "resnet20_cifar100"\nlrPolicy_S = "exp"\n')
    with pytest.raises(ConfigError, match="lrPolicy_S='exp' is not supported"):
        load_config(str(path))
    path.write_text('dataset = "cifar100"\nnetwork = "resnet20_cifar100"\nlrPolicy_S = "const"\nqw = "four"\n')
    with pytest.raises(ConfigError, match="wbits='four'"):
        load_config(str(path))
    path.write_text('dataset = "cifar100"\nnetwork = "resnet20_cifar100"\nlrPolicy_S = "const"\nstep_S = [1, 2]\n')
    cfg = load_config(str(path))  # missing keys: the preset's values; const lr: no milestones
    assert cfg.q_lr_milestones == () and cfg.g_lr_milestones == (100, 200, 300) and cfg.wbits == 3
    path.write_text('dataset = "mnist"\n')
    with pytest.raises(ConfigError, match="cannot tell the setting"):
        load_config(str(path))
