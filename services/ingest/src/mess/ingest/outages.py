"""Which exceptions mean "a backing service failed" rather than "this input is bad".

Work that fails with one of these is retried later (with backoff); anything
about the input itself is recorded or dead-lettered at once instead.
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
