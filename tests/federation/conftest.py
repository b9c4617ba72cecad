"""The federation fixture: three datacenters of real agents for a whole module."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from support_federation import Federation, start_federation, stop_federation


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    fed = start_federation(tmp_path_factory.mktemp("federation"))
    try:
        yield fed
    finally:
        stop_federation(fed)
