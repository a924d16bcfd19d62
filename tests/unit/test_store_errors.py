"""Which database errors stop progress (the store's fault) and which are a message's fault."""

from __future__ import annotations

import psycopg
import pytest
from psycopg import errors
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import PoolTimeout

from worker.adapters.postgres.common import is_unavailable, store_error, with_timeouts
from worker.service.ports import StoreConflict, StoreUnavailable


@pytest.mark.parametrize(
    "error",
    [
        psycopg.OperationalError("connection refused"),  # the client could not reach the server
        PoolTimeout("couldn't get a connection after 10.00 sec"),
        psycopg.InterfaceError("the connection is closed"),
        errors.AdminShutdown(),
        errors.CannotConnectNow(),
        errors.ConnectionFailure(),
        errors.DeadlockDetected(),
        errors.SerializationFailure(),
        errors.TooManyConnections(),
        errors.DiskFull(),
        errors.QueryCanceled(),
        # A broken deployment is not any message's fault either: retried until someone fixes it.
        errors.InsufficientPrivilege(),  # a revoked grant
        errors.UndefinedTable(),  # a migration not applied
        errors.UndefinedColumn(),
        errors.InternalError_(),
        errors.DataCorrupted(),
        errors.IdleInTransactionSessionTimeout(),
    ],
)
def test_the_store_s_fault_is_retried(error: Exception) -> None:
    assert is_unavailable(error)


@pytest.mark.parametrize(
    "error",
    [
        errors.ProgramLimitExceeded(),  # "index row size exceeds btree maximum": a 3,000-character id
        errors.NumericValueOutOfRange(),
        errors.StringDataRightTruncation(),
        errors.UniqueViolation(),
        errors.CharacterNotInRepertoire(),
        psycopg.DataError("PostgreSQL text fields cannot contain NUL (0x00) bytes"),  # refused by the client
        ValueError("not a database error at all"),
    ],
)
def test_an_error_the_data_caused_is_the_message_s_fault(error: Exception) -> None:
    assert not is_unavailable(error)


def test_a_lost_deadlock_is_retried_at_once_not_as_an_outage() -> None:
    assert isinstance(store_error(errors.DeadlockDetected()), StoreConflict)
    assert isinstance(store_error(errors.SerializationFailure()), StoreConflict)
    unavailable = store_error(errors.AdminShutdown())
    assert isinstance(unavailable, StoreUnavailable) and not isinstance(unavailable, StoreConflict)


def test_connections_give_up_on_a_server_that_vanished() -> None:
    options = conninfo_to_dict(with_timeouts("postgresql://app:secret@db.internal:5432/backorder"))
    assert options["keepalives"] == "1" and options["tcp_user_timeout"] == "30000"
    assert options["password"] == "secret" and options["host"] == "db.internal"
    # What the operator's URL says wins.
    assert conninfo_to_dict(with_timeouts("postgresql://h/db?keepalives_idle=99"))["keepalives_idle"] == "99"
