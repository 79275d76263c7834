"""Who sends what: per-connection deltas from the server's connection list, attributed to the
agents the user keys were minted for, with reconnects and restarted counters accounted for."""

from __future__ import annotations

from corral.bus import PlatformBus
from corral.bus.ingress import ConnSample, IngressMeter, _instant
from tests.bus.conftest import Connect, MiB
from tests.support import eventually


class Directory:
    """Account ``ACC_A`` is org ``a``; user keys ``U1``/``U1b`` are agent a1's, ``U2`` a2's."""

    def org_for_account(self, account: str) -> str | None:
        return {"ACC_A": "a"}.get(account)

    def agent_for_user(self, org: str, user: str) -> str | None:
        return {"U1": "a1", "U1b": "a1", "U2": "a2"}.get(user)


def conn(
    cid: int, user: str, in_bytes: int, in_msgs: int = 0, *, started: float = 0.0
) -> ConnSample:
    return ConnSample(cid, "ACC_A", user, in_bytes, in_msgs, started)


def sent(meter: IngressMeter, now: float, *samples: ConnSample) -> dict[str, tuple[int, int]]:
    reading = meter.update(samples, now)
    return {t.agent: (t.bytes, t.msgs) for t in reading.talkers}


def test_the_rate_is_the_difference_between_two_readings_of_one_connection() -> None:
    meter = IngressMeter(Directory())
    sent(meter, 100.0, conn(1, "U1", 10_000, 10))
    reading = meter.update([conn(1, "U1", 60_000, 35)], 100.5)
    assert reading.seconds == 0.5
    assert [(t.org, t.agent, t.bytes, t.msgs) for t in reading.talkers] == [("a", "a1", 50_000, 25)]
    assert sent(meter, 101.0, conn(1, "U1", 60_000, 35)) == {}  # silent: not a talker


def test_a_new_connection_is_charged_all_it_sent_since_it_started() -> None:
    meter = IngressMeter(Directory())
    sent(meter, 100.0)
    # connected 0.2 s ago and already sent 100 MiB: all of it counts now
    assert sent(meter, 101.0, conn(7, "U2", 100 * MiB, 100, started=100.8)) == {
        "a2": (100 * MiB, 100)
    }


def test_an_old_connection_new_to_the_list_is_charged_its_average_not_its_lifetime() -> None:
    meter = IngressMeter(Directory())
    sent(meter, 3600.0)
    # an hour at 1 KiB/s that only now entered the top list: one second of it
    got = sent(meter, 3601.0, conn(3, "U1", 3600 * 1024, started=1.0))
    assert got == {"a1": (1024, 0)}


def test_the_first_reading_charges_old_connections_one_nominal_interval() -> None:
    meter = IngressMeter(Directory())
    got = sent(meter, 1000.0, conn(3, "U1", 1000 * 1024, started=0.0))
    assert got == {"a1": (1024, 0)}


def test_a_reconnect_is_a_new_connection_and_the_agent_sums_both() -> None:
    meter = IngressMeter(Directory())
    sent(meter, 100.0, conn(1, "U1", 5_000, started=90.0))
    got = sent(meter, 101.0, conn(2, "U1b", 3_000, 3, started=100.5))  # cid 1 gone, 2 is new
    assert got == {"a1": (3_000, 3)}
    got = sent(meter, 102.0, conn(2, "U1b", 4_000, 4), conn(9, "U1", 2_000, 2, started=101.5))
    assert got == {"a1": (3_000, 3)}  # 1,000 more on cid 2 and 2,000 on the new cid 9


def test_counters_that_went_back_mean_a_new_connection_not_a_negative_rate() -> None:
    meter = IngressMeter(Directory())
    sent(meter, 100.0, conn(4, "U1", 50_000, 50, started=50.0))
    # a restarted server hands out cid 4 again, counting from zero
    got = sent(meter, 101.0, conn(4, "U1", 2_000, 2, started=100.9))
    assert got == {"a1": (2_000, 2)}
    got = sent(meter, 102.0, conn(4, "U2", 500, 1, started=101.9))  # same cid, another user
    assert got == {"a2": (500, 1)}


def test_connections_of_no_agent_are_not_counted() -> None:
    meter = IngressMeter(Directory())
    sent(meter, 100.0)
    system = ConnSample(1, "SYS", "U9", 10 * MiB, 10, 99.9)
    platform_link = ConnSample(2, "ACC_A", "LINK", 10 * MiB, 10, 99.9)
    assert sent(meter, 101.0, system, platform_link) == {}


def test_server_timestamps_are_read_to_the_microsecond() -> None:
    assert _instant("2024-05-01T12:00:00.123456789Z") == _instant("2024-05-01T12:00:00.123456Z")
    assert _instant("2024-05-01T14:00:00.5+02:00") == _instant("2024-05-01T12:00:00.5Z")
    assert _instant("2024-05-01T12:00:00Z") is not None
    assert _instant("yesterday") is None and _instant(None) is None


async def test_the_server_reports_what_each_agent_published(
    orgs: PlatformBus, connect: Connect
) -> None:
    creds = orgs.mint_agent_creds("a", "a1", ttl_seconds=60)
    peer = await connect(creds)
    await orgs.ingress()  # the baseline
    status = "org.a.agents.a1.status"
    for _ in range(20):
        await peer.nc.publish(status, b"x" * 10_000)
    await peer.nc.flush()

    seen = [0, 0]  # readings are deltas: what a1 published may be split over several

    async def measured() -> tuple[int, int] | None:
        reading = await orgs.ingress()
        for t in reading.talkers:
            if (t.org, t.agent) == ("a", "a1"):
                seen[0] += t.bytes
                seen[1] += t.msgs
        return (seen[0], seen[1]) if seen[1] >= 20 else None

    got, msgs = await eventually(measured, timeout=10, message="a1's publishes measured")
    assert 200_000 <= got < 260_000, got  # its 20 messages of 10 kB, and a little protocol
    assert 20 <= msgs <= 30, msgs
