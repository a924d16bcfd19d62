"""The worker's tests. `PROFILE` is the Hypothesis profile of this run (see tests/conftest.py)."""

from __future__ import annotations

import os

PROFILE = os.environ.get("HYPOTHESIS_PROFILE") or (
    "full" if os.environ.get("CI", "") not in ("", "0", "false") else "small"
)


def examples(full: int) -> int:
    """How many examples a property test runs: `full` in the full profile, a tenth (at least 10) in the small."""
    return full if PROFILE == "full" else max(10, full // 10)
