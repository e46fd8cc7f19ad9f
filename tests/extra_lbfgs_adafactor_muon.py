"""Configurations torch's CPU database leaves out, for LBFGS, Adafactor and Muon."""

import torch

from optim_db import Config

T = torch.tensor

EXTRA = {
    "LBFGS": [
        Config("small history", dict(history_size=2)),
        Config("max_iter 1", dict(max_iter=1)),
        Config("max_iter, max_eval", dict(max_iter=7, max_eval=4)),
        Config("tolerance_change", dict(tolerance_change=1e-2)),
        Config("tolerance_grad stops at once", dict(tolerance_grad=1e3)),
        Config("strong_wolfe, small history", dict(line_search_fn="strong_wolfe", history_size=3)),
        # zoom phase moving the low end to the high end, interpolation with x1 > x2
        Config("strong_wolfe, lr 30, small history", dict(line_search_fn="strong_wolfe", lr=30.0, history_size=2, max_iter=5)),
        Config("strong_wolfe, tolerances", dict(line_search_fn="strong_wolfe", tolerance_grad=1e-3, tolerance_change=1e-4)),
        # line search cut short by max_eval (ls_iter == max_ls)
        Config("strong_wolfe, lr 0.01, max_eval 4", dict(line_search_fn="strong_wolfe", lr=0.01, max_eval=4)),
        Config("strong_wolfe, max_iter 4, max_eval 30", dict(line_search_fn="strong_wolfe", max_iter=4, max_eval=30)),
        Config("strong_wolfe, float64 Tensor lr", dict(line_search_fn="strong_wolfe", lr=T(0.5, dtype=torch.float64))),
        Config("strong_wolfe complex", dict(line_search_fn="strong_wolfe"), complex_param=True),
        Config("sparse grads", dict(), problem="sparse"),
    ],
    "Adafactor": [
        Config("Tensor lr", dict(lr=T(0.01))),
        Config("Tensor lr above rho", dict(lr=T(0.9), weight_decay=0.05)),
        Config("eps1 given, eps2", dict(eps=(1e-20, 1e-2))),
        Config("large eps1", dict(eps=(0.5, 1e-3))),
        Config("maximize, d, beta2_decay", dict(maximize=True, d=1.2, beta2_decay=-0.5, weight_decay=0.2, lr=0.5)),
        Config("beta2_decay 0", dict(beta2_decay=0.0)),
    ],
    "Muon": [
        Config("adjust_lr_fn original", dict(adjust_lr_fn="original")),
        Config("adjust_lr_fn match_rms_adamw", dict(adjust_lr_fn="match_rms_adamw", lr=0.02)),
        Config("nesterov=False", dict(nesterov=False)),
        Config("nesterov=False, momentum 0, no weight decay", dict(nesterov=False, momentum=0.0, weight_decay=0.0)),
        Config("ns params", dict(ns_steps=3, eps=1e-4, ns_coefficients=(2.0, -1.5, 0.5))),
        Config("ns_steps 0", dict(ns_steps=0)),
        Config("Tensor lr, match_rms_adamw", dict(lr=T(0.02), adjust_lr_fn="match_rms_adamw", weight_decay=0.3)),
    ],
}
