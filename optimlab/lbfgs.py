"""L-BFGS, as torch.optim.LBFGS implements it (heavily inspired by minFunc).

The algorithm is in the docstring of :class:`LBFGS`. As in torch, the whole state
lives under the first param, so checkpoints interoperate with torch both ways. The
iteration is registered as the ``forloop`` backend, the only one (it is driven by the
closure and works on the flattened params, not elementwise).
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import _dispatch
from ._dispatch import register
from ._docs import document
from .optimizer import Optimizer, _to_scalar
from ._validation import check_lr

__all__ = ["LBFGS"]


def _cubic_interpolate(x1, f1, g1, x2, f2, g2, bounds=None):
    """Minimizer of the cubic through (x1, f1, g1) and (x2, f2, g2), clamped to ``bounds``."""
    xmin_bound, xmax_bound = bounds if bounds is not None else ((x1, x2) if x1 <= x2 else (x2, x1))
    d1 = g1 + g2 - 3 * (f1 - f2) / (x1 - x2)
    d2_square = d1**2 - g1 * g2
    if not d2_square >= 0:  # (NaN included, as torch)
        return (xmin_bound + xmax_bound) / 2.0
    d2 = d2_square.sqrt()
    if x1 <= x2:
        min_pos = x2 - (x2 - x1) * ((g2 + d2 - d1) / (g2 - g1 + 2 * d2))
    else:
        min_pos = x1 - (x1 - x2) * ((g1 + d2 - d1) / (g1 - g2 + 2 * d2))
    return min(max(min_pos, xmin_bound), xmax_bound)


def _strong_wolfe(obj_func, x, t, d, f, g, gtd, c1=1e-4, c2=0.9, tolerance_change=1e-9, max_ls=25):
    """Line search for a step satisfying the strong Wolfe conditions (torch's lswolfe port).

    Returns ``(f_new, g_new, t, func_evals)``.
    """
    cont = torch.contiguous_format
    d_norm = d.abs().max()
    g = g.clone(memory_format=cont)
    f_new, g_new = obj_func(x, t, d)
    ls_func_evals = 1
    gtd_new = g_new.dot(d)

    # bracket an interval containing a point satisfying the Wolfe criteria
    t_prev, f_prev, g_prev, gtd_prev = 0, f, g, gtd
    done = False
    ls_iter = 0
    while ls_iter < max_ls:
        armijo_fails = f_new > (f + c1 * t * gtd) or (ls_iter > 1 and f_new >= f_prev)
        if not armijo_fails and abs(gtd_new) <= -c2 * gtd:  # strong Wolfe holds at t
            bracket, bracket_f, bracket_g, done = [t], [f_new], [g_new], True
            break
        if armijo_fails or gtd_new >= 0:
            bracket, bracket_f = [t_prev, t], [f_prev, f_new]
            bracket_g = [g_prev, g_new.clone(memory_format=cont)]
            bracket_gtd = [gtd_prev, gtd_new]
            break
        # interpolate
        min_step, max_step = t + 0.01 * (t - t_prev), t * 10
        tmp = t
        t = _cubic_interpolate(t_prev, f_prev, gtd_prev, t, f_new, gtd_new, bounds=(min_step, max_step))
        t_prev, f_prev, g_prev, gtd_prev = tmp, f_new, g_new.clone(memory_format=cont), gtd_new
        f_new, g_new = obj_func(x, t, d)
        ls_func_evals += 1
        gtd_new = g_new.dot(d)
        ls_iter += 1

    if ls_iter == max_ls:  # reached the maximum number of iterations
        bracket, bracket_f, bracket_g = [0, t], [f, f_new], [g, g_new]

    # zoom phase: refine the bracket until a point satisfies the criteria
    insuf_progress = False
    low_pos, high_pos = (0, 1) if bracket_f[0] <= bracket_f[-1] else (1, 0)
    while not done and ls_iter < max_ls:
        if abs(bracket[1] - bracket[0]) * d_norm < tolerance_change:
            break
        t = _cubic_interpolate(bracket[0], bracket_f[0], bracket_gtd[0], bracket[1], bracket_f[1], bracket_gtd[1])
        # too close to a boundary (twice in a row, or outside): move 10% inside
        hi, lo = max(bracket), min(bracket)
        eps = 0.1 * (hi - lo)
        if min(hi - t, t - lo) < eps:
            if insuf_progress or t >= hi or t <= lo:
                t = hi - eps if abs(t - hi) < abs(t - lo) else lo + eps
                insuf_progress = False
            else:
                insuf_progress = True
        else:
            insuf_progress = False

        f_new, g_new = obj_func(x, t, d)
        ls_func_evals += 1
        gtd_new = g_new.dot(d)
        ls_iter += 1

        armijo_fails = f_new > (f + c1 * t * gtd) or f_new >= bracket_f[low_pos]
        if armijo_fails:  # or not lower than the lowest point: t replaces the high end
            new_pos = high_pos
        else:
            if abs(gtd_new) <= -c2 * gtd:
                done = True  # Wolfe conditions satisfied
            elif gtd_new * (bracket[high_pos] - bracket[low_pos]) >= 0:
                # old low becomes new high
                bracket[high_pos] = bracket[low_pos]
                bracket_f[high_pos] = bracket_f[low_pos]
                bracket_g[high_pos] = bracket_g[low_pos]
                bracket_gtd[high_pos] = bracket_gtd[low_pos]
            new_pos = low_pos
        bracket[new_pos], bracket_f[new_pos] = t, f_new
        bracket_g[new_pos] = g_new.clone(memory_format=cont)
        bracket_gtd[new_pos] = gtd_new
        if armijo_fails:
            low_pos, high_pos = (0, 1) if bracket_f[0] <= bracket_f[1] else (1, 0)

    return bracket_f[low_pos], bracket_g[low_pos], bracket[low_pos], ls_func_evals


@register("lbfgs", "forloop")
def _lbfgs_forloop(opt: "LBFGS", group: dict, closure):
    """Up to ``max_iter`` L-BFGS iterations (the body of ``LBFGS.step``); returns the first loss."""
    lr = _to_scalar(group["lr"])
    max_iter, max_eval = group["max_iter"], group["max_eval"]
    tolerance_grad, tolerance_change = group["tolerance_grad"], group["tolerance_change"]
    line_search_fn, history_size = group["line_search_fn"], group["history_size"]

    # Global state, registered under the first param (helps casting in load_state_dict).
    state = opt.state[opt._params[0]]
    state.setdefault("func_evals", 0)
    state.setdefault("n_iter", 0)

    orig_loss = closure()
    loss = float(orig_loss)
    current_evals = 1
    state["func_evals"] += 1
    flat_grad = opt._gather_flat_grad()
    opt_cond = flat_grad.abs().max() <= tolerance_grad
    if opt_cond:
        return orig_loss

    d, t = state.get("d"), state.get("t")
    old_dirs, old_stps, ro = state.get("old_dirs"), state.get("old_stps"), state.get("ro")
    H_diag, prev_flat_grad, prev_loss = state.get("H_diag"), state.get("prev_flat_grad"), state.get("prev_loss")

    n_iter = 0
    while n_iter < max_iter:
        n_iter += 1
        state["n_iter"] += 1

        # descent direction
        if state["n_iter"] == 1:
            d = flat_grad.neg()
            old_dirs, old_stps, ro, H_diag = [], [], [], 1
        else:
            y = flat_grad.sub(prev_flat_grad)
            s = d.mul(t)
            ys = y.dot(s)
            if ys > 1e-10:  # update the memory
                if len(old_dirs) == history_size:
                    old_dirs.pop(0)
                    old_stps.pop(0)
                    ro.pop(0)
                old_dirs.append(y)
                old_stps.append(s)
                ro.append(1.0 / ys)
                H_diag = ys / y.dot(y)
            num_old = len(old_dirs)
            if "al" not in state:
                state["al"] = [None] * history_size
            al = state["al"]
            # two-loop recursion collapsed into one buffer
            q = flat_grad.neg()
            for i in range(num_old - 1, -1, -1):
                al[i] = old_stps[i].dot(q) * ro[i]
                q.add_(old_dirs[i], alpha=-al[i])
            d = r = torch.mul(q, H_diag)
            for i in range(num_old):
                be_i = old_dirs[i].dot(r) * ro[i]
                r.add_(old_stps[i], alpha=al[i] - be_i)

        if prev_flat_grad is None:
            prev_flat_grad = flat_grad.clone(memory_format=torch.contiguous_format)
        else:
            prev_flat_grad.copy_(flat_grad)
        prev_loss = loss

        # step length
        t = min(1.0, 1.0 / flat_grad.abs().sum()) * lr if state["n_iter"] == 1 else lr
        gtd = flat_grad.dot(d)  # directional derivative
        if gtd > -tolerance_change:
            break

        ls_func_evals = 0
        if line_search_fn is not None:
            if line_search_fn != "strong_wolfe":
                raise RuntimeError("only 'strong_wolfe' is supported")
            x_init = opt._clone_param()

            def obj_func(x, t, d):
                return opt._directional_evaluate(closure, x, t, d)

            loss, flat_grad, t, ls_func_evals = _strong_wolfe(
                obj_func, x_init, t, d, loss, flat_grad, gtd, max_ls=max_eval - current_evals
            )
            opt._add_grad(t, d)
            opt_cond = flat_grad.abs().max() <= tolerance_grad
        else:
            opt._add_grad(t, d)  # fixed step
            if n_iter != max_iter:  # no re-evaluation after the last iteration
                with torch.enable_grad():
                    loss = closure()
                loss = float(loss)  # outside grad mode, as torch (no requires_grad warning)
                flat_grad = opt._gather_flat_grad()
                opt_cond = flat_grad.abs().max() <= tolerance_grad
                ls_func_evals = 1
        current_evals += ls_func_evals
        state["func_evals"] += ls_func_evals

        if (
            n_iter == max_iter
            or current_evals >= max_eval
            or opt_cond
            or d.mul(t).abs().max() <= tolerance_change  # lack of progress
            or abs(loss - prev_loss) < tolerance_change
        ):
            break

    state.update(
        d=d, t=t, old_dirs=old_dirs, old_stps=old_stps, ro=ro,
        H_diag=H_diag, prev_flat_grad=prev_flat_grad, prev_loss=prev_loss,
    )
    return orig_loss


@document(backends=("forloop",))
class LBFGS(Optimizer, torch.optim.LBFGS):
    """L-BFGS (limited-memory BFGS), as ``torch.optim.LBFGS`` implements it.

    A drop-in for ``torch.optim.LBFGS`` (and a subclass of it): same signature,
    defaults, errors and ``state_dict()`` layout, so checkpoints load both ways.
    Heavily inspired by minFunc, as torch's. ``step(closure)`` requires a closure
    that recomputes the loss (and its gradients) and returns it.

    Each ``step(closure)`` runs up to ``max_iter`` iterations on the flattened
    params ``x`` (complex params as ``view_as_real``), with ``g`` the flat gradient:

        d   = -H g          two-loop recursion over the last history_size pairs
                            (y = g - g_prev, s = t * d_prev), kept when y.s > 1e-10,
                            with the initial Hessian H_diag = y.s / y.y
        t   = lr            (first iteration ever: min(1, 1 / |g|_1) * lr)
        t   = strong Wolfe line search from t along d   (line_search_fn="strong_wolfe")
        x   = x + t * d

    stopping after ``max_eval`` closure calls, when ``max|g| <= tolerance_grad``, or
    when the progress falls below ``tolerance_change``.

    Warning:
        One param group only (per-parameter options are refused), all params on one
        device. Memory grows with ``param_bytes * (history_size + 1)``. Cannot be
        driven by ``torch.amp.GradScaler`` (as torch's LBFGS: GradScaler refuses
        closures).

    Args:
        params (iterable): an iterable of parameters (or named parameters) to
            optimize, all in one param group.
        lr (float, Tensor, optional): learning rate: the initial step length
            (default: 1)
        max_iter (int, optional): maximal number of iterations per ``step()``
            (default: 20)
        max_eval (int, optional): maximal number of closure calls per ``step()``;
            ``None`` means ``max_iter * 5 // 4`` (default: None)
        tolerance_grad (float, optional): termination tolerance on first order
            optimality, ``max|g|`` (default: 1e-7)
        tolerance_change (float, optional): termination tolerance on changes of
            the loss and of the params (default: 1e-9)
        history_size (int, optional): number of ``(y, s)`` pairs kept
            (default: 100)
        line_search_fn (str, optional): ``"strong_wolfe"`` or ``None`` (a fixed
            step of length ``t``) (default: None)

    {backends}

    State:
        As ``torch.optim.LBFGS`` keeps it, all under ``state[first param]``:
        ``func_evals`` and ``n_iter`` (ints), ``d``, ``t``, ``old_dirs``,
        ``old_stps``, ``ro``, ``H_diag``, ``prev_flat_grad``, ``prev_loss`` and
        ``al``.

    Example:
        >>> opt = optimlab.LBFGS(model.parameters(), line_search_fn="strong_wolfe")
        >>> def closure():
        ...     opt.zero_grad()
        ...     loss = loss_fn(model(inputs), targets)
        ...     loss.backward()
        ...     return loss
        >>> opt.step(closure)
    """

    algorithm = "lbfgs"
    elementwise = False  # reductions / matrix functions over whole tensors

    def __init__(
        self,
        params,
        lr: float | Tensor = 1,
        max_iter: int = 20,
        max_eval: int | None = None,
        tolerance_grad: float = 1e-7,
        tolerance_change: float = 1e-9,
        history_size: int = 100,
        line_search_fn: str | None = None,
    ) -> None:
        check_lr(lr)
        if max_eval is None:
            max_eval = max_iter * 5 // 4
        defaults = dict(
            lr=lr,
            max_iter=max_iter,
            max_eval=max_eval,
            tolerance_grad=tolerance_grad,
            tolerance_change=tolerance_change,
            history_size=history_size,
            line_search_fn=line_search_fn,
        )
        super().__init__(params, defaults)
        if len(self.param_groups) != 1:
            raise ValueError("LBFGS doesn't support per-parameter options (parameter groups)")
        self._params = self.param_groups[0]["params"]
        self._numel_cache = None

    # ---- flat views of the params and grads (complex as real) -------------------------
    def _numel(self):
        if self._numel_cache is None:
            self._numel_cache = sum(2 * p.numel() if torch.is_complex(p) else p.numel() for p in self._params)
        return self._numel_cache

    def _gather_flat_grad(self):
        views = []
        for p in self._params:
            if p.grad is None:
                view = p.new(p.numel()).zero_()
            elif p.grad.is_sparse:
                view = p.grad.to_dense().view(-1)
            else:
                view = p.grad.view(-1)
            views.append(torch.view_as_real(view).view(-1) if torch.is_complex(view) else view)
        return torch.cat(views, 0)

    def _add_grad(self, step_size, update) -> None:
        offset = 0
        for p in self._params:
            if torch.is_complex(p):
                p = torch.view_as_real(p)
            numel = p.numel()
            p.add_(update[offset : offset + numel].view_as(p), alpha=step_size)
            offset += numel
        if offset != self._numel():
            raise AssertionError(f"Expected offset {offset} to equal {self._numel()}")

    def _clone_param(self):
        return [p.clone(memory_format=torch.contiguous_format) for p in self._params]

    def _set_param(self, params_data) -> None:
        for p, pdata in zip(self._params, params_data, strict=True):
            p.copy_(pdata)

    def _directional_evaluate(self, closure, x, t, d):
        self._add_grad(t, d)
        loss = float(closure())
        flat_grad = self._gather_flat_grad()
        self._set_param(x)
        return loss, flat_grad

    @torch.no_grad()
    def step(self, closure):  # type: ignore[override]
        """Perform a single optimization step.

        Args:
            closure (Callable): A closure that reevaluates the model
                and returns the loss.
        """
        if len(self.param_groups) != 1:
            raise AssertionError(f"Expected exactly one param_group, but got {len(self.param_groups)}")
        closure = torch.enable_grad()(closure)  # the closure always runs with grad enabled
        group = self.param_groups[0]
        choice = _dispatch.resolve(self.algorithm, group, list(group["params"]))
        return _dispatch.kernel(self.algorithm, choice.name)(self, group, closure)
