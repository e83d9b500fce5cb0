"""Memory-layout helpers shared by the ops layer and the Triton launchers (no other imports: bottom layer)."""
import torch


def is_dense(x: torch.Tensor) -> bool:
    """Non-overlapping and dense: contiguous in *some* dimension order (contiguous, channels_last, ...), so the
    kernels can read it as flat memory."""
    if x.is_contiguous():
        return True
    expected = 1
    for d in sorted((d for d in range(x.dim()) if x.shape[d] != 1), key=lambda d: x.stride(d)):
        if x.stride(d) != expected:
            return False
        expected *= x.shape[d]
    return True
