"""optimlab under torch.distributed: 2 CPU processes on gloo, each setup compared with torch.optim.

Setups, for every optimizer and backend (torch's same backend is the reference for
forloop/foreach, torch's for-loop for the fused backends):

* ``ddp``: ``DistributedDataParallel`` over a small MLP, the optimizer on its params;
* ``zero``: ``ZeroRedundancyOptimizer(optimizer_class=<ours or torch's>)`` under DDP;
  each rank updates its own partition of the params, then they are broadcast;
* ``fsdp2``: ``torch.distributed.fsdp.fully_shard`` per layer and at the root: the
  params are DTensors sharded on dim 0 (unevenly: 3 rows over 2 ranks), and each
  rank's optimizer updates its local shards (state entries are DTensors too).
  FSDP2 runs on CPU with gloo in torch 2.13 (checked here).

After 3 steps (different data per rank and step), the full params and every state
entry (local shard / partition) must equal torch.optim's in float64 (rtol 1e-10).

One ``torch.multiprocessing`` launch runs every case (process start-up dominates the
cost); each case reports its own result and becomes one test. A free port is taken
from the OS and the launch is killed after ``TIMEOUT`` seconds.

Left out: LBFGS (its closure re-evaluates the model; nothing distributed about it)
and SparseAdam (sparse grads: DDP's sparse all-reduce is a different code path;
torch.optim's SparseAdam under DDP would be the test of torch, not of optimlab).
Muon (2-D params only) gets the same MLP without biases.
"""

from __future__ import annotations

import os
import socket
import tempfile
import time
import traceback

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

WORLD = 2
STEPS = 3
TIMEOUT = 240  # seconds for the whole launch
TOL = dict(rtol=1e-10, atol=1e-12)
SETUPS = ("ddp", "zero", "fsdp2")
LEFT_OUT = ("LBFGS", "SparseAdam")


def _specs():
    from optim_db import implemented

    return [s for s in implemented() if s.name not in LEFT_OUT]


def _unusable(spec, backend):
    """Why ``backend`` cannot run ``spec`` in this environment (None if it can)."""
    from optimlab import _dispatch

    if backend == "triton" and not torch.cuda.is_available():
        from optimlab.kernels.triton import interpreting

        if not interpreting():
            return "the triton backend needs a CUDA GPU (none here) or TRITON_INTERPRET=1"
    return _dispatch._unavailable(spec.ours_cls.algorithm, backend)


def _case_ids():
    from optim_db import backends

    return [f"{s.name}-{b}-{setup}" for s in _specs() for b in backends(s) for setup in SETUPS
            if _unusable(s, b) is None]


# ---- worker side ---------------------------------------------------------------------------
def _model(spec):
    torch.manual_seed(0)
    bias = spec.problem != "matrix"  # Muon: 2-D params only
    return torch.nn.Sequential(
        torch.nn.Linear(5, 4, bias=bias), torch.nn.Tanh(), torch.nn.Linear(4, 3, bias=bias)
    ).double()


def _batch(step, rank):
    gen = torch.Generator().manual_seed(100 * step + rank)
    return torch.randn(6, 5, generator=gen, dtype=torch.float64), torch.randn(6, 3, generator=gen, dtype=torch.float64)


def _local(t):
    from torch.distributed.tensor import DTensor

    return t.to_local() if isinstance(t, DTensor) else t


def _full(t):
    from torch.distributed.tensor import DTensor

    return t.full_tensor() if isinstance(t, DTensor) else t


def _train(spec, cls, flags, setup, env_backend):
    """Train ``STEPS`` steps; return (full params, local state) or ('raise', type name, message)."""
    from torch.distributed.optim import ZeroRedundancyOptimizer
    from torch.nn.parallel import DistributedDataParallel as DDP

    rank = dist.get_rank()
    model = _model(spec)
    old = os.environ.pop("OPTIMLAB_BACKEND", None)
    if env_backend:
        os.environ["OPTIMLAB_BACKEND"] = env_backend
    try:
        if setup == "ddp":
            net = DDP(model)
            opt = cls(net.parameters(), **flags)
            local_opt = opt
        elif setup == "zero":
            net = DDP(model)
            opt = ZeroRedundancyOptimizer(net.parameters(), optimizer_class=cls, **flags)
            local_opt = opt.optim
        else:
            from torch.distributed.fsdp import fully_shard

            for layer in model:
                if isinstance(layer, torch.nn.Linear):
                    fully_shard(layer)
            net = fully_shard(model)
            opt = cls(net.parameters(), **flags)
            local_opt = opt
        for step in range(STEPS):
            x, y = _batch(step, rank)
            opt.zero_grad()
            torch.nn.functional.mse_loss(net(x), y).backward()
            opt.step()
        chosen = {c.name for c in local_opt.backends()} if hasattr(local_opt, "backends") else None
    except Exception as e:  # noqa: BLE001 - compared with what torch raises
        return ("raise", type(e).__name__, str(e).splitlines()[0] if str(e) else "")
    finally:
        os.environ.pop("OPTIMLAB_BACKEND", None)
        if old is not None:
            os.environ["OPTIMLAB_BACKEND"] = old
    params = [_full(p.detach()).clone() for p in net.parameters()]
    sd = local_opt.state_dict()["state"]
    state = {pid: {k: (_local(v).clone() if torch.is_tensor(v) else v) for k, v in st.items()}
             for pid, st in sd.items()}
    return ("ok", params, state, chosen)


