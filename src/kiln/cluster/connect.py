"""Opening the cluster's Redis from `[cluster] queue`, with a user's error when it cannot be reached."""

from __future__ import annotations

from typing import TYPE_CHECKING

from kiln.errors import InvalidInput

if TYPE_CHECKING:
    from redis import Redis

CONNECT_TIMEOUT_S = 5.0


class QueueUnreachable(InvalidInput):
    """The configured Redis does not answer (exit 2: the setup is wrong, nothing was changed)."""


def redis_from_url(url: str, *, check: bool = True) -> Redis:
    """A client for `url`; with `check`, one PING first so a dead server is a clear error here."""
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=CONNECT_TIMEOUT_S, health_check_interval=30)
    if check:
        try:
            client.ping()
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError) as e:
            raise QueueUnreachable(
                f"cannot reach the cluster queue {url}: {e}",
                hint="start Redis there or fix [cluster] queue in config.toml; `kiln build --local` builds on this host",
            ) from None
        except redis.exceptions.ResponseError as e:  # e.g. a password is needed
            raise QueueUnreachable(f"the cluster queue {url} refused kiln: {e}",
                                   hint="put the credentials into the URL (redis://:PASSWORD@HOST:PORT/DB)") from None
    return client
