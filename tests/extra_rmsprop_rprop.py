"""RMSprop and Rprop configurations torch's CPU OptimizerInfo database leaves out.

torch's CPU db has, for RMSprop: default, lr, weight_decay, maximize, centered(+wd),
maximize+wd, centered+wd+momentum (+maximize); for Rprop: default, lr, etas,
step_sizes, maximize. Gaps filled here: Tensor lr, momentum without centering,
non-default alpha, complex params with every state buffer, and for Rprop large steps
whose signs flip and whose step sizes hit both clamps.

Not here (each needs a test the parity harness cannot express): ``differentiable``
(always the for-loop, so the foreach-backend case has no torch counterpart) and
``capturable`` (torch refuses it on the CPU at the first step, which the
state_dict interop test does not expect).
"""

import torch

from optim_db import Config

T = torch.tensor

# Large steps: signs flip, step sizes hit step_size_max and then step_size_min.
_FLIPPING = dict(lr=0.5, etas=(0.3, 1.9), step_sizes=(0.1, 0.8))

EXTRA = {
    "RMSprop": [
        Config("momentum, not centered, alpha", dict(momentum=0.9, alpha=0.9)),
        Config("centered, no weight_decay, maximize", dict(centered=True, maximize=True, alpha=0.5)),
        Config("Tensor lr", dict(lr=T(0.01))),
        Config("Tensor lr, centered, momentum, weight_decay",
               dict(lr=T(0.01), centered=True, momentum=0.5, weight_decay=0.1)),
        Config("centered, momentum, maximize, weight_decay, eps",
               dict(centered=True, momentum=0.5, maximize=True, weight_decay=0.2, eps=1e-3)),
        Config("complex, centered, momentum, weight_decay",
               dict(centered=True, momentum=0.9, weight_decay=0.1), complex_param=True),
        Config("complex, maximize, Tensor lr", dict(maximize=True, lr=T(0.02)), complex_param=True),
    ],
    "Rprop": [
        Config("Tensor lr", dict(lr=T(0.01))),
        Config("sign flips, both clamps", _FLIPPING),
        Config("sign flips, maximize", dict(_FLIPPING, maximize=True)),
        Config("complex, sign flips", _FLIPPING, complex_param=True),
        Config("complex, maximize, Tensor lr", dict(maximize=True, lr=T(0.02)), complex_param=True),
    ],
}
