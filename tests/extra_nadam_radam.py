"""NAdam and RAdam configurations torch's CPU OptimizerInfo database leaves out.

torch's CPU db covers, for both: defaults, lr, weight_decay (coupled and
decoupled), maximize with coupled weight_decay (NAdam also momentum_decay, RAdam
eps). Missing on CPU: Tensor lr (torch accepts it with foreach too for these two,
and RAdam's foreach then keeps its step sizes as tensors), maximize without or with
decoupled weight decay, other betas, and complex params with options.

Left out: capturable=True (torch refuses it on the CPU at the first step;
test_errors checks that error), differentiable=True (its foreach run would resolve
to the for-loop; test_differentiable covers it). RAdam's rectified branch
(rho_t > 5) needs step >= 6, beyond the parity test's 5 steps.
"""

import torch

from optim_db import Config

T = torch.tensor

EXTRA = {
    "NAdam": [
        Config("Tensor lr", dict(lr=T(0.01))),
        Config("Tensor lr, decoupled", dict(lr=T(0.01), weight_decay=0.1, decoupled_weight_decay=True)),
        Config("maximize, decoupled", dict(maximize=True, weight_decay=0.2, decoupled_weight_decay=True)),
        Config("maximize, betas, eps", dict(maximize=True, betas=(0.5, 0.8), eps=1e-3, momentum_decay=0.1)),
        Config("zero momentum_decay", dict(momentum_decay=0.0, lr=0.01)),
        Config("complex, maximize, weight_decay", dict(maximize=True, weight_decay=0.1), complex_param=True),
        Config("complex, Tensor lr, decoupled",
               dict(lr=T(0.01), weight_decay=0.1, decoupled_weight_decay=True), complex_param=True),
    ],
    "RAdam": [
        Config("Tensor lr", dict(lr=T(0.01))),
        Config("Tensor lr, decoupled", dict(lr=T(0.01), weight_decay=0.1, decoupled_weight_decay=True)),
        Config("maximize, decoupled", dict(maximize=True, weight_decay=0.2, decoupled_weight_decay=True)),
        Config("maximize, betas", dict(maximize=True, betas=(0.5, 0.8), lr=0.01)),
        Config("complex, maximize, weight_decay", dict(maximize=True, weight_decay=0.1), complex_param=True),
        Config("complex, Tensor lr, decoupled",
               dict(lr=T(0.01), weight_decay=0.1, decoupled_weight_decay=True), complex_param=True),
    ],
}
