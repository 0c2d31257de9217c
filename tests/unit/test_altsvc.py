"""protocols/altsvc.py: the Alt-Svc value from the bound UDP ports (pure)."""

from __future__ import annotations

import pytest

from quicserve.protocols.altsvc import alt_svc_value


def test_one_port() -> None:
    assert alt_svc_value([8443], max_age=86400) == b'h3=":8443"; ma=86400'


def test_one_entry_per_distinct_port_in_bind_order() -> None:
    value = alt_svc_value([443, 8443, 443, 8443], max_age=60)
    assert value == b'h3=":443"; ma=60, h3=":8443"; ma=60'


@pytest.mark.parametrize(("ports", "kwargs"), [
    ([], {}),
    ([443], {"enabled": False}),
    ([443], {"alpns": ("hq-interop",)}),
])
def test_nothing_to_advertise(ports: list[int], kwargs: dict[str, object]) -> None:
    assert alt_svc_value(ports, max_age=86400, **kwargs) is None  # type: ignore[arg-type]


def test_h3_among_other_alpns() -> None:
    assert alt_svc_value([4433], max_age=0, alpns=("hq-interop", "h3")) == b'h3=":4433"; ma=0'


@pytest.mark.parametrize("port", [0, 65536, -1])
def test_unbound_port_is_a_caller_bug(port: int) -> None:
    with pytest.raises(ValueError):
        alt_svc_value([port], max_age=1)


def test_negative_max_age() -> None:
    with pytest.raises(ValueError):
        alt_svc_value([443], max_age=-1)
