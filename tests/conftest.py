"""Shared fixtures: the echo upstream, the fake crAPI, the key ring. Envoys are started by each test module."""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from echo_upstream import echo_server  # noqa: E402
from fake_crapi import crapi_server  # noqa: E402
from tokens import KeyRing  # noqa: E402


@pytest.fixture(scope="session")
def upstream():
    server = echo_server()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def crapi():
    """A fake crAPI upstream (its dashboard, vehicles and orders), per test module."""
    server = crapi_server()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def keys():
    return KeyRing()