def _compare(ours, ref, backend):
    if ref[0] == "raise":
        # torch cannot run this setup either (e.g. an in-place op DTensor refuses): so must we
        # refuse, with the same exception type (the message names whichever op failed first)
        assert ours[0] == "raise" and ours[1] == ref[1], (ours, ref)
        return
    assert ours[0] == "ok", ours
    _, po, so, chosen = ours
    _, pr, sr, _ = ref
    assert chosen == {backend}, f"ran on {chosen}, not {backend}"
    assert len(po) == len(pr)
    for i, (a, b) in enumerate(zip(po, pr)):
        torch.testing.assert_close(a, b, **TOL, msg=lambda m: f"param {i}: {m}")
    assert so.keys() == sr.keys(), "state of different params"
    for pid in sr:
        assert list(so[pid]) == list(sr[pid]), f"state {pid} keys"
        for key, value in sr[pid].items():
            if torch.is_tensor(value):
                torch.testing.assert_close(so[pid][key], value, **TOL,
                                           msg=lambda m: f"state[{pid}][{key}]: {m}")
            else:
                assert so[pid][key] == value, f"state[{pid}][{key}]"


def _compare_params(ours, ref):
    assert ours[0] == "ok" and ref[0] == "ok", (ours[:3], ref[:3])
    for i, (a, b) in enumerate(zip(ours[1], ref[1], strict=True)):
        torch.testing.assert_close(a, b, **TOL, msg=lambda m: f"param {i}: {m}")


def _run_case(spec, backend, setup) -> str:
    """Compare ours with torch in ``setup``; returns a note on what torch could not do."""
    from optim_db import flags_for

    if backend in ("forloop", "foreach"):
        ours_flags = torch_flags = flags_for(spec, backend)
        env = None
    else:  # fused: chosen by OPTIMLAB_BACKEND; torch runs its for-loop by default on CPU
        ours_flags, torch_flags, env = {}, {}, backend
    ours = _train(spec, spec.ours_cls, ours_flags, setup, env)
    ref = _train(spec, spec.torch_cls, torch_flags, setup, None)
    note = ""
    if ref[0] == "raise" and ours[0] == "ok" and spec.has_foreach_flag:
        # torch's implementation refuses DTensors where ours copes (e.g. Rprop's for-loop
        # uses index_put_): hold ours to torch's other implementation instead
        other = flags_for(spec, "foreach" if torch_flags.get("foreach") is False else "forloop")
        alt = _train(spec, spec.torch_cls, other, setup, None)
        if alt[0] == "ok":
            note = f"torch {torch_flags} raised {ref[1]}: {ref[2]}; compared with torch {other}"
            ref = alt
        elif setup == "fsdp2":
            # no torch implementation takes these DTensors; an elementwise update on shards
            # equals the update of the full tensors, so DDP with torch (same data, same
            # gradient averaging over 2 ranks: exact) gives the params FSDP2 must reach
            ddp = _train(spec, spec.torch_cls, torch_flags, "ddp", None)
            note = f"torch raises {ref[1]} under FSDP2 ({ref[2]}); params compared with torch under DDP"
            _compare_params(ours, ddp)
            return note
    elif ref[0] == "raise":
        note = f"torch and optimlab both raise {ref[1]}: torch: {ref[2]} / optimlab: {ours[2]}"
    if setup == "fsdp2" and backend in ("cpp", "triton") and not spec.ours_cls.elementwise:
        backend = "forloop"  # a whole-tensor update of sharded DTensors: planned on the for-loop
    _compare(ours, ref, backend)
    return note


def _worker(rank, port, out_dir, cases):
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    from optim_db import backends

    results = {}
    try:
        specs = {s.name: s for s in _specs()}
        for case in cases:
            name, backend, setup = case.split("-")
            spec = specs.get(name)
            if spec is None or backend not in backends(spec):
                results[case] = ("missing", f"{case} is not available in the worker")
                continue
            try:
                results[case] = ("ok", _run_case(spec, backend, setup))
            except Exception:  # noqa: BLE001 - reported by the test of this case
                results[case] = ("fail", traceback.format_exc(limit=4))
            dist.barrier()
    finally:
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(cases):
    if not cases:
        return [{} for _ in range(WORLD)]
    with tempfile.TemporaryDirectory() as out_dir:
        ctx = mp.start_processes(_worker, args=(_free_port(), out_dir, cases), nprocs=WORLD,
                                 join=False, start_method="spawn")
        deadline = time.monotonic() + TIMEOUT
        try:
            while not ctx.join(timeout=1):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the distributed launch did not finish in {TIMEOUT}s")
        finally:
            for p in ctx.processes:
                if p.is_alive():
                    p.kill()
        return [torch.load(os.path.join(out_dir, f"rank{r}.pt"), weights_only=False) for r in range(WORLD)]


@pytest.fixture(scope="module")
def results():
    return _launch(_case_ids())


def _check(results, case):
    for rank, res in enumerate(results):
        status, detail = res.get(case, ("missing", "no result"))
        assert status == "ok", f"rank {rank}: {detail}"


@pytest.mark.parametrize("case", _case_ids())
def test_matches_torch(results, case):
    _check(results, case)


def test_fsdp2_params_are_sharded_dtensors():
    """The premise of the fsdp2 cases: fully_shard on CPU turns params into sharded DTensors."""
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor, Shard

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    store = dist.HashStore()
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        model = fully_shard(torch.nn.Linear(3, 2).double())
        assert all(isinstance(p, DTensor) and p.placements == (Shard(0),) for p in model.parameters())
    finally:
        dist.destroy_process_group()
