"""`python -m benchmarks.gpu`: see benchmarks/gpu/__init__.py."""

from .run import main

raise SystemExit(main())
