"""Fixtures of the cluster tests: a module's own Redis, PostgreSQL catalog server and cluster of
state homes (see clusterlib.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from clusterlib import CatalogServer, Cluster, RedisServer


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def catalog_server() -> Iterator[CatalogServer]:
    server = CatalogServer.started()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, redis_server: RedisServer,
            catalog_server: CatalogServer, request: pytest.FixtureRequest) -> Iterator[Cluster]:
    from debian_root import bootstrap_debian12
    from scratch import discard_if_passed

    tmp = tmp_path_factory.mktemp("cluster")
    discard_if_passed(request, tmp)  # registered first, so it runs after the cluster has stopped
    cached = bootstrap_debian12(tmp / "bootstrap")
    c = Cluster(tmp / "hosts", redis_server, cached.config.cache_dir / "roots", catalog_server.database())
    yield c
    c.stop()
