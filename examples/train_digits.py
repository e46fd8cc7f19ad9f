"""Train a small MLP on scikit-learn's digits: an ordinary torch training script.

It runs unchanged with either import line (pick with ``--impl``)::

    import torch.optim as optim     # --impl torch
    import optimlab as optim        # --impl optimlab (default)

Param groups with different lr, a scheduler, gradient clipping, and a checkpoint
saved mid-training then resumed into freshly built objects, as users do.
Prints one line per epoch; ``--json`` prints the losses as JSON instead.
"""

from __future__ import annotations

import argparse
import io
import json

import torch
from sklearn.datasets import load_digits
from torch import nn


def build(optim, epochs: int, steps_per_epoch: int):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 10))
    head, body = model[-1], model[:-1]
    opt = optim.AdamW(
        [
            {"params": body.parameters()},
            {"params": head.parameters(), "lr": 1e-2, "weight_decay": 0.0},
        ],
        lr=3e-3,
        weight_decay=1e-2,
    )
    sched = optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * steps_per_epoch)
    return model, opt, sched


def main(argv=None) -> list[float]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--impl", choices=("optimlab", "torch"), default="optimlab")
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--resume-at", type=int, default=3, help="epoch after which to checkpoint and resume")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    if args.impl == "torch":
        import torch.optim as optim
    else:
        import optimlab as optim

    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32) / 16.0
    y = torch.tensor(digits.target)
    batches = list(zip(x.split(128), y.split(128)))
    model, opt, sched = build(optim, args.epochs, len(batches))
    loss_fn = nn.CrossEntropyLoss()
    losses = []
    for epoch in range(args.epochs):
        total = 0.0
        for xb, yb in batches:
            opt.zero_grad()
            loss = loss_fn(model(xb), yb)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0)
            opt.step()
            sched.step()
            total += loss.item()
        losses.append(total / len(batches))
        if not args.json:
            print(f"epoch {epoch}: loss {losses[-1]:.6f} lr {sched.get_last_lr()[0]:.6f}")
        if epoch + 1 == args.resume_at:
            buf = io.BytesIO()
            torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict()}, buf)
            buf.seek(0)
            ckpt = torch.load(buf)
            model, opt, sched = build(optim, args.epochs, len(batches))
            model.load_state_dict(ckpt["model"])
            opt.load_state_dict(ckpt["opt"])
            sched.load_state_dict(ckpt["sched"])
    if args.json:
        print(json.dumps(losses))
    return losses


if __name__ == "__main__":
    main()
