"""Hypothesis profiles: the full one in CI (CI=true), a small one for quick local runs.

HYPOTHESIS_PROFILE=full or =small chooses one explicitly. Property tests state how many examples
they want in the full profile with `examples(n)`; the small profile runs a tenth of that.
"""

from __future__ import annotations

from hypothesis import settings

from tests import PROFILE

settings.register_profile("full", deadline=None, print_blob=True)
settings.register_profile("small", deadline=None, max_examples=20)
settings.load_profile(PROFILE)
