"""Shared fixtures: an in-process endpoint and a client session to it.

Tests marked ``root`` need root (network namespaces, raw sockets). CI runs
as root and must run them; elsewhere they are skipped and the summary says
so, so a green run without root is never mistaken for full coverage.
"""

from __future__ import annotations

import os

import pytest
import pytest_asyncio

IS_ROOT = os.geteuid() == 0


def pytest_collection_modifyitems(config, items):
    if IS_ROOT:
        return
    skip = pytest.mark.skip(reason="needs root (namespaces / raw sockets); CI runs these as root")
    for item in items:
        if "root" in item.keywords:
            item.add_marker(skip)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not IS_ROOT:
        terminalreporter.write_line(
            "NOTE: not running as root: tests marked 'root' were SKIPPED (CI runs them as root).",
            yellow=True,
        )


@pytest_asyncio.fixture
async def endpoint():
    from marionet.endpoint.daemon import Endpoint, EndpointConfig

    ep = Endpoint(EndpointConfig(name="test-ep"))
    srv = await ep.serve("127.0.0.1", 0, None)
    ep.test_port = srv.sockets[0].getsockname()[1]
    yield ep
    await ep.close()


@pytest_asyncio.fixture
async def session(endpoint):
    from marionet import aio

    s = await aio.connect(f"127.0.0.1:{endpoint.test_port}", insecure=True)
    yield s
    await s.close()


# The lab's fixtures: lab_factory, linear_lab, make_lab (skip when not root).
pytest_plugins = ["marionet.lab.pytest_plugin"]
