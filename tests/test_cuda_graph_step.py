"""Whole-iteration CUDA-graph capture (adadfq_fast.game.cuda_graph): CPU pass-through and argument errors here;
on a GPU, a captured run must train exactly like the eager one (skipped without a GPU)."""
import pytest
import torch

from adadfq_fast.game.cuda_graph import CudaGraphStep
from test_trainer import _trainer


def _params(trainer):
    return [p.detach().clone() for p in list(trainer.G.parameters()) + list(trainer.Q.parameters())]


def test_cpu_runs_eagerly_and_matches(tmp_path):
    eager = _trainer(tmp_path / "a")
    eager.fit()
    captured = _trainer(tmp_path / "b", capture="cuda_graph")
    assert isinstance(captured.run_step, CudaGraphStep)
    captured.fit()
    assert not captured.run_step.captured  # no CUDA device: every call went to the eager step
    for a, b in zip(_params(eager), _params(captured)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_refuses_faithful_and_distributed_hooks(tmp_path):
    with pytest.raises(ValueError, match="schedule='fast'"):
        CudaGraphStep(_trainer(tmp_path / "f", schedule="faithful").step)
    step = _trainer(tmp_path / "d").step
    step.reduce_grads = lambda grads: None
    with pytest.raises(ValueError, match="single-process"):
        CudaGraphStep(step)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_captured_run_matches_eager_on_gpu(tmp_path):
    runs = {}
    for capture in ("none", "cuda_graph"):
        tr = _trainer(tmp_path / capture, capture=capture, device="cuda", epochs=3, iters_per_epoch=6)
        tr.fit()
        runs[capture] = (tr, _params(tr))
    assert runs["cuda_graph"][0].run_step.captured
    # Same kernels in the same order: replaying the recorded iteration must give the eager parameters.
    for a, b in zip(runs["none"][1], runs["cuda_graph"][1]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    h = runs["cuda_graph"][0].history
    assert all(torch.isfinite(torch.tensor(r["loss_g"])) for r in h)
