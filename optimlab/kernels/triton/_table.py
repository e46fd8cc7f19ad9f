"""The Triton backend's one table: per algorithm, what registration, the operator, the
launches and the AOT check need to know. Imports no Triton (``import optimlab`` reads it).

* :data:`ELEMENTWISE`: each elementwise kernel, i.e. the driver
  (``_elementwise.elementwise_kernel``) with one per-element op: its operands (roles, role
  0 first: its layout and dtype set the launch's), its constexpr flags, and which operand
  is the grad (the driver loads, unscales and negates it);
* :data:`ALGORITHMS`: each algorithm's update (kernel module and function), how it takes
  sparse grads, and the operator's operands: the state lists it reads and writes and the
  group's hyperparameters (``optimlab::triton_<algorithm>_``, :mod:`._ops`).
"""

from __future__ import annotations

from typing import NamedTuple

#: values each constexpr flag takes (AOT check); flags not named here: 0 or 1
FLAG_VALUES = {"WD_MODE": (0, 1, 2)}
#: the driver's op flag slots (``F0, F1, F2``): at most this many flags per op besides MAXIMIZE
N_FLAGS = 3
#: the driver's reference pointer arguments (``ref0 .. ref4``): at most this many roles
N_REFS = 5


class Elementwise(NamedTuple):
    """One elementwise kernel: the driver with the op ``_<name>`` (and ``_<name>_scalars``)
    of the kernel module ``module``."""

    module: str
    roles: tuple[str, ...]
    #: ``MAXIMIZE`` (the driver's: it negates the grad) and the op's own, in its argument order
    flags: tuple[str, ...] = ()
    #: the grad's role (-1: none): loaded and unscaled (written back with AMP) by the driver
    grad: int = 1
    #: roles the kernel only reads (never written back)
    reads: tuple[int, ...] = ()
    #: roles the optimizer holds from step to step (the launch site's plan, ``_launcher._Plan``)
    persistent: tuple[int, ...] = ()
    #: roles always in bfloat16, whatever the params' dtype (AOT check: their pointer type)
    bf16: tuple[int, ...] = ()

    def written(self, amp: bool) -> tuple[int, ...]:
        """The roles the kernel writes: all but the read-only ones, and the grad only when it
        unscales it (``amp``)."""
        return tuple(k for k in range(len(self.roles))
                     if k not in self.reads and (k != self.grad or amp))


_ADAM_FLAGS = ("MAXIMIZE", "WD_MODE")

