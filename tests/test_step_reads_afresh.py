"""What a step reads from the optimizer is read afresh: changes between steps (grads, param
groups, checkpoints, state replaced or deleted) are seen as torch.optim sees them. Each case
changes something in optimlab and in torch.optim alike and checks that both go on
identically. (A guard for any caching of per-group plans between steps.)"""

import copy

import pytest
import torch

import optimlab


def _pair(name="Adam", n=3, **kw):
    torch.manual_seed(0)
    ours = [torch.nn.Parameter(torch.randn(4, 3, dtype=torch.float64)) for _ in range(n)]
    ref = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    return ours, ref, getattr(optimlab, name)(ours, **kw), getattr(torch.optim, name)(ref, **kw)


def _grads(ours, ref, skip=()):
    for i, (a, b) in enumerate(zip(ours, ref)):
        if i in skip:
            a.grad = b.grad = None
        else:
            g = torch.randn_like(a)
            a.grad, b.grad = g.clone(), g.clone()


def _step(ours, ref, o_opt, r_opt, skip=()):
    _grads(ours, ref, skip)
    o_opt.step()
    r_opt.step()
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("change", [
    "grads None and back", "add_param_group", "load_state_dict", "state dict replaced",
    "state entry replaced", "state deleted", "state cleared", "param replaced in the group",
    "deepcopy",
])
def test_a_change_is_seen(change):
    ours, ref, o_opt, r_opt = _pair(weight_decay=0.1)
    _step(ours, ref, o_opt, r_opt)
    _step(ours, ref, o_opt, r_opt)
    if change == "grads None and back":
        _step(ours, ref, o_opt, r_opt, skip={1})
        _step(ours, ref, o_opt, r_opt, skip={0, 2})
    elif change == "add_param_group":
        extra = torch.nn.Parameter(torch.randn(5, dtype=torch.float64))
        ours.append(extra)
        ref.append(torch.nn.Parameter(extra.detach().clone()))
        o_opt.add_param_group({"params": [ours[-1]], "lr": 0.01})
        r_opt.add_param_group({"params": [ref[-1]], "lr": 0.01})
    elif change == "load_state_dict":  # another run's state, loaded into both
        _, _, other, _ = _pair(weight_decay=0.1)
        for p in other.param_groups[0]["params"]:
            p.grad = torch.ones_like(p)
        other.step()
        sd = other.state_dict()
        o_opt.load_state_dict(copy.deepcopy(sd))
        r_opt.load_state_dict(copy.deepcopy(sd))
    elif change == "state dict replaced":
        for opt, ps in ((o_opt, ours), (r_opt, ref)):
            opt.state[ps[1]] = {k: v.clone() * 0.5 for k, v in opt.state[ps[1]].items()}
    elif change == "state entry replaced":
        for opt, ps in ((o_opt, ours), (r_opt, ref)):
            opt.state[ps[2]]["exp_avg"] = torch.full_like(ps[2], 0.25)
    elif change == "state deleted":
        for opt, ps in ((o_opt, ours), (r_opt, ref)):
            del opt.state[ps[0]]
    elif change == "state cleared":
        o_opt.state.clear()
        r_opt.state.clear()
    elif change == "param replaced in the group":
        new = torch.nn.Parameter(torch.randn(4, 3, dtype=torch.float64))
        ours[1] = o_opt.param_groups[0]["params"][1] = new
        ref[1] = r_opt.param_groups[0]["params"][1] = torch.nn.Parameter(new.detach().clone())
    elif change == "deepcopy":
        o_opt, r_opt = copy.deepcopy(o_opt), copy.deepcopy(r_opt)
        ours, ref = o_opt.param_groups[0]["params"], r_opt.param_groups[0]["params"]
    for _ in range(3):
        _step(ours, ref, o_opt, r_opt)


def test_state_assigned_as_a_plain_dict():
    """Code that resets ``opt.state`` with a plain defaultdict: no cache, still correct."""
    ours, ref, o_opt, r_opt = _pair()
    _step(ours, ref, o_opt, r_opt)
    from collections import defaultdict

    o_opt.state = defaultdict(dict)
    r_opt.state = defaultdict(dict)
    for _ in range(3):
        _step(ours, ref, o_opt, r_opt)
    o_opt.state[ours[0]]["exp_avg"].zero_()  # a plain dict, changed: seen at once
    r_opt.state[ref[0]]["exp_avg"].zero_()
    _step(ours, ref, o_opt, r_opt)
