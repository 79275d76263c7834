"""A standby forwards its client's address to the leader, appended to X-Forwarded-For (which
the leader believes only from the proxies it names)."""

from corral.api.replicas import _forwarded_for


def test_a_standby_appends_its_clients_address_to_x_forwarded_for() -> None:
    plain = [(b"host", b"r2"), (b"accept", b"*/*")]
    assert _forwarded_for(plain, ("10.0.0.7", 5000)) == [*plain, (b"x-forwarded-for", b"10.0.0.7")]
    proxied = [(b"X-Forwarded-For", b"192.0.2.1"), (b"accept", b"*/*")]
    assert _forwarded_for(proxied, ("10.0.0.7", 5000)) == [
        (b"accept", b"*/*"),
        (b"x-forwarded-for", b"192.0.2.1, 10.0.0.7"),
    ]
    assert _forwarded_for(plain, None) == plain
