"""Which database errors stop progress (the store's fault) and which are a message's fault."""

from __future__ import annotations

import psycopg
import pytest
from psycopg import errors
from psycopg_pool import PoolTimeout

from worker.adapters.postgres import is_unavailable


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
