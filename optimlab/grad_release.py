"""Gradient release: each parameter is updated during ``backward()``, and its grad freed at once.

A normal step keeps every gradient alive until ``opt.step()``: one param-sized buffer
per parameter at the peak of backward. With gradient release, a hook runs the
optimizer's update for a parameter as soon as its gradient is complete
(``Tensor.register_post_accumulate_grad_hook``) and then drops the gradient, so at
most the gradients still being accumulated are alive. The update is the optimizer's
own (same backend choice, scalars and state), so the numbers equal a normal step's.

Usage::

    opt = optimlab.AdamW(model.parameters(), lr=1e-3)
    release = optimlab.gradient_release(opt)
    sched = optimlab.lr_scheduler.CosineAnnealingLR(opt, T_max=1000)
    for batch in data:
        loss = model(batch).sum()
        loss.backward()          # params are updated here
        opt.step()               # harmless: no param has a grad left
        opt.zero_grad()
        sched.step()             # schedulers work as usual (they set each group's lr)
    release.remove()             # back to normal steps

``opt.state_dict()`` / ``load_state_dict()`` and checkpoints work as usual.

Not supported (by the nature of updating during backward): gradient clipping by the
global norm (the grads are gone when ``backward()`` returns; ``clip_grad_norm_`` then
sees none), gradient accumulation over several backward passes (each backward
updates), ``torch.amp.GradScaler`` (it must see every grad before any update),
``step(closure)`` (raises), LBFGS (raises), and optimizer step hooks
(``register_step_pre_hook`` / ``register_step_post_hook`` run only around
``opt.step()``, not around the per-parameter updates).
"""

from __future__ import annotations

import torch

from .optimizer import Optimizer

__all__ = ["GradientRelease", "gradient_release"]


class GradientRelease:
    """The hooks that update ``optimizer``'s params during backward; ``remove()`` ends it.

    Args:
        optimizer (optimlab.Optimizer): the optimizer whose params are released. Params
            added later with ``add_param_group`` are not covered (call ``remove()`` and
            start again).
    """

    def __init__(self, optimizer: Optimizer) -> None:
        if not isinstance(optimizer, Optimizer):
            raise TypeError(
                f"gradient_release needs an optimlab optimizer, got {type(optimizer).__name__}")
        if optimizer.algorithm == "lbfgs":
            raise ValueError("gradient_release does not support LBFGS: its step needs a closure "
                             "that re-evaluates the loss over all params")
        if any(g.get("differentiable") for g in optimizer.param_groups):
            raise ValueError("gradient_release does not support differentiable=True: the update "
                             "runs inside backward, outside any graph you could differentiate")
        if getattr(optimizer, "_gradient_release", None) is not None:
            raise RuntimeError("gradient release is already active on this optimizer")
        self.optimizer = optimizer
        self._handles = []
        for group in optimizer.param_groups:
            for p in group["params"]:
                if p.requires_grad:
                    self._handles.append(p.register_post_accumulate_grad_hook(self._hook(group)))
        optimizer._gradient_release = self

    def _hook(self, group: dict):
        optimizer = self.optimizer

        def update(p: torch.Tensor) -> None:
            with torch.no_grad():
                optimizer._step_params(group, [p])
            p.grad = None  # released: the point of it all

        return update

    def remove(self) -> None:
        """Remove the hooks: ``backward()`` leaves grads for ``opt.step()`` again."""
        for h in self._handles:
            h.remove()
        self._handles.clear()
        if getattr(self.optimizer, "_gradient_release", None) is self:
            self.optimizer._gradient_release = None


def gradient_release(optimizer: Optimizer) -> GradientRelease:
    """Update each of ``optimizer``'s params during ``backward()`` and free its grad at once.

    See the module docstring for what this supports. Returns the
    :class:`GradientRelease` handle; ``handle.remove()`` turns it off.
    """
    return GradientRelease(optimizer)
