"""Which exceptions mean "a backing service failed" rather than "this input is bad".

Work that fails with one of these is retried later (with backoff); anything
about the input itself is recorded or dead-lettered at once instead. Postgres
answers some errors about the values it was given (out of range, a CHECK, a
character text cannot hold): those are ``PostgresError`` too, but retrying
them changes nothing, so ``is_transient`` says no.
"""

import asyncpg
from aiokafka.errors import KafkaError
from botocore.exceptions import BotoCoreError, ClientError

BACKEND_ERRORS: tuple[type[Exception], ...] = (
    ClientError,  # S3 or SQS answered with an error (a missing object is checked for before this applies)
    BotoCoreError,  # S3 or SQS unreachable
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    KafkaError,
    OSError,
    TimeoutError,
)

# Postgres refusing the values, not failing: the same input fails the same way every time. (A unique
# violation is not among them: ON CONFLICT handles those, and one that escapes is a race worth retrying.)
INPUT_ERRORS: tuple[type[Exception], ...] = (
    asyncpg.DataError,
    # What asyncpg refuses to encode before sending (an int beyond int32, say): an InterfaceError by class,
    # so it needs naming here or it would pass for a connection problem.
    asyncpg.exceptions._base.DataError,
    asyncpg.CheckViolationError,
    asyncpg.NotNullViolationError,
)


def is_transient(exc: BaseException) -> bool:
    """Whether trying the same work again later may succeed."""
    return isinstance(exc, BACKEND_ERRORS) and not isinstance(exc, INPUT_ERRORS)
