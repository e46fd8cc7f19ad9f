"""``python -m optimlab.kernels [--rebuild]``: build optimlab's C++ CPU kernels ahead of time
(see docs/cpu-backend.md); ``--rebuild`` forgets a failed build remembered by the cache."""

from .cpp_build import _main

raise SystemExit(_main())
