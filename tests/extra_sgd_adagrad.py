"""Configurations of SGD, Adagrad and SparseAdam that torch's CPU OptimizerInfo database leaves out.

Sparse grads with weight decay are not listed: torch raises at the first step,
and test_state_dict_interop only skips configurations torch refuses to construct.
"""

import torch
from optim_db import Config

T = torch.tensor

EXTRA = {
    "SGD": [
        Config("nesterov, no weight_decay", dict(momentum=0.9, nesterov=True)),
        Config("nesterov, maximize", dict(momentum=0.9, nesterov=True, maximize=True)),
        Config("momentum, dampening, maximize, weight_decay",
               dict(momentum=0.8, dampening=0.3, maximize=True, weight_decay=0.1)),
        Config("Tensor lr, nesterov", dict(lr=T(0.01), momentum=0.9, nesterov=True, weight_decay=0.1)),
        Config("1-element Tensor lr, momentum", dict(lr=T([0.02]), momentum=0.5)),
        Config("Tensor weight_decay, momentum", dict(weight_decay=T(0.1), momentum=0.9)),
        Config("complex, nesterov, weight_decay",
               dict(lr=0.01, momentum=0.9, nesterov=True, weight_decay=0.1), complex_param=True),
        Config("complex, Tensor lr, dampening, maximize",
               dict(lr=T(0.01), momentum=0.9, dampening=0.5, maximize=True), complex_param=True),
        Config("sparse", dict(lr=0.1), problem="sparse"),
        Config("sparse, momentum, dampening", dict(lr=0.1, momentum=0.9, dampening=0.2), problem="sparse"),
        Config("sparse, nesterov", dict(lr=0.1, momentum=0.9, nesterov=True), problem="sparse"),
        Config("sparse, nesterov, maximize, Tensor lr",
               dict(lr=T(0.05), momentum=0.9, nesterov=True, maximize=True), problem="sparse"),
    ],
    "Adagrad": [
        Config("maximize, no weight_decay", dict(maximize=True)),
        Config("Tensor lr, lr_decay, weight_decay", dict(lr=T(0.05), lr_decay=0.3, weight_decay=0.1)),
        Config("initial_accumulator_value, lr_decay, maximize",
               dict(lr=0.1, initial_accumulator_value=0.5, lr_decay=0.2, maximize=True)),
        Config("complex, all options",
               dict(lr=0.1, lr_decay=0.3, weight_decay=0.1, initial_accumulator_value=0.2, maximize=True),
               complex_param=True),
        Config("complex, Tensor lr", dict(lr=T(0.05)), complex_param=True),
        Config("sparse", dict(lr=0.1), problem="sparse"),
        Config("sparse, lr_decay, initial_accumulator_value, maximize",
               dict(lr=0.1, lr_decay=0.5, initial_accumulator_value=0.3, maximize=True), problem="sparse"),
        Config("sparse, Tensor lr", dict(lr=T(0.05), lr_decay=0.1), problem="sparse"),
    ],
    "SparseAdam": [
        Config("betas, eps", dict(lr=0.02, betas=(0.8, 0.95), eps=1e-6)),
        Config("maximize, Tensor lr", dict(lr=T(0.01), maximize=True)),
        Config("1-element Tensor lr", dict(lr=T([0.03]), betas=(0.5, 0.9))),
    ],
}
