"""Multi-process training (torch.distributed, gloo on CPU, two processes on 127.0.0.1): ranks stay identical,
the activation ranges really are reduced, and ``torchrun ... train`` runs with only rank 0 writing."""
import json
import os
import socket
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import adadfq_fast
from adadfq_fast import reference as ref
from adadfq_fast.config import load_config
from adadfq_fast.game import distributed as ddp
from adadfq_fast.game.trainer import Trainer
from adadfq_fast.nn import act_quantizers
from test_game_schedules import _players, _teacher

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORLD = 2

pytestmark = pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                                reason="torch.distributed with gloo is not available")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _loopback_env(port: int) -> dict:
    # GLOO_SOCKET_IFNAME keeps gloo's pairs on the loopback interface (not whatever the hostname resolves to).
    return dict(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1")


def _join(rank: int, port: int) -> None:
    os.environ.update(_loopback_env(port), RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD))
    torch.set_num_threads(1)  # two processes on a small machine
    assert ddp.init_from_env("cpu") == (rank, WORLD)
    assert ddp.init_from_env("cpu") == (rank, WORLD)  # idempotent
    assert ddp.is_distributed() and ddp.is_main() == (rank == 0)


def _spawn(fn, *args) -> None:
    mp.spawn(fn, args=(_free_port(),) + args, nprocs=WORLD, join=True)


# ---- (a) a short run keeps both ranks bit-identical ----------------------------------------------------------
def _train_worker(rank, port, out_dir):
    _join(rank, port)

    def teacher():
        torch.manual_seed(rank)  # ranks build different teachers: the broadcast must make them agree
        return _teacher()

    try:
        result = {}
        for schedule in ("faithful", "fast"):
            cfg = load_config(None, dict(
                dataset="cifar10", model="resnet20_cifar10", num_classes=10, img_size=8, channels=3, epochs=2,
                iters_per_epoch=2, batch_size=8, warmup_epochs=0, act_range_unfreeze_epochs=1, q_lr=1e-2,
                device="cpu", output_dir=out_dir, name=schedule, schedule=schedule, seed=3))
            calls = []
            tr = Trainer(cfg, teacher(), evaluate_fn=lambda q: calls.append(1) or 40.0 + len(calls),
                         run_dir=os.path.join(out_dir, f"{schedule}_rank{rank}"), progress=False)
            samples = []
            tr.G.register_forward_hook(lambda m, i, o: samples.append(o.detach().sum().item()))
            tr.fit()
            if schedule == "fast":  # resume from rank 0's checkpoint after epoch 1: the same players as straight
                resume_dir = os.path.join(out_dir, "resume")
                Trainer(cfg, teacher(), run_dir=resume_dir, progress=False).fit(epochs=1)
                dist.barrier()  # rank 0 has written the checkpoint
                resumed = Trainer(cfg, teacher(), run_dir=resume_dir, progress=False)
                resumed.load_checkpoint(os.path.join(resume_dir, "checkpoint.pt"))
                resumed.fit()
                for module in ("G", "Q"):
                    ours, straight = getattr(resumed, module).state_dict(), getattr(tr, module).state_dict()
                    for name, t in straight.items():
                        if isinstance(t, torch.Tensor):
                            assert torch.equal(t, ours[name]), f"resumed {module}.{name} differs on rank {rank}"
            result[schedule] = dict(
                G={k: v.clone() for k, v in tr.G.state_dict().items()},
                Q={k: v.clone() for k, v in tr.Q.state_dict().items() if isinstance(v, torch.Tensor)},
                P={k: v.clone() for k, v in tr.P.state_dict().items()},
                ranges=[m.state.clone() for m in act_quantizers(tr.Q)],
                acc=[r["q_acc"] for r in tr.history], best=(tr.best_acc, tr.best_epoch), calls=len(calls),
                samples=samples, frozen=[r["ranges_frozen"] for r in tr.history],
                wrote=os.path.isdir(os.path.join(out_dir, f"{schedule}_rank{rank}")))
        torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        ddp.shutdown()


def test_ranks_stay_identical(tmp_path):
    _spawn(_train_worker, str(tmp_path))
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(WORLD))
    for schedule in ("faithful", "fast"):
        a, b = r0[schedule], r1[schedule]
        assert a["frozen"] == [False, True]  # one epoch with ranges updating, one with them frozen
        for part in ("G", "Q", "P"):
            for name, t in a[part].items():
                assert torch.equal(t, b[part][name]), f"{schedule}: {part}.{name} differs across ranks"
        for s0, s1 in zip(a["ranges"], b["ranges"]):
            assert torch.equal(s0, s1)
        assert a["ranges"][0][2] == pytest.approx(0.9**4, rel=1e-5)  # 2 iterations x 2 Q forwards, then frozen
        # Each rank generated its own samples; only rank 0 evaluated and wrote, and every rank agrees on the best.
        # (Rank 0 also generated one probe batch when the ranges froze, Trainer.check_act_ranges; it restores the
        # RNG, so the game's samples are unchanged.)
        game0 = a["samples"][:2] + a["samples"][3:]
        assert len(a["samples"]) == 5 and len(b["samples"]) == 4
        assert all(x != y for x, y in zip(game0, b["samples"]))
        assert a["calls"] == 2 and b["calls"] == 0
        assert a["acc"] == b["acc"] == [41.0, 42.0] and a["best"] == b["best"] == (42.0, 1)
        assert a["wrote"] and not b["wrote"]


