"""SparseAdam: Adam masked to the rows a sparse gradient touches.

The update rule is in the docstring of :class:`SparseAdam`. Its ``step_size`` is
computed once by :func:`sparse_adam_step_size`. As in torch, ``step`` is a Python
int, counted even when a grad has no entries (whose update is then skipped), and
there is no foreach implementation (torch has none).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ._dispatch import register
from ._docs import document
from .optimizer import Optimizer, _to_scalar, zeros_like
from ._validation import check_betas

__all__ = ["SparseAdam"]


def sparse_adam_step_size(lr, beta1, beta2, step):
    """``lr * sqrt(1 - beta2^step) / (1 - beta1^step)`` (a Tensor for Tensor lr)."""
    return lr * math.sqrt(1 - beta2**step) / (1 - beta1**step)


@register("sparse_adam", "forloop")
def _sparse_adam_forloop(group, params, grads, state):
    lr, (beta1, beta2), eps = _to_scalar(group["lr"]), group["betas"], group["eps"]
    steps = state["step"]
    for i, param in enumerate(params):
        steps[i] += 1  # counted before the empty-grad skip, as torch does
        grad = (-grads[i] if group.get("maximize", False) else grads[i]).coalesce()
        indices, values = grad._indices(), grad._values()
        if values.numel() == 0:
            continue

        def make_sparse(v):
            if indices.dim() == 0 or v.dim() == 0:
                return grad.new().resize_as_(grad)
            return grad.new(indices, v, grad.size())

        exp_avg, exp_avg_sq = state["exp_avg"][i], state["exp_avg_sq"][i]
        old_exp_avg = exp_avg.sparse_mask(grad)._values()
        exp_avg_update = values.sub(old_exp_avg).mul_(1 - beta1)
        exp_avg.add_(make_sparse(exp_avg_update))
        old_exp_avg_sq = exp_avg_sq.sparse_mask(grad)._values()
        exp_avg_sq_update = values.pow(2).sub_(old_exp_avg_sq).mul_(1 - beta2)
        exp_avg_sq.add_(make_sparse(exp_avg_sq_update))
        # the new moments on the touched entries, by dense addition (no second sparse_mask)
        numer = exp_avg_update.add_(old_exp_avg)
        denom = exp_avg_sq_update.add_(old_exp_avg_sq).sqrt_().add_(eps)
        step_size = sparse_adam_step_size(lr, beta1, beta2, steps[i])
        param.add_(make_sparse(-step_size * numer.div_(denom)))


@document(backends=("forloop", "triton"))
class SparseAdam(Optimizer, torch.optim.SparseAdam):
    """Adam for sparse gradients (e.g. ``nn.Embedding(sparse=True)``).

    A drop-in for ``torch.optim.SparseAdam`` (and a subclass of it): same
    signature, defaults, errors and ``state_dict()`` layout, so checkpoints load
    both ways. Only sparse gradients are accepted, and params must be dense and
    real.

    Update rule, at step t, for the entries present in the coalesced sparse grad g
    (g = -grad if maximize); all other entries of the params and moments are left
    as they are:

        m  = m + (1 - beta1) * (g - m)
        v  = v + (1 - beta2) * (g^2 - v)
        p  = p - step_size * m / (sqrt(v) + eps)

    with ``step_size = lr * sqrt(1 - beta2^t) / (1 - beta1^t)``.

    Args:
        {params}
        lr (float, Tensor, optional): learning rate (default: 1e-3)
        betas (tuple[float, float], optional): ``(beta1, beta2)``, the coefficients
            of the running averages of the gradient and of its square
            (default: (0.9, 0.999))
        eps (float, optional): term added to the denominator for numerical
            stability (default: 1e-8)
        {maximize}

    {backends}

    State:
        ``state[p]`` for each param ``p``, as ``torch.optim.SparseAdam`` keeps it,
        created at its first step: ``step`` (a Python int, counted even when the
        grad has no entries), ``exp_avg`` (m) and ``exp_avg_sq`` (v), shaped like
        ``p``.
    """

    algorithm = "sparse_adam"
    complex_as_real = False  # complex params are refused at construction

    def __init__(
        self,
        params,
        lr: float | Tensor = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        maximize: bool = False,
    ) -> None:
        if isinstance(lr, Tensor) and lr.numel() != 1:
            raise ValueError("Tensor lr must be 1-element")
        if not 0.0 < lr:
            raise ValueError(f"Invalid learning rate: {lr}")
        if not 0.0 < eps:
            raise ValueError(f"Invalid epsilon value: {eps}")
        check_betas(betas)
        defaults = dict(lr=lr, betas=betas, eps=eps, maximize=maximize)
        super().__init__(params, defaults)
        where = [
            (i, j, p) for i, g in enumerate(self.param_groups) for j, p in enumerate(g["params"])
        ]
        sparse = [[i, j] for i, j, p in where if p.is_sparse]
        if sparse:
            raise ValueError(
                f"Sparse params at indices {sparse}: SparseAdam requires dense parameter tensors"
            )
        complex_ = [[i, j] for i, j, p in where if p.is_complex()]
        if complex_:
            raise ValueError(
                f"Complex params at indices {complex_}: SparseAdam does not support complex parameters"
            )

    rebound_state = frozenset({"step"})  # a Python int, as in torch: updates rebind it

    def _init_state(self, group, p):
        return {"step": 0, "exp_avg": zeros_like(p), "exp_avg_sq": zeros_like(p)}

    def _state_keys(self, group):
        return ("step", "exp_avg", "exp_avg_sq")

    def _check_group(self, group, params):
        if any(not p.grad.is_sparse for p in params):
            raise RuntimeError(
                "SparseAdam does not support dense gradients, please consider Adam instead"
            )

    # torch's SparseAdam keeps ``step`` a Python int and adds no group defaults:
    # skip optimlab's generic conversion of old checkpoints.
    def __setstate__(self, state):
        torch.optim.Optimizer.__setstate__(self, state)
