"""Contract tests of the strict test apiserver's ``coordination.k8s.io/v1`` Leases: the rules of the real API
server a client doing leader election relies on, and kubernetes_asyncio's own leader election over them.

Each test names one rule (``tests/support/kube/__init__.py`` lists them; the lease registry strategy and
``ValidateLeaseSpec`` in Kubernetes are their source) and asserts it, through kubernetes_asyncio where the
client can express the request and raw HTTP where it cannot."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException
from kubernetes_asyncio.leaderelection.electionconfig import Config
from kubernetes_asyncio.leaderelection.leaderelection import LeaderElection
from kubernetes_asyncio.leaderelection.resourcelock.leaselock import LeaseLock

from tests.support.kube import KubeServer
from tests.support.kube.clients import api_client, raw_session
from tests.test_kube_contract import assert_status

NS = "velero"
LEASES = f"/apis/coordination.k8s.io/v1/namespaces/{NS}/leases"
STALE = "the object has been modified; please apply your changes to the latest version and try again"
# Leader election, as short as kubernetes_asyncio allows (retry_period >= 1 s, renew_deadline > 1.2 x retry_period,
# lease_duration > renew_deadline; kept above renew_deadline + retry_period, the longest a leader whose renewals
# fail still believes it leads).
LEASE_DURATION, RENEW_DEADLINE, RETRY_PERIOD = 3, 1.5, 1


def lease(name: str = "ferry", **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": name}, "spec": spec}


def micro_time(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ")


@pytest.fixture
async def coordination(kube: KubeServer, tmp_path: Path) -> AsyncIterator[client.CoordinationV1Api]:
    async with api_client(kube, tmp_path) as api:
        yield client.CoordinationV1Api(api)


async def post(kube: KubeServer, body: Any, **params: str) -> tuple[int, dict[str, Any]]:
    async with raw_session(kube) as http, http.post(LEASES, json=body, params=params) as response:
        return response.status, await response.json()


# -- discovery and the verbs -------------------------------------------------------------------------------


async def test_leases_are_a_namespaced_builtin_of_coordination_k8s_io_v1(
    coordination: client.CoordinationV1Api,
) -> None:
    resources = (await coordination.get_api_resources()).resources
    assert [(r.name, r.kind, r.namespaced) for r in resources] == [("leases", "Lease", True)]  # no leases/status
    assert sorted(resources[0].verbs) == ["create", "delete", "get", "list", "patch", "update", "watch"]
    group = await client.CoordinationApi(coordination.api_client).get_api_group()
    assert group.preferred_version.group_version == "coordination.k8s.io/v1"


async def test_create_answers_201_and_a_taken_name_is_409_already_exists(
    kube: KubeServer, coordination: client.CoordinationV1Api
) -> None:
    created = await coordination.create_namespaced_lease(NS, lease(holderIdentity="a", leaseDurationSeconds=15))
    assert kube.requests[-1].status == 201
    assert created.spec.holder_identity == "a"
    assert created.spec.lease_duration_seconds == 15
    assert created.metadata.generation is None  # built-ins have none here, as upstream for Leases
    with pytest.raises(ApiException) as raised:
        await coordination.create_namespaced_lease(NS, lease(holderIdentity="b"))
    body = assert_status(raised.value, 409, "AlreadyExists")
    assert body["message"] == 'leases.coordination.k8s.io "ferry" already exists'
    assert body["details"] == {"name": "ferry", "group": "coordination.k8s.io", "kind": "leases"}
    assert kube.get("leases", "ferry", NS)["spec"]["holderIdentity"] == "a"  # type: ignore[index]


async def test_a_missing_lease_is_404_with_the_code_in_the_json_body(coordination: client.CoordinationV1Api) -> None:
    with pytest.raises(ApiException) as raised:
        await coordination.read_namespaced_lease("ferry", NS)
    # kubernetes_asyncio's leader election reads json.loads(error.body)["code"] to tell "create it" from a failure.
    assert json.loads(raised.value.body)["code"] == 404
    body = assert_status(raised.value, 404, "NotFound")
    assert body["message"] == 'leases.coordination.k8s.io "ferry" not found'


async def test_a_lease_without_spec_is_stored_with_an_empty_spec(kube: KubeServer) -> None:
    status, created = await post(kube, {"metadata": {"name": "ferry"}})
    assert status == 201
    assert created["spec"] == {}
    assert (created["apiVersion"], created["kind"]) == ("coordination.k8s.io/v1", "Lease")


# -- optimistic concurrency and create-on-update -------------------------------------------------------------


async def test_put_needs_the_current_resource_version(coordination: client.CoordinationV1Api) -> None:
    stale = await coordination.create_namespaced_lease(NS, lease(holderIdentity="a"))
    stale.spec.holder_identity = "b"
    renewed = await coordination.replace_namespaced_lease("ferry", NS, stale)
    assert renewed.spec.holder_identity == "b"
    assert renewed.metadata.resource_version != stale.metadata.resource_version
    stale.spec.holder_identity = "c"
    with pytest.raises(ApiException) as raised:
        await coordination.replace_namespaced_lease("ferry", NS, stale)
    body = assert_status(raised.value, 409, "Conflict")
    assert body["message"] == f'Operation cannot be fulfilled on leases.coordination.k8s.io "ferry": {STALE}'
    # The lease strategy refuses unconditional updates (unlike Secrets or Pods): no resourceVersion is a 422.
    with pytest.raises(ApiException) as raised:
        await coordination.replace_namespaced_lease("ferry", NS, lease(holderIdentity="c"))
    body = assert_status(raised.value, 422, "Invalid")
    assert body["message"] == (
        'leases.coordination.k8s.io "ferry" is invalid: metadata.resourceVersion: '
        "Invalid value: 0x0: must be specified for an update"
    )
    assert body["details"]["causes"] == [
        {
            "reason": "FieldValueInvalid",
            "message": "Invalid value: 0x0: must be specified for an update",
            "field": "metadata.resourceVersion",
        }
    ]


async def test_a_put_of_a_missing_lease_creates_it(kube: KubeServer) -> None:
    body = lease(holderIdentity="a")
    body["metadata"]["resourceVersion"] = "12345"  # ignored: there is nothing to compare it with
    async with raw_session(kube) as http, http.put(f"{LEASES}/ferry", json=body) as response:
        assert response.status == 201
        created = await response.json()
    assert created["spec"] == {"holderIdentity": "a"}
    assert created["metadata"]["uid"]
    assert created["metadata"]["resourceVersion"] != "12345"
    assert [r.type for r in kube.history("leases", "ferry", NS)] == ["ADDED"]


# -- decoding, normalisation and validation -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({"holderIdentity": 5}, "cannot unmarshal number 5 into Go struct field LeaseSpec.spec.holderIdentity"),
        ({"leaseDurationSeconds": "15"}, "cannot unmarshal string into Go struct field LeaseSpec.spec.leaseDuration"),
        ({"leaseDurationSeconds": 1.5}, "cannot unmarshal number 1.5 into"),
        ({"leaseDurationSeconds": 15.0}, "cannot unmarshal number 15.0 into"),
        ({"leaseDurationSeconds": True}, "cannot unmarshal bool into"),
        ({"leaseDurationSeconds": 2**31}, f"cannot unmarshal number {2**31} into"),
        ({"leaseTransitions": -(2**31) - 1}, "of type int32"),
        ({"acquireTime": "2026-11-30T08:00:00Z"}, 'parsing time "2026-11-30T08:00:00Z"'),
        ({"acquireTime": "2026-11-30T08:00:00.000Z"}, "six fractional digits"),
        ({"renewTime": "2026-11-30 08:00:00.000000Z"}, "six fractional digits"),
        ({"renewTime": "2026-11-30T08:00:00.000000"}, "six fractional digits"),
        ({"renewTime": "2026-02-30T08:00:00.000000Z"}, "day is out of range"),
        ({"renewTime": 1767168000}, "cannot unmarshal number 1767168000 into"),
    ],
)
async def test_spec_fields_must_decode_as_their_go_types_or_400(
    kube: KubeServer, spec: dict[str, Any], expected: str
) -> None:
    status, body = await post(kube, lease(**spec))
    assert status == 400
    assert_status(body, 400, "BadRequest")
    assert body["message"].startswith('Lease in version "v1" cannot be handled as a Lease: ')
    assert expected in body["message"]
    assert kube.get("leases", "ferry", NS) is None


async def test_a_spec_that_is_not_an_object_is_400(kube: KubeServer) -> None:
    status, body = await post(kube, {**lease(), "spec": "held"})
    assert status == 400
    assert "Go struct field Lease.spec of type v1.LeaseSpec" in body["message"]


async def test_micro_times_are_stored_in_utc_with_six_fractional_digits(kube: KubeServer) -> None:
    spec = {"acquireTime": "2026-11-30T09:30:00.000001+01:30", "renewTime": "2026-11-30T08:00:00.500000Z"}
    status, created = await post(kube, lease(**spec))
    assert status == 201
    assert created["spec"] == {"acquireTime": "2026-11-30T08:00:00.000001Z", "renewTime": "2026-11-30T08:00:00.500000Z"}


@pytest.mark.parametrize(
    ("spec", "field", "message"),
    [
        ({"leaseDurationSeconds": 0}, "spec.leaseDurationSeconds", "Invalid value: 0: must be greater than 0"),
        ({"leaseDurationSeconds": -5}, "spec.leaseDurationSeconds", "Invalid value: -5: must be greater than 0"),
        (
            {"leaseTransitions": -1},
            "spec.leaseTransitions",
            "Invalid value: -1: must be greater than or equal to 0",
        ),
    ],
)
async def test_durations_and_transitions_out_of_range_are_422(
    kube: KubeServer, spec: dict[str, Any], field: str, message: str
) -> None:
    status, body = await post(kube, lease(**spec))
    assert status == 422
    assert_status(body, 422, "Invalid")
    assert body["message"] == f'Lease.coordination.k8s.io "ferry" is invalid: {field}: {message}'
    assert body["details"]["causes"] == [{"reason": "FieldValueInvalid", "message": message, "field": field}]


async def test_zero_transitions_an_empty_holder_and_nulls_are_valid(kube: KubeServer) -> None:
    spec = {"holderIdentity": "", "leaseTransitions": 0, "acquireTime": None, "leaseDurationSeconds": 1}
    status, created = await post(kube, lease(**spec))
    assert status == 201
    assert created["spec"] == {"holderIdentity": "", "leaseTransitions": 0, "leaseDurationSeconds": 1}


async def test_unknown_and_feature_gated_fields_are_dropped_and_strict_refuses_unknown_ones(
    kube: KubeServer,
) -> None:
    body = lease(holderIdentity="a", holder="typo", strategy="OldestEmulationVersion", preferredHolder="b")
    body["status"] = {"phase": "Held"}
    status, created = await post(kube, body)
    assert status == 201
    assert created["spec"] == {"holderIdentity": "a"}  # strategy, preferredHolder: CoordinatedLeaderElection is off
    assert "status" not in created
    kube.delete("leases", "ferry", NS)
    status, refused = await post(kube, body, fieldValidation="Strict")
    assert status == 400
    assert refused["message"] == 'strict decoding error: unknown field "status", unknown field "spec.holder"'


async def test_updates_follow_the_same_decoding_and_validation(
    kube: KubeServer, coordination: client.CoordinationV1Api
) -> None:
    created = await coordination.create_namespaced_lease(NS, lease(holderIdentity="a"))
    body = lease(holderIdentity="a", leaseDurationSeconds=0)
    body["metadata"]["resourceVersion"] = created.metadata.resource_version
    async with raw_session(kube) as http:
        async with http.put(f"{LEASES}/ferry", json=body) as response:
            assert_status(await response.json(), 422, "Invalid")
        body["spec"] = {"renewTime": "2026-11-30T08:00:00Z"}
        async with http.put(f"{LEASES}/ferry", json=body) as response:
            assert_status(await response.json(), 400, "BadRequest")
        body["spec"] = {"renewTime": "2026-11-30T08:00:00.250000+00:00", "leaseTransitions": 1}
        async with http.put(f"{LEASES}/ferry", json=body) as response:
            assert response.status == 200
            assert (await response.json())["spec"] == {
                "renewTime": "2026-11-30T08:00:00.250000Z",
                "leaseTransitions": 1,
            }


async def test_a_patch_whose_result_does_not_decode_is_422_on_the_patch(
    kube: KubeServer, coordination: client.CoordinationV1Api
) -> None:
    await coordination.create_namespaced_lease(NS, lease(holderIdentity="a"))
    bad = {"spec": {"renewTime": "2026-11-30T08:00:00Z"}}
    with pytest.raises(ApiException) as raised:
        await coordination.patch_namespaced_lease("ferry", NS, bad, _content_type="application/merge-patch+json")
    body = assert_status(raised.value, 422, "Invalid")
    [cause] = body["details"]["causes"]
    assert (cause["field"], cause["reason"]) == ("patch", "FieldValueInvalid")
    assert 'parsing time "2026-11-30T08:00:00Z"' in cause["message"]
    good = {"spec": {"renewTime": "2026-11-30T08:00:00.000000+00:00", "holderIdentity": "b"}}
    patched = await coordination.patch_namespaced_lease("ferry", NS, good)  # strategic merge: a built-in
    stored = kube.get("leases", "ferry", NS)
    assert stored is not None
    assert stored["spec"] == {"holderIdentity": "b", "renewTime": "2026-11-30T08:00:00.000000Z"}
    assert patched.spec.holder_identity == "b"


# -- kubernetes_asyncio's leader election --------------------------------------------------------------------


class Candidate:
    """One ``LeaderElection.run()`` of kubernetes_asyncio over a LeaseLock, through its own kubeconfig client."""

    def __init__(self, identity: str, api: client.ApiClient, elected: asyncio.Queue[str]) -> None:
        self.identity = identity

        async def started_leading() -> None:
            elected.put_nowait(identity)  # returns at once: the library never cancels it if run() itself is

        async def stopped_leading() -> None:
            elected.put_nowait(f"{identity} stopped")

        config = Config(
            LeaseLock("ferry-leader", NS, identity, api),
            lease_duration=LEASE_DURATION,
            renew_deadline=RENEW_DEADLINE,
            retry_period=RETRY_PERIOD,
            onstarted_leading=started_leading,
            onstopped_leading=stopped_leading,
        )
        self.task = asyncio.create_task(LeaderElection(config).run(), name=f"leader-election-{identity}")

    async def stop(self) -> None:
        """Cancel the election: the candidate stops renewing (or trying), as when its process dies."""
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


async def test_kubernetes_asyncio_leader_election_elects_one_leader_and_fails_over_after_the_lease_duration(
    kube: KubeServer, tmp_path: Path
) -> None:
    elected: asyncio.Queue[str] = asyncio.Queue()
    async with api_client(kube, tmp_path / "a", NS) as api_a, api_client(kube, tmp_path / "b", NS) as api_b:
        candidates = {"a": Candidate("a", api_a, elected), "b": Candidate("b", api_b, elected)}
        try:
            async with asyncio.timeout(10):
                first = await elected.get()
            held = kube.get("leases", "ferry-leader", NS)
            assert held is not None
            assert held["spec"]["holderIdentity"] == first
            assert held["spec"]["leaseDurationSeconds"] == LEASE_DURATION
            acquired = micro_time(held["spec"]["acquireTime"])
            # The leader keeps renewing past a whole lease duration; the other candidate, polling meanwhile, waits.
            renewed = await kube.wait_for(
                "leases",
                "ferry-leader",
                NS,
                lambda o: micro_time(o["spec"]["renewTime"]) >= acquired + timedelta(seconds=LEASE_DURATION),
            )
            assert renewed["spec"]["holderIdentity"] == first
            assert micro_time(renewed["spec"]["acquireTime"]) == acquired  # renewals keep the acquire time
            assert elected.empty(), "two leaders at once"
            await candidates[first].stop()
            async with asyncio.timeout(10):
                second = await elected.get()
            assert second == next(name for name in candidates if name != first)
            assert elected.empty()
        finally:
            for candidate in candidates.values():
                await candidate.stop()
    revisions = [r.object["spec"] for r in kube.history("leases", "ferry-leader", NS)]
    holders = [spec["holderIdentity"] for spec in revisions]
    switch = holders.index(second)
    assert set(holders[:switch]) == {first}
    assert set(holders[switch:]) == {second}  # one hand-over, no flapping
    last_renewal = micro_time(revisions[switch - 1]["renewTime"])
    taken_over = micro_time(revisions[switch]["acquireTime"])
    assert taken_over - last_renewal >= timedelta(seconds=LEASE_DURATION)  # not before the lease expired
    assert "leaseTransitions" not in revisions[switch]  # kubernetes_asyncio does not count them (client-go does)
    calls = {(r.method, r.path.removeprefix(LEASES)) for r in kube.requests if r.path.startswith(LEASES)}
    assert calls <= {("GET", "/ferry-leader"), ("POST", ""), ("PUT", "/ferry-leader")}
