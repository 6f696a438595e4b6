"""check_ray_address: a HOST:PORT Ray address with nothing listening fails at once, before
ray.init spends minutes retrying the GCS. Loopback sockets only, in-process."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest

from ie_flow import IEFlowError
from ie_flow.executors.ray import check_ray_address


@pytest.fixture
def listening_port() -> Iterator[int]:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        yield server.getsockname()[1]


@pytest.fixture
def closed_port() -> int:
    # A port the kernel just handed out and that nothing listens on any more.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_closed_port_fails_at_once_with_the_address(closed_port: int) -> None:
    address = f"127.0.0.1:{closed_port}"
    start = time.perf_counter()
    with pytest.raises(IEFlowError, match=f"cannot reach the Ray cluster at {address}: Connection refused"):
        check_ray_address(address)
    assert time.perf_counter() - start < 1.0


def test_port_1_from_the_issue_fails_at_once() -> None:
    start = time.perf_counter()
    with pytest.raises(IEFlowError, match="cannot reach the Ray cluster at 127.0.0.1:1"):
        check_ray_address("127.0.0.1:1")
    assert time.perf_counter() - start < 1.0


def test_listening_port_passes(listening_port: int) -> None:
    assert check_ray_address(f"127.0.0.1:{listening_port}") is None
    assert check_ray_address(f"localhost:{listening_port}") is None


@pytest.mark.parametrize("address", [None, "", "auto", "local", "ray://127.0.0.1:1", "ray://nowhere.invalid:10001"])
def test_addresses_left_to_ray_init_are_not_probed(address: str | None) -> None:
    # ray:// and auto resolve or connect differently; the probe must not refuse them.
    assert check_ray_address(address) is None


@pytest.mark.parametrize("address", ["127.0.0.1", "127.0.0.1:http", "127.0.0.1:0", "127.0.0.1:70000", ":6379"])
def test_malformed_address_is_bad_input(address: str) -> None:
    with pytest.raises(IEFlowError, match="bad Ray address"):
        check_ray_address(address)
