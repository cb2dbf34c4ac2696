"""Settings refuse what the processes could not honour."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from inferbox.config import Settings


@pytest.mark.parametrize("url", ["unix:///run/redis.sock", "rediss://redis:6379/0", "redis:6379"])
def test_a_redis_url_the_hot_paths_cannot_use_is_refused_at_start(url):
    with pytest.raises(ValidationError, match="redis_url"):
        Settings(redis_url=url)


def test_a_redis_url_with_a_password_and_database_is_accepted():
    assert Settings(redis_url="redis://:s3cret@redis:6379/2").redis_url.endswith("/2")
