"""The two schedules of the game loop: same updates to G and Q with frozen ranges; one iteration runs anywhere."""
import copy

import pytest
import torch
from torch import nn

import adadfq_fast
from adadfq_fast.game.generators import build_generator
from adadfq_fast.game.schedules import GameStep, LossWeights
from adadfq_fast.nn import freeze_act_ranges, quantize_model, unfreeze_act_ranges

NUM_CLASSES = 10


class TinyNet(nn.Module):
    """conv-bn-relu x2 + pool + linear: small, but every piece the game touches (BN inputs, ReLUs, linear)."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1, self.relu1 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU()
        self.conv2, self.bn2, self.relu2 = nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU()
        self.fc = nn.Linear(16, NUM_CLASSES)

    def forward(self, x):
        x = self.relu1(self.bn1(self.conv1(x)))
        x = self.relu2(self.bn2(self.conv2(x)))
        return self.fc(x.mean(dim=(2, 3)))


def _teacher():
    net = TinyNet()
    with torch.no_grad():  # non-trivial running statistics, as a trained network has
        for bn in (net.bn1, net.bn2):
            bn.running_mean.normal_(0, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
    return net.eval()


def _players(seed=0):
    torch.manual_seed(seed)
    teacher = _teacher()
    q = quantize_model(teacher, 4, 4, example_input=torch.zeros(1, 3, 8, 8))
    g = build_generator("cifar", NUM_CLASSES, img_size=8, channels=3)
    return teacher, g, q


def _game(teacher, g, q, schedule, channels_last=False):
    opt_g = torch.optim.Adam(g.parameters(), lr=1e-3, betas=(0.5, 0.999))
    opt_q = torch.optim.SGD(q.parameters(), lr=1e-2, momentum=0.9, weight_decay=1e-4, nesterov=True)
    return GameStep(teacher, g, q, opt_g, opt_q, NUM_CLASSES, 100, 16, LossWeights(), schedule=schedule,
                    channels_last=channels_last)


def _warm_ranges(q, teacher):
    """Calibrate Q's ranges on a few random batches, then freeze them (as after epoch 4)."""
    unfreeze_act_ranges(q)
    with torch.no_grad():
        for _ in range(3):
            q(torch.randn(16, 3, 8, 8))
    freeze_act_ranges(q)


@pytest.mark.parametrize("backend,fast_channels_last", [("reference", False), ("auto", False), ("auto", True)])
def test_frozen_ranges_same_parameters(backend, fast_channels_last):
    teacher, g, q = _players()
    _warm_ranges(q, teacher)
    players = {s: (copy.deepcopy(teacher), copy.deepcopy(g), copy.deepcopy(q)) for s in ("faithful", "fast")}
    # fast as the trainer runs it (channels_last players and images) must still equal faithful (default layout)
    games = {s: _game(*players[s], s, channels_last=fast_channels_last and s == "fast") for s in players}
    losses = {s: [] for s in games}
    with adadfq_fast.use_backend(backend):
        for it in range(5):
            for schedule, game in games.items():
                torch.manual_seed(100 + it)  # same z and y in both schedules
                m = game(step_q=True, ranges_frozen=True)
                losses[schedule].append(torch.stack([m["loss_g"], m["loss_q"], m["l_bns"]]))
    # Every iteration's losses agree closely in all variants (a missed or doubled step would show here).
    torch.testing.assert_close(torch.stack(losses["faithful"]), torch.stack(losses["fast"]), rtol=2e-5, atol=1e-5)
    # Same layout: the same convolution algorithms, so the two differ only by float reassociation in the shared
    # backward. channels_last runs other oneDNN algorithms; then G's conv biases in front of a BatchNorm (whose
    # true gradient is 0) get float-noise gradients that Adam normalises into steps of up to lr = 1e-3 each: up
    # to 5 lr after 5 iterations, whatever the layout, so that is the tolerance there.
    atol = 5e-3 if fast_channels_last else 1e-5
    for (_, g1, q1), (_, g2, q2) in [(players["faithful"], players["fast"])]:
        for (name, a), b in zip(g1.state_dict().items(), g2.state_dict().values()):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=atol, msg=f"G.{name}")
        for (name, a), b in zip(q1.state_dict().items(), q2.state_dict().values()):
            if isinstance(a, torch.Tensor):
                torch.testing.assert_close(a, b, rtol=1e-4, atol=atol, msg=f"Q.{name}")
    # And the game really moved both players.
    _, g0, q0 = _players()
    assert any(not torch.equal(a, b) for a, b in zip(g0.state_dict().values(), players["fast"][1].state_dict().values()))
    assert any(not torch.equal(a, b) for a, b in zip(q0.parameters(), players["fast"][2].parameters()))


def test_unfrozen_ranges_update_twice_in_both_schedules():
    """While unfrozen, both schedules run two Q forwards per iteration: the range states agree."""
    teacher, g, q = _players()
    players = {s: (copy.deepcopy(teacher), copy.deepcopy(g), copy.deepcopy(q)) for s in ("faithful", "fast")}
    games = {s: _game(*players[s], s) for s in players}
    for it in range(3):
        for game in games.values():
            torch.manual_seed(7 + it)
            game(step_q=False, ranges_frozen=False)
    states = {s: [m.state.clone() for m in adadfq_fast.nn.act_quantizers(players[s][2])] for s in players}
    for a, b in zip(states["faithful"], states["fast"]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
        assert a[2] == pytest.approx(0.9**6, rel=1e-5)  # beta_t after six updates: two per iteration


def test_warmup_does_not_step_q_and_gdfq_runs():
    teacher, g, q = _players()
    _warm_ranges(q, teacher)
    q_before = copy.deepcopy(q.state_dict())
    game = _game(teacher, g, q, "fast")
    metrics = game(step_q=False, ranges_frozen=True)
    after = q.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in q_before.items() if isinstance(v, torch.Tensor))
    assert {"loss_g", "loss_q", "l_margin", "l_bal", "l_bns", "h_norm"} <= set(metrics)
    gdfq = GameStep(teacher, g, q, game.opt_g, game.opt_q, NUM_CLASSES, 100, 16, LossWeights(), method="gdfq")
    m = gdfq(step_q=True, ranges_frozen=True)
    assert torch.isfinite(m["loss_g"]) and torch.isfinite(m["loss_q"])
