"""What readiness knows beyond Redis and the workers: PostgreSQL and the S3 store answer.

Inference keeps running through a short PostgreSQL or S3 outage (keys and the catalog are
cached in Redis), but uploads, key changes and model loads do not: readiness says so, with the
dependency's name, so an operator (or a load balancer) sees it. Probes are shared: at most one
check per ``ttl_s`` per API process, however often readiness is asked.

Also here: ``keep_catalog``, which rebuilds the serving catalog when Redis comes back empty.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time

import structlog
from psycopg_pool import AsyncConnectionPool

from inferbox.inference.directory import ModelDirectory
from inferbox.keys import Keys

log = structlog.get_logger(__name__)


class Dependencies:
    """Checks that PostgreSQL and the S3 API answer, within ``timeout_s``, cached ``ttl_s``."""

    def __init__(
        self,
        pool: AsyncConnectionPool,
        s3_endpoint: str,
        *,
        s3_secure: bool = False,
        timeout_s: float = 2.0,
        ttl_s: float = 1.0,
    ) -> None:
        self.pool = pool
        self.s3_host, _, port = s3_endpoint.rpartition(":")
        self.s3_port = int(port) if port else (443 if s3_secure else 80)
        self.s3_secure = s3_secure
        self.timeout_s = timeout_s
        self.ttl_s = ttl_s
        self._checked = -1e9
        self._problem: str | None = None
        self._lock = asyncio.Lock()

    async def problem(self) -> str | None:
        """None when both answer, else why not (``postgresql is unreachable``, ...)."""
        if time.monotonic() - self._checked < self.ttl_s:
            return self._problem
        async with self._lock:
            if time.monotonic() - self._checked >= self.ttl_s:
                database, store = await asyncio.gather(self._postgres(), self._s3())
                self._problem = database or store
                self._checked = time.monotonic()
        return self._problem

    async def _postgres(self) -> str | None:
        try:
            async with asyncio.timeout(self.timeout_s):
                async with self.pool.connection(timeout=self.timeout_s) as conn:
                    await conn.execute("SELECT 1")
        except Exception:
            return "postgresql is unreachable"
        return None

    async def _s3(self) -> str | None:
        # Any HTTP answer means the server serves (an anonymous request is refused with 403 by
        # MinIO); a store that accepts connections but never answers is down. Plain asyncio,
        # so a probe is cancelled at its deadline instead of holding a thread.
        writer = None
        try:
            async with asyncio.timeout(self.timeout_s):
                context = ssl.create_default_context() if self.s3_secure else None
                reader, writer = await asyncio.open_connection(
                    self.s3_host, self.s3_port, ssl=context
                )
                writer.write(
                    f"HEAD / HTTP/1.1\r\nHost: {self.s3_host}\r\nConnection: close\r\n\r\n".encode()
                )
                await writer.drain()
                status_line = await reader.readline()
            if not status_line.startswith(b"HTTP/"):
                return "the object store is unreachable"
        except Exception:
            return "the object store is unreachable"
        finally:
            if writer is not None:
                writer.close()
                with contextlib.suppress(Exception):
                    await writer.wait_closed()
        return None


async def keep_catalog(
    registry, client, keys: Keys, directory: ModelDirectory, every_s: float = 1.0
) -> None:
    """Rebuild the serving catalog from PostgreSQL whenever Redis has lost it.

    A Redis restarted without its data would otherwise answer 404 for every model until an
    operator ran ``inferbox models publish``; meanwhile ``directory`` answers 503 for calls
    (it expects a catalog while the registry has models). Runs for the life of the API
    process; a failure (Redis or PostgreSQL down) is retried on the next turn.
    """
    while True:
        try:
            if await client.exists(keys.catalog):
                directory.expect_catalog = True
            else:
                count = await registry.publish_all()
                directory.expect_catalog = count > 0  # no models: no catalog to expect
                if count:
                    log.warning("the model catalog was missing in redis; rebuilt", models=count)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.debug("catalog check failed; retrying", error=str(exc))
        await asyncio.sleep(every_s)
