"""`adadfq-fast pretrain` and `adadfq-fast quantize` end to end on tiny Fashion-MNIST-shaped IDX files the test
writes (the real data and the shipped teacher are checked separately and skipped when absent)."""
import json
import os

import pytest
import torch

from adadfq_fast import pretrain, quantize_job
from adadfq_fast.models import build_model
from adadfq_fast.nn import load_q_checkpoint
from test_data import write_fmnist


@pytest.fixture
def tiny_fmnist(tmp_path):
    root = tmp_path / "fmnist"
    write_fmnist(root, prefix="train", n=64, seed=1)
    write_fmnist(root, prefix="t10k", n=40, seed=2)
    return root


def test_augment_shifts_and_flips_within_bounds():
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(64, 1, 8, 8) + 0.5  # no zeros: a zero in the output can only be shift padding
    out = pretrain.augment(x, gen, shift=2)
    assert out.shape == x.shape
    for i in range(len(x)):
        # Each output is a shifted (and maybe mirrored) copy: its non-zero values are a subset of the input's.
        vals = out[i][out[i] != 0]
        assert torch.isin(vals, x[i]).all()
        zero_rows = (out[i, 0] == 0).all(dim=1).sum() + 0
        assert zero_rows <= 2
    assert not torch.equal(out, x)  # something moved
    again = pretrain.augment(x, torch.Generator().manual_seed(0), shift=2)
    assert torch.equal(out, again)  # the seed fixes the augmentation


def test_pretrain_writes_weights_and_card(tiny_fmnist, tmp_path):
    out = tmp_path / "teacher.pt"
    assert pretrain.main(["--data-root", str(tiny_fmnist), "--epochs", "1", "--batch-size", "16", "--out", str(out),
                          "--no-progress"]) == 0
    card = pretrain.shipped_teacher_card(str(out))
    assert card["model"] == "resnet20" and card["in_channels"] == 1 and card["in_size"] == [28, 28]
    assert len(card["train_data_sha256"]) == 64 and card["train_data_sha256"] != card["test_data_sha256"]
    assert card["command"].startswith("adadfq-fast pretrain") and 0 <= card["test_acc"] <= 100
    model = build_model("resnet20", num_classes=10, in_channels=1, in_size=(28, 28), checkpoint=str(out))
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


def test_quantize_job_end_to_end(tiny_fmnist, tmp_path):
    teacher = build_model("resnet20", num_classes=10, in_channels=1, in_size=(28, 28))
    ckpt = tmp_path / "t.pt"
    torch.save(teacher.state_dict(), ckpt)
    out = tmp_path / "job"
    code = quantize_job.main(["--checkpoint", str(ckpt), "--data-root", str(tiny_fmnist), "--epochs", "2",
                              "--iters-per-epoch", "2", "--warmup-epochs", "1", "--batch-size", "4", "--bits", "3",
                              "--out", str(out), "--no-progress"])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    for key in ("teacher_acc", "calib_acc", "gdfq_acc", "adadfq_acc"):
        assert 0.0 <= summary[key] <= 100.0, key
    assert set(summary["iters_per_s"]) == {"gdfq", "adadfq"} and all(v > 0 for v in summary["iters_per_s"].values())
    assert summary["config"]["wbits"] == 3 and summary["config"]["abits"] == 3
    # H' of every sample of the first and last epoch: 2 iterations x batch 4.
    assert len(summary["runs"]["adadfq"]["h_norm_first"]) == 8
    assert "| W3A3 AdaDFQ |" in (out / "table.md").read_text()
    if _has_matplotlib():
        for name in ("accuracy.png", "h_norm.png"):
            assert (out / name).stat().st_size > 1000
    q, payload = load_q_checkpoint(out / "q_adadfq_w3a3.pt")
    assert payload["wbits"] == 3 and payload["meta"]["method"] == "adadfq"
    assert q(torch.zeros(1, 1, 28, 28)).shape == (1, 10)


