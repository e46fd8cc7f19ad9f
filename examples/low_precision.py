"""Pure-bf16 training with optimlab's low-precision options, next to fp32 and mixed precision.

    python examples/low_precision.py --task gpt --mode bf16+kahan [--steps 600] [--lr 3e-4]

Trains one model on real data that ships with Python or scikit-learn, in one of six modes:

* ``fp32``: float32 params, grads and AdamW state;
* ``bf16``: the model (params, grads) and AdamW's state in bfloat16, plain ``optimlab.AdamW``
  (torch.optim's numbers: each update is rounded to nearest into bf16, so an update smaller
  than half a bf16 ulp of its weight is lost);
* ``bf16+kahan``: the same with ``kahan_sum=True`` (a bf16 compensation buffer per param
  carries the rounding error of each write into the next one);
* ``bf16+sr``: the same with ``stochastic_rounding=True`` (each write rounded up or down at
  random, unbiased; ``rounding_seed`` fixes the random stream);
* ``bf16+kahan+f32state``: ``kahan_sum=True`` with ``state_dtype=torch.float32`` (AdamW's
  moments in float32: in bf16, ``exp_avg_sq`` cannot decay by ``beta2=0.999`` per step, the
  change is below half an ulp);
* ``mixed``: float32 master params, grads and state, forward and backward under
  ``torch.autocast("cpu", dtype=torch.bfloat16)``.

Tasks: ``gpt``, a tiny character-level GPT-style transformer on the source text of a few
standard library modules (``inspect.getsource``; the held-out loss is on the last 10% of
the text), and ``digits``, an MLP on scikit-learn's ``load_digits`` (300 images held out).
Same seed, same initial weights (the bf16 modes round the float32 ones), same batches and
the same number of steps in every mode.

Matrix products: this script's bf16 matmuls (``linear`` and ``matmul`` below) multiply
bf16 inputs with float32 accumulation and round the result to bf16, as a GPU's bf16 GEMM
does, but run it as a float32 GEMM on the bf16 values: on a CPU without AVX512-BF16/AMX
torch's own bf16 GEMM is ~25x slower than float32. ``--matmul native`` uses torch's.

``optimlab.AdamW`` is a drop-in ``torch.optim.AdamW``; the only low-precision lines are in
:func:`make_optimizer`.
"""

from __future__ import annotations

import argparse
import inspect
import math
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import optimlab

BF16 = torch.bfloat16
MODES = ("fp32", "bf16", "bf16+kahan", "bf16+sr", "bf16+kahan+f32state", "mixed")
TASKS = ("gpt", "digits")
#: the standard library modules whose source is the gpt task's text
TEXT_MODULES = ("argparse", "textwrap", "dataclasses", "calendar", "string")
EMULATE_BF16_MATMUL = True


# ---- bf16 matrix products -------------------------------------------------------------------
def _bf16_product(x: Tensor, *others: Tensor | None) -> bool:
    if not EMULATE_BF16_MATMUL:
        return False
    return (x.dtype == BF16 or any(t is not None and t.dtype == BF16 for t in others)
            or torch.is_autocast_enabled("cpu"))


def linear(x: Tensor, w: Tensor, b: Tensor | None = None) -> Tensor:
    """``F.linear``; with a bf16 operand or under CPU autocast: bf16 inputs, float32
    accumulation, bf16 result (a bf16 GEMM, run as a float32 one; backward likewise)."""
    if not _bf16_product(x, w, b):
        return F.linear(x, w, b)
    with torch.autocast("cpu", enabled=False):
        out = F.linear(x.to(BF16).float(), w.to(BF16).float(),
                       None if b is None else b.to(BF16).float())
    return out.to(BF16)


def matmul(a: Tensor, b: Tensor) -> Tensor:
    """``a @ b``, with :func:`linear`'s bf16 rule."""
    if not _bf16_product(a, b):
        return a @ b
    with torch.autocast("cpu", enabled=False):
        out = a.to(BF16).float() @ b.to(BF16).float()
    return out.to(BF16)


