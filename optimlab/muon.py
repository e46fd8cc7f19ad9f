"""Muon: momentum orthogonalized by Newton–Schulz, for 2-D params.

The update rule is in the docstring of :class:`Muon`. The orthogonalization and the
lr adjustment live in :func:`zeropower_via_newtonschulz` and :func:`adjust_lr`,
shared by every backend (the orthogonalization accepts a leading batch dimension
for batched backends).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ._dispatch import register
from ._docs import document
from .optimizer import Optimizer, _to_scalar

__all__ = ["Muon", "zeropower_via_newtonschulz", "adjust_lr", "check_ns_args"]

# Keller Jordan's constants (https://kellerjordan.github.io/posts/muon/), as torch.
EPS = 1e-7
DEFAULT_A, DEFAULT_B, DEFAULT_C = 3.4445, -4.7750, 2.0315
DEFAULT_NS_STEPS = 5


def check_ns_args(ns_coefficients, ns_steps: int) -> None:
    """torch's errors for Newton–Schulz arguments (raised by torch inside the first update)."""
    if ns_steps >= 100:
        raise ValueError("Number of steps must be less than 100 for computational efficiency")
    if len(ns_coefficients) != 3:
        raise ValueError("Coefficients must be a tuple of exactly 3 values")


def zeropower_via_newtonschulz(grad: Tensor, ns_coefficients, ns_steps: int, eps: float) -> Tensor:
    """Approximately orthogonalize ``grad`` (``(m, n)`` or a batch ``(k, m, n)``) in bfloat16.

    Same ops as torch's ``_zeropower_via_newtonschulz`` for a 2-D input (``addmm``);
    a batch uses ``baddbmm`` and per-matrix norms. Returns a bfloat16 tensor.
    """
    a, b, c = ns_coefficients
    batched = grad.dim() == 3
    tall = grad.size(-2) > grad.size(-1)
    x = grad.bfloat16()
    if tall:
        x = x.mT
    norm = x.norm(dim=(-2, -1), keepdim=True) if batched else x.norm()
    x.div_(norm.clamp(min=eps))
    mm = torch.baddbmm if batched else torch.addmm
    for _ in range(ns_steps):
        gram = x @ x.mT
        gram_update = mm(gram, gram, gram, beta=b, alpha=c)
        x = mm(x, gram_update, x, beta=a)
    return x.mT if tall else x


def adjust_lr(lr, adjust_lr_fn: str | None, param_shape) -> float | Tensor:
    """The shape-dependent learning rate Muon applies to the orthogonalized update."""
    rows, cols = param_shape[:2]
    if adjust_lr_fn is None or adjust_lr_fn == "original":
        ratio = math.sqrt(max(1, rows / cols))
    elif adjust_lr_fn == "match_rms_adamw":
        ratio = 0.2 * math.sqrt(max(rows, cols))
    else:
        ratio = 1.0
    return lr * ratio


@register("muon", "forloop")
def _muon_forloop(group, params, grads, state):
    lr, wd, momentum = _to_scalar(group["lr"]), group["weight_decay"], group["momentum"]
    for param, grad, buf in zip(params, grads, state["momentum_buffer"]):
        buf.lerp_(grad, 1 - momentum)
        update = grad.lerp(buf, momentum) if group["nesterov"] else buf
        update = zeropower_via_newtonschulz(update, group["ns_coefficients"], group["ns_steps"], group["eps"])
        param.mul_(1 - lr * wd)
        param.add_(update, alpha=-adjust_lr(lr, group["adjust_lr_fn"], param.shape))


