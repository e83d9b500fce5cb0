"""The training loop: schedule of ranges/warmup, checkpoint + resume determinism, logs, and the CLI."""
import json
import os
import subprocess
import sys

import pytest
import torch

from adadfq_fast.config import load_config
from adadfq_fast.game.trainer import Trainer
from adadfq_fast.nn import act_quantizers
from test_game_schedules import TinyNet, _teacher

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cfg(tmp_path, **kw):
    base = dict(dataset="cifar10", model="resnet20_cifar10", num_classes=10, img_size=8, channels=3, epochs=3,
                iters_per_epoch=2, batch_size=8, warmup_epochs=1, act_range_unfreeze_epochs=1, q_lr=1e-2,
                q_lr_milestones=(2,), g_lr_milestones=(2,), device="cpu", output_dir=str(tmp_path), name="run",
                schedule="fast", seed=3)
    base.update(kw)
    return load_config(None, base)


def _trainer(tmp_path, evaluate_fn=None, **kw):
    torch.manual_seed(0)
    return Trainer(_cfg(tmp_path, **kw), _teacher(), evaluate_fn=evaluate_fn, run_dir=str(tmp_path / "run"),
                   progress=False)


def test_schedule_of_ranges_warmup_and_lr(tmp_path):
    calls = []
    tr = _trainer(tmp_path, evaluate_fn=lambda q: calls.append(1) or float(len(calls)))
    summary = tr.fit()
    h = tr.history
    assert [r["ranges_frozen"] for r in h] == [False, True, True]
    assert [r["q_stepped"] for r in h] == [False, True, True]
    assert h[2]["lr_q"] == pytest.approx(1e-3) and h[1]["lr_q"] == pytest.approx(1e-2)
    assert all(q.frozen for q in act_quantizers(tr.Q))
    assert summary["best_acc"] == 3.0 and summary["best_epoch"] == 2 and len(calls) == 3
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 3 and {"loss_g", "loss_q", "l_bns", "h_norm_mean", "iters_per_s"} <= set(json.loads(lines[0]))
    # H' of every generated sample of the first and of the last epoch: 2 iterations x batch 8.
    assert len(summary["h_norm_first"]) == 16 and len(summary["h_norm_last"]) == 16


def test_resume_is_deterministic(tmp_path):
    straight = _trainer(tmp_path / "a")
    straight.fit()
    first = _trainer(tmp_path / "b")
    first.fit(epochs=1)
    path = str(tmp_path / "b" / "run" / "checkpoint.pt")
    assert os.path.exists(path)
    resumed = _trainer(tmp_path / "c")
    resumed.load_checkpoint(path)
    assert resumed.epoch == 1
    resumed.fit()
    for a, b in zip(straight.Q.state_dict().values(), resumed.Q.state_dict().values()):
        if isinstance(a, torch.Tensor):
            assert torch.equal(a, b)
    for a, b in zip(straight.G.state_dict().values(), resumed.G.state_dict().values()):
        assert torch.equal(a, b)


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="resume: no checkpoint at"):
        _trainer(tmp_path).load_checkpoint(str(tmp_path / "nope.pt"))


def test_cli_train_smoke(tmp_path):
    cmd = [sys.executable, "-m", "adadfq_fast", "train", "--config", "cifar10_resnet20_w4a4", "--random-teacher",
           "--no-eval", "--no-progress", "epochs=2", "iters_per_epoch=2", "warmup_epochs=1",
           "act_range_unfreeze_epochs=1", "batch_size=4", f"output_dir={tmp_path}", "name=smoke"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr
    run = tmp_path / "smoke"
    assert {"checkpoint.pt", "config.toml", "metrics.jsonl", "summary.json"} <= set(os.listdir(run))
    assert json.loads((run / "summary.json").read_text())["epochs_done"] == 2
    proc = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert proc.returncode == 0 and "resumed at epoch 2" in proc.stdout


def test_cli_train_needs_teacher_weights(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "adadfq_fast", "train", f"output_dir={tmp_path}"],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode != 0 and "--teacher-checkpoint" in proc.stderr


def test_tensorboard_logging(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tr = _trainer(tmp_path, evaluate_fn=lambda q: 42.0, tensorboard=True)
    tr.fit()
    acc = EventAccumulator(str(tmp_path / "run" / "tb"))
    acc.Reload()
    tags = acc.Tags()
    assert {"loss_g", "loss_q", "q_acc", "iters_per_s"} <= set(tags["scalars"]) and "h_norm" in tags["histograms"]
    assert [e.step for e in acc.Scalars("q_acc")] == [2, 4, 6] and acc.Scalars("q_acc")[-1].value == 42.0


def test_cli_train_with_synthetic_eval_times_a_whole_run(tmp_path, capsys):
    """`adadfq-fast train --random-teacher --synthetic-eval N`: a full run without any data (how a GPU session
    times the 400 x 200 CIFAR run), with the wall time and the evaluations' share in summary.json."""
    import json

    from adadfq_fast.cli.train import main as train_main

    assert train_main(["--config", "cifar10_resnet20_w4a4", "--random-teacher", "--synthetic-eval", "40",
                       "--no-progress", "epochs=2", "iters_per_epoch=2", "warmup_epochs=1",
                       "act_range_unfreeze_epochs=1", "eval_batch_size=16", f"output_dir={tmp_path}"]) == 0
    out = capsys.readouterr().out
    assert "done: 2 epochs in" in out and "evaluations" in out
    summary = json.load(open(tmp_path / "cifar10_resnet20_w4a4" / "summary.json"))
    assert summary["fit_seconds"] > summary["eval_seconds"] > 0
    assert 0.0 <= summary["best_acc"] <= 100.0
