"""`python -m benchmarks`: the end-to-end benchmark (see benchmarks/e2e.py)."""

from .e2e import main

raise SystemExit(main())
