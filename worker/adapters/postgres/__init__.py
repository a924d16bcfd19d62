"""PostgreSQL: all SQL of the worker lives in this package and in `worker/migrations/`.

`common` (connections, the pool, error classification, lock keys), `migrations`, `unit_of_work` (the
write side: the store a batch's in-memory unit of work loads from and saves to), `outbox` (what the relay
publishes, dead letters), `retention` (the purge) and `read` (the read side: operator views, the report,
the state figures behind /metrics).
"""
