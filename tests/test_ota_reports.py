"""Device reports steer rollouts, so only enrolled devices steer them: forged, anonymous, replayed
and stuffed reports change no rollout decision and are rate-limited; an enrolled fleet that really
fails still halts the release (the fleet test in test_ota.py does it end to end with installs)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edgekit.errors import OtaRequestError
from edgekit.ota import contract
from edgekit.ota.operator import bundle_tar, call
from edgekit.ota.service.core import HaltPolicy
from tests.ota_helpers import LiveServer

pytest.importorskip("fastapi")


@pytest.fixture
def server(tmp_path: Path, ota_keys: Path) -> Iterator[LiveServer]:
    live = LiveServer(tmp_path / "server", ota_keys, halt=HaltPolicy(failure_rate_bp=2000, min_reports=5))
    yield live
    live.stop()


def _status(fn: Any) -> int:
    try:
        fn()
    except OtaRequestError as exc:
        return exc.status
    return 200


def _report(server: LiveServer, token: str | None, device: str, outcome: str = "failed", release: int = 2) -> Any:
    return call(server.url, "POST", "/v1/reports", token=token,
                body={"device_id": device, "model": "digits", "channel": "stable", "release": release, "outcome": outcome})


def _enrol(server: LiveServer, device: str, enrolment: str) -> str:
    return str(call(server.url, "POST", "/v1/devices/enrol", body={"device_id": device, "enrolment_token": enrolment})
               ["device_token"])


def _halted(server: LiveServer) -> bool:
    return bool(server.service.channel("digits", "stable")["state"]["rollout"]["halted"])


def test_forged_replayed_and_stuffed_reports_change_no_rollout_decision(server: LiveServer,
                                                                       ota_bundles: dict[str, Path]) -> None:
    publish = server.token("publish")
    for bundle, points in ((ota_bundles["v1"], 10000), (ota_bundles["v3"], 1000)):
        call(server.url, "POST", f"/v1/models/digits/channels/stable/releases?basis_points={points}", token=publish,
             data=bundle_tar(bundle), content_type="application/x-tar")
    seed = "digits/stable/2"
    inside = [f"dev-{i}" for i in range(400) if contract.bucket(f"dev-{i}", seed) < 1000]
    outside = [f"dev-{i}" for i in range(400) if contract.bucket(f"dev-{i}", seed) >= 1000]
    enrolment = server.enrolment()

    # anonymous and forged: refused, not stored
    assert {_status(lambda i=i: _report(server, None, f"made-up-{i}")) for i in range(10)} == {401}
    assert {_status(lambda i=i: _report(server, "ekd_forged", f"made-up-{i}")) for i in range(10)} == {401}
    assert _status(lambda: _report(server, publish, "made-up")) == 401  # an operator token is not a device's
    # one real device's token cannot speak for others
    mine = _enrol(server, inside[0], enrolment)
    assert {_status(lambda d=d: _report(server, mine, d)) for d in inside[1:6]} == {403}
    # replayed: counted once, then rate-limited
    answers = [_status(lambda: _report(server, mine, inside[0])) for _ in range(30)]
    assert answers[0] == 200 and 429 in answers
    # devices the release was never offered to (outside the 10 %) do not count
    for d in outside[:8]:
        assert _report(server, _enrol(server, d, enrolment), d)["counted"] is False
    release = server.service.channel("digits", "stable")["releases"][1]
    assert release["outcomes"] == {"failed": 1} and not _halted(server)

    # stuffing: an enrolment token enrols at most its max_devices
    small = server.registry.create_enrolment("batch of 3", 3)
    for i in range(3):
        _enrol(server, f"stuffed-{i}", small)
    assert _status(lambda: _enrol(server, "stuffed-3", small)) == 403
    assert _status(lambda: _enrol(server, inside[0], small)) == 409  # an id enrolled by another batch
    assert _status(lambda: _enrol(server, "x", "eke_unknown")) == 401

    # enrolled devices that were offered the release and failed it: the rollout halts itself
    for d in inside[1:5]:
        _report(server, _enrol(server, d, enrolment), d)
    assert _halted(server)
    state = server.service.channel("digits", "stable")["releases"][1]
    assert state["outcomes"] == {"failed": 5} and "automatic: 5 of 5" in state["halted_reason"]
    # the operator resumes: the failures seen so far do not halt it again by themselves, one more does not either
    call(server.url, "POST", "/v1/models/digits/channels/stable/resume", token=server.token("rollout"))
    _report(server, _enrol(server, inside[5], enrolment), inside[5])
    assert not _halted(server)


def test_operator_reads_need_a_token_and_devices_keep_their_public_paths(server: LiveServer) -> None:
    assert _status(lambda: call(server.url, "GET", "/v1/models")) == 401
    assert _status(lambda: call(server.url, "GET", "/v1/models/digits/channels/stable")) == 401
    assert _status(lambda: call(server.url, "GET", "/v1/models", token=server.token("read"))) == 200
    assert call(server.url, "GET", "/metadata/timestamp.json")["signed"]["_type"] == "timestamp"
    assert call(server.url, "GET", "/v1/trusted-root")["signed"]["_type"] == "root"
