"""Checkpoints from torch.optim load into optimlab, including the older layout."""

import copy

import pytest
import torch

from helpers import Run, assert_same, checkpoint
from optim_db import Config, flags_for, implemented


def _old_layout(sd: dict) -> dict:
    """torch < 1.12 stored ``step`` as a Python number."""
    for st in sd["state"].values():
        if torch.is_tensor(st.get("step")):
            st["step"] = st["step"].item()
    return sd


@pytest.mark.parametrize("spec", [pytest.param(s, id=s.name) for s in implemented()])
def test_old_checkpoint_layout(spec):
    dtype, cfg = torch.float64, Config("default", {})
    flags = flags_for(spec, "forloop")
    ref = Run(spec, spec.torch_cls, cfg, dtype, flags)
    ref.steps(2)
    sd = _old_layout(checkpoint(ref.opt))
    resumed = []
    for cls in (spec.torch_cls, spec.ours_cls):
        params = [torch.nn.Parameter(p.detach().clone()) for p in ref.params]
        run = Run(spec, cls, cfg, dtype, flags, params=params)
        run.opt.load_state_dict(copy.deepcopy(sd))  # load_state_dict may alias tensors
        run.steps(2)
        resumed.append(run)
    assert_same(resumed[1], resumed[0], dtype)  # includes the type of ``step`` after loading
