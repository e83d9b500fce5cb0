"""The opt-in fixes of Q's activation quantizer (ste=clipped, act_range_update=standard), the warning on
activation ranges that froze before converging, and the seeded random teacher of `adadfq-fast train`."""
import warnings

import pytest
import torch

import adadfq_fast
from adadfq_fast import reference as ref
from adadfq_fast.game.trainer import RangeNotConvergedWarning
from adadfq_fast.nn import QuantAct, act_quantizers, set_quant_options
from test_trainer import _trainer

BACKENDS = ["auto", "reference"]


def _standard_ema(values, beta=0.9):
    """Textbook bias-corrected EMA (float64): m_t = beta m + (1 - beta) v_t, reported as m_t / (1 - beta^t)."""
    m, out = 0.0, []
    for t, v in enumerate(values, 1):
        m = beta * m + (1 - beta) * v
        out.append(m / (1 - beta**t))
    return out


@pytest.mark.parametrize("backend", BACKENDS)
def test_standard_range_update_is_the_bias_corrected_ema(backend):
    torch.manual_seed(0)
    xs = [torch.rand(4, 8) * (1 + i % 3) for i in range(30)]
    standard, faithful = QuantAct(4, range_update="standard"), QuantAct(4)
    with adadfq_fast.use_backend(backend):
        for x in xs:
            standard(x)
            faithful(x)
    want_max = _standard_ema([x.max().item() for x in xs])[-1]
    want_min = _standard_ema([x.min().item() for x in xs])[-1]
    assert standard.x_max.item() == pytest.approx(want_max, rel=1e-5)
    assert standard.x_min.item() == pytest.approx(want_min, rel=1e-4, abs=1e-7)
    largest = max(x.max().item() for x in xs)
    assert standard.x_max.item() <= largest  # an average of batch maxima
    # The faithful (compounding) correction is still far above every activation after 30 updates.
    assert faithful.x_max.item() > 100 * largest
    # The first update stores the batch's own range (to float32 rounding of (1 - beta) / (1 - beta)).
    first = QuantAct(4, range_update="standard")
    first(xs[0])
    assert first.x_max.item() == pytest.approx(xs[0].max().item(), rel=1e-6)
    assert first.x_min.item() == pytest.approx(xs[0].min().item(), rel=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("ste", ["identity", "clipped"])
@pytest.mark.parametrize("mode", ["faithful", "standard"])
def test_quant_act_matches_the_reference(backend, ste, mode):
    torch.manual_seed(1)
    q = QuantAct(3, ste=ste, range_update=mode)
    state = torch.tensor([0.0, 0.0, 1.0])
    with adadfq_fast.use_backend(backend):
        for i in range(6):
            if i == 4:
                q.freeze()
            x = (torch.rand(4, 8) * (i + 1)).requires_grad_()
            x_ref = x.detach().clone().requires_grad_()
            out = q(x)
            want = ref.fake_quant_act(x_ref, 3, state, 0.9, not q.frozen, ste, mode)
            g = torch.randn_like(out)
            out.backward(g)
            want.backward(g)
            assert torch.equal(out, want) and torch.equal(q.state, state)
            assert torch.equal(x.grad, x_ref.grad)


def test_clipped_ste_masks_the_gradient_where_the_quantizer_clamps():
    x = torch.tensor([-0.5, 0.0, 0.3, 1.0, 1.7, 4.0])
    grads, outs = {}, {}
    for ste in ("identity", "clipped"):
        q = QuantAct(4, ste=ste).freeze()
        q.state.copy_(torch.tensor([0.0, 1.0, 0.5]))
        xg = x.clone().requires_grad_()
        outs[ste] = q(xg)
        outs[ste].sum().backward()
        grads[ste] = xg.grad
    assert torch.equal(outs["identity"], outs["clipped"])  # same forward values
    assert torch.equal(grads["identity"], torch.ones(6))  # the original passes every gradient
    assert torch.equal(grads["clipped"], torch.tensor([0.0, 1, 1, 1, 0, 0]))


def test_set_quant_options_and_bad_values():
    q = QuantAct(4)
    assert q.ste == "identity" and q.range_update == "faithful"  # faithful defaults
    with pytest.raises(ValueError, match="ste"):
        QuantAct(4, ste="clip")
    with pytest.raises(ValueError, match="range_update"):
        QuantAct(4, range_update="adam")
    with pytest.raises(ValueError, match="act_range_update"):
        set_quant_options(torch.nn.Sequential(q), act_range_update="nope")


def test_trainer_applies_the_config_fixes(tmp_path):
    tr = _trainer(tmp_path / "fix", ste="clipped", act_range_update="standard")
    assert all(m.ste == "clipped" and m.range_update == "standard" for m in act_quantizers(tr.Q))
    tr = _trainer(tmp_path / "faithful")
    assert all(m.ste == "identity" and m.range_update == "faithful" for m in act_quantizers(tr.Q))


def test_each_fix_changes_the_run(tmp_path):
    """Same seed, same players: each fix gives a different Q; the standard EMA also different ranges."""
    runs = {}
    for name, kw in (("faithful", {}), ("clipped", dict(ste="clipped")),
                     ("standard", dict(act_range_update="standard"))):
        tr = _trainer(tmp_path / name, **kw)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RangeNotConvergedWarning)
            tr.fit()
        runs[name] = tr
    w = {k: torch.cat([p.detach().flatten() for p in t.Q.parameters()]) for k, t in runs.items()}
    ranges = {k: torch.stack([m.state for m in act_quantizers(t.Q)]) for k, t in runs.items()}
    assert not torch.equal(w["faithful"], w["clipped"]) and not torch.equal(w["faithful"], w["standard"])
    assert (ranges["standard"][:, 1] < ranges["faithful"][:, 1]).all()  # no compounding overshoot


