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
    """Two eager runs measure the GPU's own run-to-run noise (atomics in cuDNN's weight gradients and in the
    embedding backward make eager runs differ; Adam turns such noise on near-zero gradients into lr-sized steps);
    the captured run must stay within that noise of the eager one. Where eager is deterministic, that is 1e-6.
    Every run uses capturable Adam, as CudaGraphStep makes G's optimiser, so the update math is the same."""
    runs = {}
    for name, capture in (("eager_a", "none"), ("eager_b", "none"), ("captured", "cuda_graph")):
        tr = _trainer(tmp_path / name, capture=capture, device="cuda", epochs=3, iters_per_epoch=6)
        for group in tr.opt_g.param_groups:
            group["capturable"] = True
        tr.fit()
        runs[name] = (tr, _params(tr))
    assert runs["captured"][0].run_step.captured

    def max_diff(x, y):
        return max(float((a - b).abs().max()) for a, b in zip(runs[x][1], runs[y][1]))

    noise, captured = max_diff("eager_a", "eager_b"), max_diff("eager_a", "captured")
    print(f"max |eager_a - eager_b| = {noise:.3g}, max |eager_a - captured| = {captured:.3g}")
    assert captured <= 2 * noise + 1e-6, (
        f"captured run differs from eager by {captured:.3g}, beyond the eager run-to-run noise {noise:.3g}")
    h = runs["captured"][0].history
    assert all(torch.isfinite(torch.tensor(r["loss_g"])) for r in h)
