"""Adadelta, Adamax and ASGD configurations torch's CPU OptimizerInfo database leaves out.

torch's CPU db has, for Adadelta: default, lr, weight_decay, maximize(+wd), rho+wd;
for Adamax: default, lr, weight_decay, maximize(+wd); for ASGD: default, lambd, lr,
t0=100, maximize(+wd), weight_decay. With 5 steps and t0 >= 100, ASGD's ``mu``
never leaves 1, so its averaging branch (for-loop: ``mu != 1``) is never run there.
Gaps filled here: Tensor lr (0-dim, 1-element 1-d, float64; torch accepts it with
foreach for these three), combined options, non-default betas/eps/alpha, ASGD with
a small t0 (``mu < 1`` after step 2), and complex params combined with options.

Not here (each needs a test the parity harness cannot express): ``differentiable``
(always the for-loop, so the foreach-backend case has no torch counterpart) and
``capturable`` (torch refuses it on the CPU at the first step).
"""

import torch

from optim_db import Config

T = torch.tensor

EXTRA = {
    "Adadelta": [
        Config("Tensor lr", dict(lr=T(0.5))),
        Config("Tensor lr, maximize, weight_decay", dict(lr=T([0.5]), maximize=True, weight_decay=0.1)),
        Config("rho, eps, maximize", dict(rho=0.5, eps=1e-3, maximize=True)),
        Config("rho=1 edge", dict(rho=1.0)),
        Config("complex, maximize, weight_decay", dict(maximize=True, weight_decay=0.1, lr=0.5),
               complex_param=True),
        Config("complex, Tensor lr", dict(lr=T(0.3), rho=0.8), complex_param=True),
    ],
    "Adamax": [
        Config("Tensor lr", dict(lr=T(0.1))),
        Config("Tensor lr float64, maximize, weight_decay",
               dict(lr=T(0.05, dtype=torch.float64), maximize=True, weight_decay=0.2)),
        Config("betas, large eps", dict(betas=(0.5, 0.8), eps=0.5)),
        Config("1-d Tensor lr, betas", dict(lr=T([0.1]), betas=(0.0, 0.5))),
        Config("complex, maximize, weight_decay", dict(maximize=True, weight_decay=0.1, lr=0.1),
               complex_param=True),
        Config("complex, Tensor lr, betas", dict(lr=T(0.1), betas=(0.7, 0.9)), complex_param=True),
    ],
    "ASGD": [
        Config("small t0 (mu < 1)", dict(t0=2)),
        Config("t0, lambd, alpha, lr", dict(t0=1, lambd=0.5, alpha=0.5, lr=0.1)),
        Config("t0, maximize, weight_decay", dict(t0=2.5, maximize=True, weight_decay=0.2, lr=0.05)),
        Config("Tensor lr", dict(lr=T(0.05))),
        Config("1-d Tensor lr, t0, lambd, weight_decay",
               dict(lr=T([0.05]), t0=2, lambd=0.1, weight_decay=0.1)),
        Config("Tensor lr float64, t0, maximize",
               dict(lr=T(0.05, dtype=torch.float64), t0=1, maximize=True)),
        Config("complex, t0, maximize, weight_decay",
               dict(t0=2, maximize=True, weight_decay=0.1, lambd=0.1, lr=0.05), complex_param=True),
        Config("complex, Tensor lr, t0", dict(lr=T(0.05), t0=1), complex_param=True),
    ],
}
