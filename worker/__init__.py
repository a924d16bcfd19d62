"""backorder-worker: keeps the backorder queue and allocates arriving stock."""

from worker import compiled as _compiled

_compiled.check()
