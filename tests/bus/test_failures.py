"""nats-py's exceptions leave the bus as Corral's error tree."""

from __future__ import annotations

import nats.errors
import nats.js.errors
import pytest

from corral.bus import ViolationRecorder
from corral.bus.failures import translate, translating
from corral.domain.errors import (
    Conflict,
    CorralError,
    InvalidInput,
    NotFound,
    PermissionDenied,
    QuotaExceeded,
    Unauthenticated,
    Unavailable,
)


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (nats.errors.TimeoutError(), Unavailable),
        (nats.errors.NoRespondersError(), Unavailable),
        (nats.errors.ConnectionClosedError(), Unavailable),
        (nats.errors.NoServersError(), Unavailable),
        (nats.errors.MaxPayloadError(), InvalidInput),
        (nats.errors.Error("nats: 'Authorization Violation'"), Unauthenticated),
        (nats.js.errors.APIError(code=500, err_code=10047, description="storage"), QuotaExceeded),
        (nats.js.errors.APIError(code=503, err_code=10077, description="full"), QuotaExceeded),
        (nats.js.errors.NotFoundError(code=404, err_code=10059), NotFound),
        (nats.js.errors.APIError(code=400, err_code=10058, description="in use"), Conflict),
        (nats.js.errors.BadRequestError(code=400, err_code=10052), InvalidInput),
        (nats.js.errors.ServiceUnavailableError(code=503), Unavailable),
    ],
)
def test_each_nats_failure_maps_to_one_error(exc: Exception, expected: type[CorralError]) -> None:
    error = translate(exc, doing="testing")
    assert type(error) is expected
    assert error.message.startswith("testing")


async def test_a_recorded_violation_wins_over_the_timeout_it_caused() -> None:
    recorder = ViolationRecorder()
    violation = 'nats: permissions violation for publish to "x"'
    with (
        pytest.raises(PermissionDenied, match='"x"') as raised,
        translating("asking", recorder=recorder),
    ):
        await recorder.on_error(nats.errors.Error(violation))  # arrives while we wait
        raise nats.errors.TimeoutError
    assert raised.value.details["violations"] == [violation]
    recorder.check()  # reported once
    await recorder.wait(0.01)  # nothing new: returns


async def test_other_errors_are_kept_for_diagnostics_but_not_raised() -> None:
    recorder = ViolationRecorder()
    await recorder.on_error(nats.errors.StaleConnectionError())
    recorder.check()
    assert recorder.pending == ()
    assert len(recorder.errors) == 1
