"""The test server's Python controls: direct store access with the HTTP rules, history, event-driven
waits, fault injection, request records, watch counting, and the ``kube``/``kube_status`` fixtures."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from tests.support.kube import KubeError, KubeServer
from tests.support.kube.clients import api_client, data_download, raw_session, read_events
from tests.test_kube_contract import assert_status

G, V, NS, DD = "velero.io", "v2alpha1", "velero", "datadownloads"


async def test_fixtures_start_servers_with_namespace_velero_and_the_two_crd_flavours(
    kube: KubeServer, kube_status: KubeServer
) -> None:
    assert kube.url.startswith("http://127.0.0.1:")
    assert [n["metadata"]["name"] for n in kube.list("namespaces")] == ["default", NS]
    async with raw_session(kube) as http, http.get(f"/apis/{G}/{V}") as plain:
        assert [r["name"] for r in (await plain.json())["resources"]] == [DD, "datauploads"]
    async with raw_session(kube_status) as http, http.get(f"/apis/{G}/{V}") as split:
        names = [r["name"] for r in (await split.json())["resources"]]
        assert names == [DD, f"{DD}/status", "datauploads", "datauploads/status"]


def test_direct_writes_follow_the_http_rules(kube: KubeServer) -> None:
    created = kube.create(DD, data_download("dd"))
    assert created["metadata"]["generation"] == 1
    assert created["metadata"]["uid"]
    with pytest.raises(KubeError) as invalid:
        kube.create(DD, data_download("bad", nodeOS="plan9"))
    assert invalid.value.code == 422
    assert invalid.value.details["causes"][0]["field"] == "spec.nodeOS"
    with pytest.raises(KubeError) as exists:
        kube.create(DD, data_download("dd"))
    assert exists.value.reason == "AlreadyExists"
    same = kube.patch(DD, "dd", {"spec": {"snapshotID": created["spec"]["snapshotID"]}}, NS)
    assert same["metadata"]["resourceVersion"] == created["metadata"]["resourceVersion"]
    changed = kube.update(DD, {**created, "status": {"phase": "Accepted"}})
    assert changed["metadata"]["generation"] == 2
    with pytest.raises(KubeError) as stale:
        kube.update(DD, created)
    assert stale.value.code == 409
    with pytest.raises(KubeError) as missing:
        kube.delete(DD, "nope", NS)
    assert missing.value.code == 404
    assert kube.get(DD, "nope", NS) is None


def test_direct_writes_have_full_rights_over_status(kube_status: KubeServer) -> None:
    body = data_download("dd")
    body["status"] = {"phase": "Accepted"}
    created = kube_status.create(DD, body)
    assert created["status"] == {"phase": "Accepted"}
    updated = kube_status.update(DD, {**created, "status": {"phase": "InProgress"}})
    assert updated["status"] == {"phase": "InProgress"}
    assert updated["metadata"]["generation"] == 1  # with /status, status changes do not bump generation
    patched = kube_status.patch(DD, "dd", {"status": {"phase": "Completed"}}, NS)
    assert patched["status"] == {"phase": "Completed"}


def test_direct_reads_return_deep_copies(kube: KubeServer) -> None:
    kube.create(DD, data_download("dd"))
    first = kube.get(DD, "dd", NS)
    assert first is not None
    first["spec"]["snapshotID"] = "mutated"
    kube.list(DD)[0]["spec"]["snapshotID"] = "mutated"
    again = kube.get(DD, "dd", NS)
    assert again is not None
    assert again["spec"]["snapshotID"] == "0123abcd"


async def test_history_keeps_every_stored_version_and_the_deletion(kube: KubeServer, tmp_path: Path) -> None:
    kube.create(DD, data_download("dd"))
    async with api_client(kube, tmp_path) as api:
        custom = client.CustomObjectsApi(api)
        for phase in ("Accepted", "InProgress", "Completed"):
            await custom.patch_namespaced_custom_object(
                G, V, NS, DD, "dd", {"status": {"phase": phase}}, _content_type="application/merge-patch+json"
            )
        await custom.delete_namespaced_custom_object(G, V, NS, DD, "dd")
    history = kube.history(DD, "dd", NS)
    assert [r.type for r in history] == ["ADDED", "MODIFIED", "MODIFIED", "MODIFIED", "DELETED"]
    assert [(r.object.get("status") or {}).get("phase") for r in history] == [
        None,
        "Accepted",
        "InProgress",
        "Completed",
        "Completed",
    ]
    assert history[-1].deleted
    assert len({r.object["metadata"]["resourceVersion"] for r in history}) == 5


async def test_wait_for_wakes_on_the_write_that_satisfies_it(kube: KubeServer, tmp_path: Path) -> None:
    kube.create(DD, data_download("dd"))
    waiter = asyncio.create_task(
        kube.wait_for(DD, "dd", NS, lambda o: (o.get("status") or {}).get("phase") == "Completed", timeout=5)
    )
    await asyncio.sleep(0)
    assert not waiter.done()
    kube.patch(DD, "dd", {"status": {"phase": "InProgress"}}, NS)
    await asyncio.sleep(0)
    assert not waiter.done()
    kube.patch(DD, "dd", {"status": {"phase": "Completed"}}, NS)
    found = await waiter
    assert found["status"]["phase"] == "Completed"


async def test_wait_for_times_out_naming_the_last_seen_object(kube: KubeServer) -> None:
    kube.create(DD, data_download("dd"))
    with pytest.raises(TimeoutError) as raised:
        await kube.wait_for(DD, "dd", NS, lambda o: False, timeout=0.05)
    assert '"snapshotID": "0123abcd"' in str(raised.value)


async def test_wait_gone(kube: KubeServer) -> None:
    kube.create(DD, data_download("dd"))
    waiter = asyncio.create_task(kube.wait_gone(DD, "dd", NS, timeout=5))
    await asyncio.sleep(0)
    kube.delete(DD, "dd", NS)
    await waiter
    with pytest.raises(TimeoutError):
        await kube.wait_gone("namespaces", NS, None, timeout=0.05)


async def test_fail_next_answers_matching_requests_with_the_error_unprocessed(kube: KubeServer, tmp_path: Path) -> None:
    kube.create(DD, data_download("dd"))
    kube.fail_next("patch", rf"/{DD}/dd$", 409, "Conflict", count=2)
    async with api_client(kube, tmp_path) as api:
        custom = client.CustomObjectsApi(api)

        async def set_phase() -> None:
            await custom.patch_namespaced_custom_object(
                G, V, NS, DD, "dd", {"status": {"phase": "Accepted"}}, _content_type="application/merge-patch+json"
            )

        for _ in range(2):
            with pytest.raises(ApiException) as raised:
                await set_phase()
            assert_status(raised.value, 409, "Conflict")
        assert len(kube.history(DD, "dd", NS)) == 1  # nothing was written
        await set_phase()
    assert [r.status for r in kube.requests if r.method == "PATCH"] == [409, 409, 200]


async def test_requests_are_recorded(kube: KubeServer, tmp_path: Path) -> None:
    async with api_client(kube, tmp_path) as api:
        await client.CustomObjectsApi(api).list_namespaced_custom_object(G, V, NS, DD, label_selector="a=b")
    record = kube.requests[-1]
    assert (record.method, record.path, record.status) == ("GET", f"/apis/{G}/{V}/namespaces/{NS}/{DD}", 200)
    assert record.query == {"labelSelector": "a=b"}
    assert record.content_type == "application/json"


async def test_watch_count_and_waiting_for_watches(kube: KubeServer) -> None:
    assert kube.watch_count() == 0
    async with raw_session(kube) as http:
        path = f"/apis/{G}/{V}/namespaces/{NS}/{DD}"
        async with http.get(path, params={"watch": "1"}), http.get("/api/v1/pods", params={"watch": "1"}):
            await kube.wait_for_watches(2)
            assert kube.watch_count(DD) == 1
            assert kube.watch_count("pods") == 1
            with pytest.raises(TimeoutError):
                await kube.wait_for_watches(3, timeout=0.05)
            kube.drop_watches()
            await asyncio.wait_for(_until_no_watches(kube), 5)


async def _until_no_watches(kube: KubeServer) -> None:
    while kube.watch_count():
        await kube.store.next_change().wait()


async def test_a_dropped_watch_resumed_after_expiry_gets_410(kube: KubeServer) -> None:
    rv = kube.create(DD, data_download("dd"))["metadata"]["resourceVersion"]
    path = f"/apis/{G}/{V}/namespaces/{NS}/{DD}"
    async with raw_session(kube) as http:
        async with http.get(path, params={"watch": "1", "resourceVersion": rv}):
            await kube.wait_for_watches(1)
            kube.patch(DD, "dd", {"spec": {"cancel": True}}, NS)
            kube.expire_history()
            kube.drop_watches()
        async with http.get(path, params={"watch": "1", "resourceVersion": rv}) as resumed:
            events = await read_events(resumed)
    assert [e["type"] for e in events] == ["ERROR"]
    assert json.dumps(events[0]["object"]["code"]) == "410"


async def test_a_client_closing_its_watch_is_no_longer_counted(kube: KubeServer) -> None:
    async with raw_session(kube) as http:
        async with http.get("/api/v1/pods", params={"watch": "1"}):
            await kube.wait_for_watches(1)
        async with http.get("/api/v1/pods", params={"watch": "1"}) as response:
            await kube.wait_for_watches(1)
            response.close()  # the connection goes away without the server ending the stream
            await asyncio.wait_for(_until_no_watches(kube), 5)
    await asyncio.wait_for(_until_no_watches(kube), 5)