@document(backends=("forloop", "triton"))
class Muon(Optimizer, torch.optim.Muon):
    """Muon (Jordan et al., 2024): momentum orthogonalized by Newton–Schulz.

    A drop-in for ``torch.optim.Muon`` (and a subclass of it): same signature,
    defaults, errors and ``state_dict()`` layout, so checkpoints load both ways.
    Muon takes 2-D params only (the weight matrices of hidden layers); optimize
    biases, embeddings and other params with another optimizer such as AdamW.

    Update rule, per matrix param at each step (g = grad):

        B     = lerp(B, g, 1 - momentum)               (B = momentum_buffer)
        U     = lerp(g, B, momentum) if nesterov else B
        O     = NS(U)                                  (Newton–Schulz, in bfloat16)
        p     = p * (1 - lr * wd)                      (decoupled weight decay)
        p     = p - adjust_lr(lr, shape) * O

    ``NS`` runs ``ns_steps`` quintic iterations ``X <- a X + (b A + c A^2) X`` with
    ``A = X X^T`` on ``X = U / max(||U||_F, eps)`` (transposed so it is wide).
    For an ``A x B`` param, ``adjust_lr`` is ``lr * sqrt(max(1, A/B))``
    ("original", Keller Jordan's) or ``lr * 0.2 * sqrt(max(A, B))``
    ("match_rms_adamw", Moonshot's, which matches AdamW's update RMS so that
    AdamW's lr and weight decay can be reused).

    Args:
        {params}
        lr (float, Tensor, optional): learning rate (default: 1e-3)
        weight_decay (float, optional): decoupled weight decay coefficient ``wd``
            (default: 0.1)
        momentum (float, optional): momentum factor (default: 0.95)
        nesterov (bool, optional): Nesterov momentum (default: True)
        ns_coefficients (tuple[float, float, float], optional): the coefficients
            ``(a, b, c)`` of the Newton–Schulz polynomial
            (default: (3.4445, -4.7750, 2.0315))
        eps (float, optional): term that guards the normalization by
            ``||U||_F`` (default: 1e-7)
        ns_steps (int, optional): number of Newton–Schulz iterations (default: 5)
        adjust_lr_fn (str, optional): ``"original"`` or ``"match_rms_adamw"``;
            ``None`` means ``"original"`` (default: None)

    {backends}

    State:
        ``state[p]`` for each param ``p``, as ``torch.optim.Muon`` keeps it,
        created at its first step: ``momentum_buffer`` (B, shaped like ``p``).
    """

    algorithm = "muon"
    elementwise = False  # reductions / matrix functions over whole tensors
    complex_as_real = False  # refused in _check_group, as torch refuses them

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        weight_decay: float = 0.1,
        momentum: float = 0.95,
        nesterov: bool = True,
        ns_coefficients: tuple[float, float, float] = (DEFAULT_A, DEFAULT_B, DEFAULT_C),
        eps: float = EPS,
        ns_steps: int = DEFAULT_NS_STEPS,
        adjust_lr_fn: str | None = None,
    ) -> None:
        if isinstance(lr, Tensor) and lr.numel() != 1:
            raise ValueError("Tensor lr must be 1-element")
        if not 0.0 <= lr:
            raise ValueError(f"Learning rate should be >= 0 but is: {lr}")
        if not 0.0 <= momentum:
            raise ValueError(f"momentum should be >= 0 but is: {momentum}")
        if not 0.0 <= weight_decay:
            raise ValueError(f"weight decay should be >= 0 but is: {weight_decay}")
        if adjust_lr_fn is not None and adjust_lr_fn not in ["original", "match_rms_adamw"]:
            raise ValueError(f"Adjust learning rate function {adjust_lr_fn} is not supported")
        defaults = dict(
            lr=lr,
            weight_decay=weight_decay,
            momentum=momentum,
            nesterov=nesterov,
            ns_coefficients=ns_coefficients,
            eps=eps,
            ns_steps=ns_steps,
            adjust_lr_fn=adjust_lr_fn,
        )
        super().__init__(params, defaults)
        for group in self.param_groups:
            for p in group["params"]:
                if p.ndim != 2:
                    raise ValueError(
                        f"Muon only supports 2D parameters whereas we found a parameter with size: {p.size()}"
                    )

    def _init_state(self, group, p):
        return {"momentum_buffer": torch.zeros_like(p.grad, memory_format=torch.preserve_format)}

    def _state_keys(self, group):
        return ("momentum_buffer",)

    def _check_group(self, group, params):
        # torch's order: per param complex then sparse (while gathering), then per
        # param in the update the grad's rank and, at the first, the NS arguments.
        for p in params:
            if torch.is_complex(p):
                raise RuntimeError("Muon does not support complex parameters")
            if p.grad.is_sparse:
                raise RuntimeError("Muon does not support sparse gradients")
        for i, p in enumerate(params):
            if p.grad.ndim != 2:
                raise ValueError("Param gradient must be a 2D matrix")
            if i == 0:
                check_ns_args(group["ns_coefficients"], group["ns_steps"])