def _has_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def test_quantize_job_errors(tmp_path, monkeypatch):
    with pytest.raises(SystemExit, match="--bits must be in 2..8"):
        quantize_job.main(["--bits", "9"])
    with pytest.raises(SystemExit, match="--warmup-epochs"):
        quantize_job.main(["--epochs", "2", "--warmup-epochs", "2"])
    with pytest.raises(SystemExit, match="no shipped teacher"):
        quantize_job.main(["--model", "resnet20_cifar10", "--dataset", "cifar10"])
    monkeypatch.setenv("ADADFQ_DATA_DIR", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    ckpt = tmp_path / "t.pt"
    torch.save(build_model("resnet20", num_classes=10, in_channels=1, in_size=(28, 28)).state_dict(), ckpt)
    # A data root without the files: the error says where it looked and how to install the data.
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        quantize_job.main(["--checkpoint", str(ckpt), "--data-root", str(tmp_path / "nowhere")])


@pytest.mark.skipif(not os.path.isfile(pretrain.SHIPPED_TEACHER), reason="shipped teacher weights not present")
def test_shipped_teacher_card_matches_weights():
    import hashlib

    card = pretrain.shipped_teacher_card()
    with open(pretrain.SHIPPED_TEACHER, "rb") as f:
        assert hashlib.sha256(f.read()).hexdigest() == card["weights_sha256"]
    assert card["test_acc"] >= 92.0 and card["in_size"] == [28, 28]


@pytest.mark.skipif(not os.path.isfile(pretrain.SHIPPED_TEACHER), reason="shipped teacher weights not present")
def test_shipped_teacher_accuracy_on_real_test_set():
    from adadfq_fast.data import FASHION_MNIST_DIR, evaluate, make_loader

    if not os.path.isdir(FASHION_MNIST_DIR):
        pytest.skip(f"Fashion-MNIST not installed in {FASHION_MNIST_DIR} (apt-get install dataset-fashion-mnist)")
    card = pretrain.shipped_teacher_card()
    model = build_model("resnet20", num_classes=10, in_channels=1, in_size=(28, 28),
                        checkpoint=pretrain.SHIPPED_TEACHER)
    acc = evaluate(model, make_loader("fashion-mnist", batch_size=1000, root=FASHION_MNIST_DIR), progress=False)
    assert acc == pytest.approx(card["test_acc"], abs=0.02)  # the card's number is reproducible
    assert acc >= 92.0


def test_best_q_is_a_q_checkpoint_and_eval_reads_both_forms(tiny_fmnist, tmp_path, capsys):
    from adadfq_fast.cli.evaluate import main as eval_main
    from adadfq_fast.nn import is_q_checkpoint
    from test_trainer import _trainer

    tr = _trainer(tmp_path, evaluate_fn=lambda q: 50.0)
    tr.fit()
    best = tmp_path / "run" / "best_q.pt"
    assert is_q_checkpoint(best) and not is_q_checkpoint(tmp_path / "run" / "metrics.jsonl")
    from adadfq_fast.nn import read_q_checkpoint

    # (The trainer's teacher here is a tiny stand-in, so the file is read, not rebuilt from the zoo.)
    payload = read_q_checkpoint(best)
    assert payload["meta"]["run"] == "run" and payload["wbits"] == tr.cfg.wbits
    assert payload["state_dict"].keys() == tr.Q.state_dict().keys()

    # `adadfq-fast eval` on a self-describing checkpoint and on Q's bare state dict (with --wbits/--abits).
    teacher = build_model("resnet20", num_classes=10, in_channels=1, in_size=(28, 28))
    fp = tmp_path / "fp.pt"
    torch.save(teacher.state_dict(), fp)
    out = tmp_path / "job"
    quantize_job.main(["--checkpoint", str(fp), "--data-root", str(tiny_fmnist), "--epochs", "2",
                       "--iters-per-epoch", "1", "--warmup-epochs", "1", "--batch-size", "4", "--method", "adadfq",
                       "--bits", "4", "--out", str(out), "--no-progress", "--no-plots"])
    summary = json.loads((out / "summary.json").read_text())
    ckpt = out / "q_adadfq_w4a4.pt"
    q, _ = load_q_checkpoint(ckpt)
    torch.save(q.state_dict(), tmp_path / "bare.pt")
    for args in (["--checkpoint", str(ckpt)], ["--checkpoint", str(tmp_path / "bare.pt"), "--wbits", "4",
                                                 "--abits", "4"]):
        capsys.readouterr()
        assert eval_main(["--model", "resnet20", "--dataset", "fashion-mnist", "--data-root", str(tiny_fmnist),
                          "--no-progress", *args]) == 0
        assert f"top-1 {summary['adadfq_acc']:.2f}%" in capsys.readouterr().out


def _tiny_job(tiny_fmnist, tmp_path, out, *extra):
    ckpt = tmp_path / "t.pt"
    if not ckpt.exists():
        torch.manual_seed(0)
        torch.save(build_model("resnet20", num_classes=10, in_channels=1, in_size=(28, 28)).state_dict(), ckpt)
    assert quantize_job.main(["--checkpoint", str(ckpt), "--data-root", str(tiny_fmnist), "--epochs", "2",
                              "--iters-per-epoch", "2", "--warmup-epochs", "1", "--batch-size", "4", "--threads", "1",
                              "--out", str(out), "--no-progress", "--no-plots", *extra]) == 0
    return json.loads((out / "summary.json").read_text())


def test_quantize_job_is_reproducible(tiny_fmnist, tmp_path):
    """Same command, seed and thread count: the same numbers and the same Q, bit for bit."""
    a = _tiny_job(tiny_fmnist, tmp_path, tmp_path / "a")
    b = _tiny_job(tiny_fmnist, tmp_path, tmp_path / "b")
    for key in ("teacher_acc", "calib_acc", "gdfq_acc", "adadfq_acc"):
        assert a[key] == b[key], key
    for method in ("gdfq", "adadfq"):
        assert a["runs"][method]["h_norm_last"] == b["runs"][method]["h_norm_last"]
        qa, _ = load_q_checkpoint(tmp_path / "a" / f"q_{method}_w3a3.pt")
        qb, _ = load_q_checkpoint(tmp_path / "b" / f"q_{method}_w3a3.pt")
        for (k, x), y in zip(qa.state_dict().items(), qb.state_dict().values()):
            if isinstance(x, torch.Tensor):
                assert torch.equal(x, y), (method, k)


def test_quantize_job_defaults_to_w3a3_and_names_its_fixes(tiny_fmnist, tmp_path):
    from adadfq_fast.game.trainer import RangeNotConvergedWarning

    s = _tiny_job(tiny_fmnist, tmp_path, tmp_path / "fix", "--method", "adadfq", "--ste", "clipped",
                  "--act-range-update", "standard")
    assert s["config"]["wbits"] == 3 and s["config"]["abits"] == 3
    cfg = s["runs"]["adadfq"]["config"]
    assert cfg["ste"] == "clipped" and cfg["act_range_update"] == "standard"
    table = (tmp_path / "fix" / "table.md").read_text()
    assert "opt-in fixes: ste=clipped, act_range_update=standard" in table
    assert s["runs"]["adadfq"]["act_range_ratio"] < 10 and "NOT converged" not in table
    # Faithful EMA after a 2-iteration warm-up: blown ranges, a warning and a note in the table.
    with pytest.warns(RangeNotConvergedWarning, match="act_range_update=standard"):
        s = _tiny_job(tiny_fmnist, tmp_path, tmp_path / "faithful", "--method", "adadfq")
    assert s["runs"]["adadfq"]["config"]["ste"] == "identity"
    table = (tmp_path / "faithful" / "table.md").read_text()
    assert "faithful quantizer" in table and "NOT converged" in table


def _summary(**cfg):
    base = dict(model="resnet20", dataset="fashion-mnist", epochs=10, iters_per_epoch=100, warmup_epochs=2,
                batch_size=16, q_lr=1e-4, g_lr=1e-3, schedule="fast", bf16=False, ste="identity",
                act_range_update="faithful", test_images=10000, wbits=3, abits=3, seed=0)
    base.update(cfg)
    runs = {m: dict(final_acc=acc, iters_per_s=2.0, best_acc=acc, best_epoch=9) for m, acc in
            (("gdfq", 90.0), ("adadfq", 91.5))}
    return dict(config=base, teacher_acc=93.6, calib_acc=89.0, gdfq_acc=90.0, adadfq_acc=91.5, runs=runs)


def test_table_quotes_the_seed_spread_at_the_same_budget_only(tmp_path):
    table = {"budget_config": {k: v for k, v in _summary()["config"].items() if k not in ("wbits", "abits", "seed")},
             "runs": {"w3a3": [dict(seed=s, teacher_acc=93.6, calib_acc=c, gdfq_acc=g, adadfq_acc=a)
                               for s, c, g, a in ((0, 89.0, 90.0, 91.0), (1, 88.0, 90.5, 91.5), (2, 87.0, 90.0, 91.6))]}}
    path = tmp_path / "fmnist_table.json"
    path.write_text(json.dumps(table))
    s = _summary()
    ref = quantize_job.seed_reference(s, str(path))
    assert ref["adadfq_acc"]["mean"] == pytest.approx(91.3667, abs=1e-3)
    assert ref["adadfq_minus_gdfq"]["mean"] == pytest.approx(1.2, abs=1e-9)
    assert ref["adadfq_minus_gdfq"]["std"] == pytest.approx(0.12**0.5, abs=1e-9)  # gains 1.0, 1.0, 1.6
    assert ref["adadfq_minus_gdfq"]["ahead"] == 3
    s["seed_reference"] = ref
    text = quantize_job.format_table(s)
    assert "91.37 ± 0.32" in text and "+1.20 ± 0.35 over 3 seeds, ahead in 3 of 3" in text
    # Another budget, bit width or fix: no spread quoted (it would not apply), and the table says so.
    for other in (dict(epochs=2), dict(wbits=4, abits=4), dict(ste="clipped"), dict(test_images=1000)):
        assert quantize_job.seed_reference(_summary(**other), str(path)) is None, other
    assert "No seed spread quoted" in quantize_job.format_table(_summary(epochs=2))
    # The shipped table has the default budget's W3A3 runs: the default job quotes them.
    shipped = quantize_job.seed_reference(_summary())
    assert shipped is not None and shipped["adadfq_minus_gdfq"]["n"] == 3
