"""``python -m optimlab.kernels``: build optimlab's C++ CPU kernels ahead of time (see docs/cpu-backend.md)."""

from .cpu import _main

raise SystemExit(_main())
