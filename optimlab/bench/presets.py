"""Parameter lists the benchmark steps: real model shapes, many small tensors, or custom."""

from __future__ import annotations


def gpt2_small() -> list[tuple[int, ...]]:
    """GPT-2 small (124M params): embeddings, 12 blocks, final layer norm."""
    d, vocab, ctx, layers = 768, 50257, 1024, 12
    shapes: list[tuple[int, ...]] = [(vocab, d), (ctx, d)]
    for _ in range(layers):
        shapes += [(d,), (d,), (d, 3 * d), (3 * d,), (d, d), (d,)]  # ln_1, attn
        shapes += [(d,), (d,), (d, 4 * d), (4 * d,), (4 * d, d), (d,)]  # ln_2, mlp
    return shapes + [(d,), (d,)]


def resnet50() -> list[tuple[int, ...]]:
    """ResNet-50 (25.6M params): convs, batch-norm weights and biases, classifier."""
    shapes: list[tuple[int, ...]] = [(64, 3, 7, 7), (64,), (64,)]
    inplanes = 64
    for width, blocks in ((64, 3), (128, 4), (256, 6), (512, 3)):
        for b in range(blocks):
            out = width * 4
            shapes += [(width, inplanes, 1, 1), (width,), (width,)]
            shapes += [(width, width, 3, 3), (width,), (width,)]
            shapes += [(out, width, 1, 1), (out,), (out,)]
            if b == 0:  # projection shortcut
                shapes += [(out, inplanes, 1, 1), (out,), (out,)]
            inplanes = out
    return shapes + [(1000, 2048), (1000,)]


def many_small(count: int = 4096, size: int = 256) -> list[tuple[int, ...]]:
    """Thousands of tiny tensors: launch and per-tensor overheads dominate."""
    return [(size,)] * count


def custom(total: int, count: int) -> list[tuple[int, ...]]:
    """``count`` 1-D tensors sharing ``total`` elements (the first takes the remainder)."""
    each = total // count
    return [(total - each * (count - 1),)] + [(each,)] * (count - 1)


PRESETS = {
    "gpt2-small": gpt2_small,
    "resnet50": resnet50,
    "many-small": many_small,
}


def numel(shapes) -> int:
    total = 0
    for s in shapes:
        n = 1
        for d in s:
            n *= d
        total += n
    return total