ELEMENTWISE: dict[str, Elementwise] = {
    "adam": Elementwise("adam_family", ("param", "grad", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"),
                        _ADAM_FLAGS + ("AMSGRAD",), persistent=(0, 2, 3, 4)),
    "adamax": Elementwise("adam_family", ("param", "grad", "exp_avg", "exp_inf"), ("MAXIMIZE", "HAS_WD"),
                          persistent=(0, 2, 3)),
    "nadam": Elementwise("adam_family", ("param", "grad", "exp_avg", "exp_avg_sq"), _ADAM_FLAGS,
                         persistent=(0, 2, 3)),
    "radam": Elementwise("adam_family", ("param", "grad", "exp_avg", "exp_avg_sq"), _ADAM_FLAGS,
                         persistent=(0, 2, 3)),
    "sgd": Elementwise("sgd_family", ("param", "grad", "momentum_buffer"),
                       ("MAXIMIZE", "HAS_WD", "MOMENTUM", "NESTEROV"), persistent=(0, 2)),
    "asgd": Elementwise("sgd_family", ("param", "grad", "ax"), ("MAXIMIZE", "HAS_WD"), persistent=(0, 2)),
    "rprop": Elementwise("sgd_family", ("param", "grad", "prev", "step_size"), ("MAXIMIZE",),
                         persistent=(0, 2, 3)),
    "adagrad": Elementwise("adagrad_family", ("param", "grad", "sum"), ("MAXIMIZE", "HAS_WD"),
                           persistent=(0, 2)),
    "rmsprop": Elementwise("adagrad_family", ("param", "grad", "square_avg", "momentum_buffer", "grad_avg"),
                           ("MAXIMIZE", "HAS_WD", "MOMENTUM", "CENTERED"), persistent=(0, 2, 3, 4)),
    "adadelta": Elementwise("adagrad_family", ("param", "grad", "square_avg", "acc_delta"),
                            ("MAXIMIZE", "HAS_WD"), persistent=(0, 2, 3)),
    # Adafactor's 0-D/1-D params, and its last pass over every param
    "adafactor_vec": Elementwise("matrix_family", ("grad", "variance", "update"), ("MAXIMIZE",), grad=0),
    "adafactor_apply": Elementwise("matrix_family", ("param", "update"), ("HAS_WD",), grad=-1, reads=(1,)),
    # Muon: momentum (the update written in bf16 into the Newton–Schulz batch), then the apply
    "muon_momentum": Elementwise("matrix_family", ("momentum_buffer", "grad", "update"), ("NESTEROV",),
                                 bf16=(2,)),
    "muon_apply": Elementwise("matrix_family", ("param", "ortho"), grad=-1, reads=(1,), bf16=(1,)),
}

#: the hand-written kernels (reductions, row gathers: launched with ``_launcher.launch_raw``):
#: module -> [(kernel, number of roles, flags, {argument: pointer type "*.." or constexpr})]
RAW = {
    "adam_family": [("_sparse_adam_kernel", 5, ("MAXIMIZE",), {"row_ref": "*i64"})],
    "matrix_family": [
        ("_adafactor_row_kernel", 2, (), {"BLOCK": 32, "TILE": 64}),
        ("_adafactor_col_kernel", 4, ("MAXIMIZE",), {"BLOCK": 32, "TILE": 64}),
    ],
}


class Algorithm(NamedTuple):
    """An algorithm's Triton update: ``<module>.<algorithm>(group, params, grads, state)``."""

    module: str
    #: sparse grads: "dense" refuses them, "forloop" sends those params through the for-loop,
    #: "kernel" fuses them
    sparse: str
    #: the state lists the update reads and writes (every one it may get; absent: empty)
    state: tuple[str, ...]
    #: the group entries the update reads
    hparams: tuple[str, ...]
    #: an operator (traced by torch.compile / make_fx), or run behind a graph break (SparseAdam:
    #: sparse grads, and torch's Python-int step counters, which a tensor operator cannot take)
    operator: bool = True
    #: state created on its first step (SGD's momentum buffer): its missing tensors are made,
    #: uninitialised, before the operator (``_host.fresh_state``), which is told which are new
    fresh: str | None = None


_ADAM_HPARAMS = ("lr", "betas", "eps", "weight_decay", "maximize", "capturable", "decoupled_weight_decay")

ALGORITHMS: dict[str, Algorithm] = {
    "adam": Algorithm("adam_family", "dense", ("step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"),
                      _ADAM_HPARAMS + ("amsgrad",)),
    "adamax": Algorithm("adam_family", "dense", ("step", "exp_avg", "exp_inf"),
                        ("lr", "betas", "eps", "weight_decay", "maximize", "capturable")),
    "nadam": Algorithm("adam_family", "dense", ("step", "mu_product", "exp_avg", "exp_avg_sq"),
                       _ADAM_HPARAMS + ("momentum_decay",)),
    "radam": Algorithm("adam_family", "dense", ("step", "exp_avg", "exp_avg_sq"), _ADAM_HPARAMS),
    "sparse_adam": Algorithm("adam_family", "kernel", ("step", "exp_avg", "exp_avg_sq"),
                             ("lr", "betas", "eps", "maximize"), operator=False),
    "sgd": Algorithm("sgd_family", "forloop", ("momentum_buffer",),
                     ("lr", "momentum", "dampening", "weight_decay", "nesterov", "maximize"),
                     fresh="momentum_buffer"),
    "asgd": Algorithm("sgd_family", "dense", ("step", "eta", "mu", "ax"),
                      ("lr", "lambd", "alpha", "t0", "weight_decay", "maximize", "capturable")),
    "rprop": Algorithm("sgd_family", "dense", ("step", "prev", "step_size"), ("etas", "step_sizes", "maximize")),
    "adagrad": Algorithm("adagrad_family", "forloop", ("step", "sum"),
                         ("lr", "lr_decay", "weight_decay", "eps", "maximize", "capturable")),
    "rmsprop": Algorithm("adagrad_family", "dense", ("step", "square_avg", "momentum_buffer", "grad_avg"),
                         ("lr", "alpha", "eps", "weight_decay", "momentum", "centered", "maximize")),
    "adadelta": Algorithm("adagrad_family", "dense", ("step", "square_avg", "acc_delta"),
                          ("lr", "rho", "eps", "weight_decay", "maximize")),
    "adafactor": Algorithm("matrix_family", "dense", ("step", "row_var", "col_var", "variance"),
                           ("lr", "beta2_decay", "eps", "d", "weight_decay", "maximize")),
    "muon": Algorithm("matrix_family", "dense", ("momentum_buffer",),
                      ("lr", "weight_decay", "momentum", "nesterov", "ns_coefficients", "eps", "ns_steps",
                       "adjust_lr_fn")),
}
