"""`python -m worker` is the same as the `backorder-worker` command."""

from worker.entrypoints.cli import main

raise SystemExit(main())