# ---- (b) one unfrozen Q forward: the ranges are the global batch's -------------------------------------------
def _range_worker(rank, port, out_dir):
    _join(rank, port)
    try:
        _, _, q = _players(seed=0)  # same Q on both ranks
        acts = act_quantizers(q)
        seen = []  # per QuantAct: (min, max) of its input on this rank
        for m in acts:
            m.register_forward_pre_hook(lambda mod, inp: seen.append((inp[0].min(), inp[0].max())))
        torch.manual_seed(100 + rank)
        x = torch.randn(16, 3, 8, 8) * (1 + 2 * rank)  # different spreads: each rank holds some extremes
        start = [m.state.clone() for m in acts]
        with adadfq_fast.use_backend("reference"), torch.no_grad():
            q(x)
        local = [m.state.clone() for m in acts]
        ddp.sync_act_ranges(q)
        synced = [m.state.clone() for m in acts]
        # Gradient averaging: a list with None and an aliased entry.
        g = torch.full((3,), float(rank + 1))
        ddp.all_reduce_grads([g, None, g])
        torch.save(dict(x=x, start=start, local=local, synced=synced, seen=seen, g=g),
                   os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        ddp.shutdown()


def test_ranges_are_reduced(tmp_path):
    _spawn(_range_worker, str(tmp_path))
    r = [torch.load(tmp_path / f"rank{i}.pt", weights_only=False) for i in range(WORLD)]
    assert all(torch.equal(x["g"], torch.full((3,), 1.5)) for x in r)
    n = len(r[0]["synced"])
    assert n == 2
    moved = 0
    for layer in range(n):
        s0, s1 = r[0]["synced"][layer], r[1]["synced"][layer]
        l0, l1 = r[0]["local"][layer], r[1]["local"][layer]
        assert torch.equal(s0, s1)
        assert torch.equal(r[0]["start"][layer], r[1]["start"][layer])
        # The elementwise MIN/MAX of the ranks' own updates...
        assert s0[0] == torch.minimum(l0[0], l1[0]) and s0[1] == torch.maximum(l0[1], l1[1]) and s0[2] == l0[2]
        # ...is bit for bit the single-process update from the global batch's min and max.
        lo = torch.minimum(r[0]["seen"][layer][0], r[1]["seen"][layer][0])
        hi = torch.maximum(r[0]["seen"][layer][1], r[1]["seen"][layer][1])
        expected = r[0]["start"][layer].clone()
        ref.ema_range_update(expected, torch.stack([lo, hi]), 0.9)
        assert torch.equal(s0, expected)
        moved += int(not torch.equal(s0, l0) or not torch.equal(s0, l1))
    assert moved == n  # the reduction really changed some rank's range, in every layer

    # The first QuantAct sees the inputs unaffected by earlier ranges: one process on both batches agrees too.
    _, _, q = _players(seed=0)
    with adadfq_fast.use_backend("reference"), torch.no_grad():
        q(torch.cat([r[0]["x"], r[1]["x"]]))
    assert torch.equal(act_quantizers(q)[0].state, r[0]["synced"][0])


# ---- (c) torchrun + the CLI --------------------------------------------------------------------------------
def test_torchrun_cli_smoke(tmp_path):
    port = _free_port()
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={WORLD}", "--master_addr=127.0.0.1",
           f"--master_port={port}", "-m", "adadfq_fast", "train", "--config", "cifar10_resnet20_w4a4",
           "--random-teacher", "--no-eval", "--no-progress", "epochs=2", "iters_per_epoch=2", "warmup_epochs=1",
           "act_range_unfreeze_epochs=1", "batch_size=4", "device=cpu", f"output_dir={tmp_path}", "name=smoke"]
    env = dict(os.environ, **_loopback_env(port))
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert os.listdir(tmp_path) == ["smoke"]
    run = tmp_path / "smoke"
    assert {"checkpoint.pt", "config.toml", "metrics.jsonl", "summary.json"} <= set(os.listdir(run))
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [x["epoch"] for x in lines] == [0, 1] and all(x["world_size"] == WORLD for x in lines)  # one writer
    summary = json.loads((run / "summary.json").read_text())
    assert summary["epochs_done"] == 2 and summary["world_size"] == WORLD
    assert proc.stdout.count("done: 2 epochs") == 1 and f"per rank ({WORLD} ranks)" in proc.stdout