class Linear(nn.Linear):
    """``nn.Linear`` (same init) through :func:`linear`."""

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        return linear(x, self.weight, self.bias)


# ---- models -----------------------------------------------------------------------------------
class Block(nn.Module):
    """Pre-LayerNorm transformer block: causal self-attention, then a GELU MLP."""

    def __init__(self, d: int, heads: int, context: int):
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = Linear(d, 3 * d), Linear(d, d)
        self.fc, self.out = Linear(d, 4 * d), Linear(4 * d, d)
        self.register_buffer("causal", torch.ones(context, context).tril().bool(), persistent=False)

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        B, T, C = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(C, dim=2)
        q, k, v = (t.view(B, T, self.heads, C // self.heads).transpose(1, 2) for t in (q, k, v))
        att = matmul(q, k.transpose(-2, -1)) * (1.0 / math.sqrt(C // self.heads))
        att = att.masked_fill(~self.causal[:T, :T], float("-inf")).softmax(dim=-1)
        y = matmul(att, v).transpose(1, 2).reshape(B, T, C)
        x = x + self.proj(y)
        return x + self.out(F.gelu(self.fc(self.ln2(x))))


class TinyGPT(nn.Module):
    """Character-level GPT-style model: token + position embeddings, ``layers`` blocks, a
    final LayerNorm and a linear head. PyTorch's default inits (``nn.Embedding``: N(0, 1))."""

    def __init__(self, vocab: int, d: int = 64, layers: int = 2, heads: int = 4, context: int = 64):
        super().__init__()
        self.tok, self.pos = nn.Embedding(vocab, d), nn.Embedding(context, d)
        self.blocks = nn.ModuleList(Block(d, heads, context) for _ in range(layers))
        self.ln, self.head = nn.LayerNorm(d), Linear(d, vocab)

    def forward(self, idx: Tensor) -> Tensor:  # noqa: D102
        x = self.tok(idx) + self.pos(torch.arange(idx.shape[1]))
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln(x))


def mlp(hidden: int = 256) -> nn.Module:
    """The digits MLP: 64 -> hidden -> hidden -> 10, ReLU."""
    return nn.Sequential(Linear(64, hidden), nn.ReLU(), Linear(hidden, hidden), nn.ReLU(),
                         Linear(hidden, 10))


# ---- data ---------------------------------------------------------------------------------------
def stdlib_text(modules=TEXT_MODULES) -> str:
    """The source of ``modules``, concatenated (characters outside printable ASCII and
    newline become ``?``): ~210k characters on Python 3.11."""
    text = "\n".join(inspect.getsource(__import__(m)) for m in modules)
    return "".join(c if c == "\n" or " " <= c <= "~" else "?" for c in text)


@dataclass
class Task:
    """A task's data and model: ``batches(gen)`` yields the training batches (a new stream
    for each run, drawn from ``gen``), ``heldout`` is a fixed list of (input, target) batches,
    ``build()`` a float32 model (call after seeding)."""

    name: str
    build: object
    batches: object
    heldout: list
    info: dict = field(default_factory=dict)


def gpt_task(batch: int = 16, context: int = 64, d: int = 64, layers: int = 2, heads: int = 4,
             eval_batches: int = 8) -> Task:
    """The tiny GPT on :func:`stdlib_text`: random windows of ``context`` characters from the
    first 90%, held-out loss on ``eval_batches`` x ``batch`` fixed windows of the last 10%."""
    text = stdlib_text()
    chars = sorted(set(text))
    data = torch.tensor([chars.index(c) for c in text], dtype=torch.long)
    cut = int(0.9 * len(data))
    train, held = data[:cut], data[cut:]

    def windows(src: Tensor, starts: Tensor) -> tuple[Tensor, Tensor]:
        idx = starts[:, None] + torch.arange(context + 1)
        w = src[idx]
        return w[:, :-1], w[:, 1:]

    def batches(gen: torch.Generator):
        while True:
            yield windows(train, torch.randint(0, len(train) - context - 1, (batch,), generator=gen))

    n_held = eval_batches * batch
    starts = torch.linspace(0, len(held) - context - 2, n_held).long()
    heldout = [windows(held, s) for s in starts.split(batch)]
    info = dict(text_modules=list(TEXT_MODULES), text_chars=len(text), vocab=len(chars),
                train_chars=cut, heldout_windows=n_held, batch=batch, context=context,
                d_model=d, layers=layers, heads=heads)
    return Task("gpt", lambda: TinyGPT(len(chars), d, layers, heads, context), batches, heldout, info)


def digits_task(batch: int = 64, hidden: int = 256) -> Task:
    """The MLP on scikit-learn's digits (features / 16): 1497 training images, 300 held out
    (a fixed permutation), in epochs of shuffled batches (the last partial batch dropped).
    Needs scikit-learn."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32) / 16.0
    y = torch.tensor(digits.target, dtype=torch.long)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(1234))
    x, y = x[perm], y[perm]
    xt, yt, xh, yh = x[300:], y[300:], x[:300], y[:300]

    def batches(gen: torch.Generator):
        while True:
            for idx in torch.randperm(len(xt), generator=gen).split(batch)[:len(xt) // batch]:
                yield xt[idx], yt[idx]

    info = dict(train_images=len(xt), heldout_images=len(xh), batch=batch, hidden=hidden)
    return Task("digits", lambda: mlp(hidden), batches, [(xh, yh)], info)


# ---- training -----------------------------------------------------------------------------------
def make_optimizer(model: nn.Module, mode: str, lr: float, rounding_seed: int = 0) -> torch.optim.Optimizer:
    """optimlab.AdamW for ``mode``: the low-precision options are the only difference."""
    if mode == "bf16+kahan":
        return optimlab.AdamW(model.parameters(), lr=lr, kahan_sum=True)
    if mode == "bf16+kahan+f32state":
        return optimlab.AdamW(model.parameters(), lr=lr, kahan_sum=True, state_dtype=torch.float32)
    if mode == "bf16+sr":
        return optimlab.AdamW(model.parameters(), lr=lr, stochastic_rounding=True,
                              rounding_seed=rounding_seed)
    return optimlab.AdamW(model.parameters(), lr=lr)  # fp32, bf16, mixed


def loss_of(model: nn.Module, mode: str, x: Tensor, y: Tensor) -> Tensor:
    """Cross-entropy (float32, from the logits in the mode's precision)."""
    with torch.autocast("cpu", dtype=BF16, enabled=mode == "mixed"):
        logits = model(x)
        return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1))


@torch.no_grad()
def heldout_loss(model: nn.Module, mode: str, heldout: list) -> float:
    """Mean loss over the held-out batches, the model in its training precision."""
    model.eval()
    out = sum(loss_of(model, mode, x, y).item() for x, y in heldout) / len(heldout)
    model.train()
    return out


def state_bytes(model: nn.Module, opt: torch.optim.Optimizer) -> dict:
    """Bytes allocated for params, grads and optimizer state: ``untyped_storage().nbytes()``
    summed over distinct storages (each counted once, in the first of params, grads, state)."""
    seen: set[int] = set()
    out = {"params": 0, "grads": 0, "state": 0, "kahan_comp": 0}

    def add(key: str, t) -> None:
        if isinstance(t, Tensor):
            s = t.untyped_storage()
            if s.data_ptr() not in seen:
                seen.add(s.data_ptr())
                out[key] += s.nbytes()

    params = list(model.parameters())
    for p in params:
        add("params", p)
    for p in params:
        add("grads", p.grad)
    for p in params:
        for k, t in opt.state.get(p, {}).items():
            add("kahan_comp" if k == "kahan_comp" else "state", t)
    out["numel"] = sum(p.numel() for p in params)
    out["total"] = out["params"] + out["grads"] + out["state"] + out["kahan_comp"]
    out["per_param"] = out["total"] / out["numel"]
    return out


def train(task: Task, mode: str, steps: int, lr: float, seed: int = 0, rounding_seed: int = 0,
          eval_every: int = 0, log=None) -> dict:
    """Train ``task``'s model in ``mode``; returns the per-step train losses, the held-out
    losses every ``eval_every`` steps (and at the end), the memory of params, grads and
    state after the last step (:func:`state_bytes`) and the wall time."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    torch.manual_seed(seed)
    model = task.build()  # float32 init, identical in every mode
    if mode.startswith("bf16"):
        model = model.to(BF16)
    opt = make_optimizer(model, mode, lr, rounding_seed)
    batches = task.batches(torch.Generator().manual_seed(seed + 1))  # the same in every mode
    losses, heldout = [], []
    start = time.perf_counter()
    for step in range(1, steps + 1):
        x, y = next(batches)
        loss = loss_of(model, mode, x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if (eval_every and step % eval_every == 0) or step == steps:
            heldout.append((step, heldout_loss(model, mode, task.heldout)))
            if log:
                log(f"{task.name} {mode} step {step}: train {losses[-1]:.4f} "
                    f"held-out {heldout[-1][1]:.4f}")
    seconds = time.perf_counter() - start
    tail = losses[-max(1, steps // 10):]
    return dict(task=task.name, mode=mode, steps=steps, lr=lr, seed=seed,
                rounding_seed=rounding_seed if mode == "bf16+sr" else None,
                train_losses=losses, final_train_loss=sum(tail) / len(tail),
                heldout=heldout, final_heldout_loss=heldout[-1][1],
                memory=state_bytes(model, opt), seconds=seconds)


def positive_int(text: str) -> int:
    """argparse type: an int >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a finite float > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}") from None
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text}")
    return value


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", choices=TASKS, default="gpt")
    ap.add_argument("--mode", choices=MODES, default="bf16+kahan")
    ap.add_argument("--steps", type=positive_int, default=600)
    ap.add_argument("--lr", type=positive_float, default=3e-4)
    ap.add_argument("--batch", type=positive_int, default=None, help="default: 16 (gpt), 64 (digits)")
    ap.add_argument("--d-model", type=positive_int, default=64, help="gpt width")
    ap.add_argument("--layers", type=positive_int, default=2, help="gpt blocks")
    ap.add_argument("--context", type=positive_int, default=64, help="gpt context (characters)")
    ap.add_argument("--hidden", type=positive_int, default=256, help="digits MLP width")
    ap.add_argument("--eval-every", type=positive_int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rounding-seed", type=int, default=0)
    ap.add_argument("--matmul", choices=("emulated", "native"), default="emulated",
                    help="bf16 matmuls: float32 GEMM on bf16 values (default) or torch's bf16 GEMM")
    ap.add_argument("--threads", type=positive_int, default=1)
    args = ap.parse_args(argv)
    if args.d_model % 4:
        ap.error(f"--d-model must be a multiple of 4 (4 heads), got {args.d_model}")

    global EMULATE_BF16_MATMUL
    EMULATE_BF16_MATMUL = args.matmul == "emulated"
    torch.set_num_threads(args.threads)
    if args.task == "gpt":
        task = gpt_task(args.batch or 16, args.context, args.d_model, args.layers)
    else:
        task = digits_task(args.batch or 64, args.hidden)
    result = train(task, args.mode, args.steps, args.lr, args.seed, args.rounding_seed,
                   args.eval_every, log=print)
    mem = result["memory"]
    print(f"final: train loss {result['final_train_loss']:.4f} (mean of the last "
          f"{max(1, args.steps // 10)} steps), held-out {result['final_heldout_loss']:.4f}; "
          f"{mem['per_param']:.2f} bytes/param for params + grads + AdamW state "
          f"({mem['numel']} params); {result['seconds']:.1f} s")
    return result


if __name__ == "__main__":
    main()