def _range_warnings(tr):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tr.fit()
    return [w for w in caught if issubclass(w.category, RangeNotConvergedWarning)]


def test_unconverged_ranges_warn_once_with_the_remedy(tmp_path):
    # Ranges freeze after 2 iterations (4 faithful updates): x_max is ~50x the activations.
    tr = _trainer(tmp_path / "short", epochs=3, iters_per_epoch=2)
    caught = _range_warnings(tr)
    assert len(caught) == 1
    text = str(caught[0].message)
    assert "act_range_update=standard" in text and "warm-up" in text
    rec = tr.history[0]
    assert rec["act_range_ratio"] > 10 and rec["act_range_sites_blown"] >= 1
    assert "act_range_ratio" not in tr.history[1]  # checked once, when the ranges freeze


def test_healthy_ranges_do_not_warn(tmp_path):
    # The standard EMA after a short warm-up, and the faithful one after a long one (~160 updates).
    assert _range_warnings(_trainer(tmp_path / "std", iters_per_epoch=2, act_range_update="standard")) == []
    tr = _trainer(tmp_path / "long", epochs=2, iters_per_epoch=80)
    assert _range_warnings(tr) == [] and tr.history[0]["act_range_ratio"] < 10


def test_range_check_changes_nothing(tmp_path, monkeypatch):
    """The probe batch restores the RNG and G's BN buffers and leaves Q's ranges alone: same run with or without."""
    checked = _trainer(tmp_path / "a")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RangeNotConvergedWarning)
        checked.fit()
    plain = _trainer(tmp_path / "b")
    monkeypatch.setattr(plain, "check_act_ranges", lambda *a, **k: {})
    plain.fit()
    assert "act_range_ratio" in checked.history[0] and "act_range_ratio" not in plain.history[0]
    for a, b in ((checked.Q, plain.Q), (checked.G, plain.G)):
        for (k, x), y in zip(a.state_dict().items(), b.state_dict().values()):
            if isinstance(x, torch.Tensor):
                assert torch.equal(x, y), k


def _train_random_teacher(tmp_path, name, seed):
    from adadfq_fast.cli.train import main as train_main

    assert train_main(["--config", "cifar10_resnet20_w4a4", "--random-teacher", "--no-eval", "--no-progress",
                       "epochs=2", "iters_per_epoch=2", "warmup_epochs=1", "act_range_unfreeze_epochs=1",
                       "batch_size=4", f"seed={seed}", f"output_dir={tmp_path}", f"name={name}"]) == 0
    return torch.load(tmp_path / name / "checkpoint.pt", weights_only=False)


def test_random_teacher_follows_the_seed(tmp_path):
    torch.manual_seed(123)  # whatever the caller's RNG state: the run's seed decides
    a = _train_random_teacher(tmp_path, "a", 3)
    torch.manual_seed(456)
    b = _train_random_teacher(tmp_path, "b", 3)
    c = _train_random_teacher(tmp_path, "c", 4)
    for player in ("G", "Q"):
        for k, v in a[player].items():
            if isinstance(v, torch.Tensor):
                assert torch.equal(v, b[player][k]), (player, k)
    qa, qc = a["Q"], c["Q"]
    assert any(isinstance(v, torch.Tensor) and v.is_floating_point() and not torch.equal(v, qc[k])
               for k, v in qa.items())
