"""Contract tests of the strict test apiserver: lists (snapshots, paging, selectors) and watches (wire
format, starting points, 410, bookmarks, timeouts, selector transitions, disconnects)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from kubernetes_asyncio import client, watch
from kubernetes_asyncio.client.exceptions import ApiException

from tests.support.kube import KubeServer
from tests.support.kube.clients import api_client, data_download, raw_session, read_events
from tests.test_kube_contract import assert_status

G, V, NS, DD = "velero.io", "v2alpha1", "velero", "datadownloads"
DD_PATH = f"/apis/{G}/{V}/namespaces/{NS}/{DD}"


@pytest.fixture
async def custom(kube: KubeServer, tmp_path: Path) -> AsyncIterator[client.CustomObjectsApi]:
    async with api_client(kube, tmp_path) as api:
        yield client.CustomObjectsApi(api)


def add(kube: KubeServer, name: str, namespace: str = NS, labels: dict[str, str] | None = None) -> dict[str, Any]:
    body = data_download(name, namespace)
    if labels:
        body["metadata"]["labels"] = labels
    return kube.create(DD, body)


def names(items: list[dict[str, Any]]) -> list[str]:
    return [i["metadata"]["name"] for i in items]


async def take(events: AsyncIterator[dict[str, Any]], count: int) -> list[dict[str, Any]]:
    """The next ``count`` events of a kubernetes_asyncio watch stream (bounded in time)."""
    taken: list[dict[str, Any]] = []
    async with asyncio.timeout(5):
        async for event in events:
            taken.append(event)
            if len(taken) == count:
                break
    return taken


async def next_event(stream: aiohttp.ClientResponse) -> dict[str, Any]:
    async with asyncio.timeout(5):
        line = await stream.content.readline()
    assert line, "the watch ended"
    event: dict[str, Any] = json.loads(line)
    return event


# -- lists -------------------------------------------------------------------------------------------


async def test_list_per_namespace_and_across_namespaces(kube: KubeServer, custom: client.CustomObjectsApi) -> None:
    kube.create("namespaces", {"metadata": {"name": "other"}})
    add(kube, "b")
    add(kube, "a")
    add(kube, "c", "other")
    listed = await custom.list_namespaced_custom_object(G, V, NS, DD)
    assert names(listed["items"]) == ["a", "b"]
    assert listed["kind"] == "DataDownloadList"
    everywhere = await custom.list_cluster_custom_object(G, V, DD)
    assert names(everywhere["items"]) == ["c", "a", "b"]  # ordered by namespace, then name


async def test_list_resource_version_is_the_snapshot_to_watch_from(
    kube: KubeServer, custom: client.CustomObjectsApi
) -> None:
    add(kube, "before")
    listed = await custom.list_namespaced_custom_object(G, V, NS, DD)
    rv = listed["metadata"]["resourceVersion"]
    assert isinstance(rv, str)
    add(kube, "after")
    async with raw_session(kube) as http, http.get(DD_PATH, params={"watch": "true", "resourceVersion": rv}) as stream:
        first = await next_event(stream)
        add(kube, "sentinel")
        second = await next_event(stream)
    assert (first["type"], first["object"]["metadata"]["name"]) == ("ADDED", "after")
    assert second["object"]["metadata"]["name"] == "sentinel"  # "before" never came


async def test_list_limit_and_continue_page_through_one_snapshot(
    kube: KubeServer, custom: client.CustomObjectsApi
) -> None:
    for name in "abcde":
        add(kube, name)
    first = await custom.list_namespaced_custom_object(G, V, NS, DD, limit=2)
    token = first["metadata"]["continue"]
    assert names(first["items"]) == ["a", "b"]
    kube.delete(DD, "c", NS)
    add(kube, "bb")
    second = await custom.list_namespaced_custom_object(G, V, NS, DD, limit=2, _continue=token)
    third = await custom.list_namespaced_custom_object(G, V, NS, DD, limit=2, _continue=second["metadata"]["continue"])
    assert names(second["items"]) == ["c", "d"]
    assert names(third["items"]) == ["e"]
    assert "continue" not in third["metadata"]
    assert second["metadata"]["resourceVersion"] == first["metadata"]["resourceVersion"]


async def test_an_expired_continue_token_is_410(kube: KubeServer, custom: client.CustomObjectsApi) -> None:
    for name in "abc":
        add(kube, name)
    first = await custom.list_namespaced_custom_object(G, V, NS, DD, limit=1)
    kube.expire_history()
    with pytest.raises(ApiException) as raised:
        await custom.list_namespaced_custom_object(G, V, NS, DD, limit=1, _continue=first["metadata"]["continue"])
    assert_status(raised.value, 410, "Expired")


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ("tier=db", ["db1", "db2"]),
        ("tier==db", ["db1", "db2"]),
        ("tier!=db", ["none", "web"]),
        ("tier in (web, db)", ["db1", "db2", "web"]),
        ("tier notin (web)", ["db1", "db2", "none"]),
        ("tier", ["db1", "db2", "web"]),
        ("!tier", ["none"]),
        ("tier=db,zone=a", ["db1"]),
    ],
)
async def test_label_selectors(
    kube: KubeServer, custom: client.CustomObjectsApi, selector: str, expected: list[str]
) -> None:
    add(kube, "db1", labels={"tier": "db", "zone": "a"})
    add(kube, "db2", labels={"tier": "db"})
    add(kube, "web", labels={"tier": "web"})
    add(kube, "none")
    listed = await custom.list_namespaced_custom_object(G, V, NS, DD, label_selector=selector)
    assert names(listed["items"]) == expected


async def test_custom_resources_allow_only_name_and_namespace_field_selectors(
    kube: KubeServer, custom: client.CustomObjectsApi
) -> None:
    add(kube, "a")
    add(kube, "b")
    by_name = await custom.list_cluster_custom_object(G, V, DD, field_selector="metadata.name=b")
    assert names(by_name["items"]) == ["b"]
    not_ns = await custom.list_cluster_custom_object(G, V, DD, field_selector=f"metadata.namespace!={NS}")
    assert names(not_ns["items"]) == []
    with pytest.raises(ApiException) as raised:
        await custom.list_cluster_custom_object(G, V, DD, field_selector="spec.snapshotID=x")
    assert "field label not supported" in assert_status(raised.value, 400, "BadRequest")["message"]


async def test_pods_also_allow_node_name_and_phase_field_selectors(kube: KubeServer, tmp_path: Path) -> None:
    for name, node, phase in (("p1", "n1", "Running"), ("p2", "n2", "Running"), ("p3", "n1", "Pending")):
        pod = {
            "metadata": {"name": name, "namespace": NS},
            "spec": {"nodeName": node, "containers": [{"name": "c"}]},
            "status": {"phase": phase},
        }
        kube.create("pods", pod)
    async with api_client(kube, tmp_path) as api:
        core = client.CoreV1Api(api)
        found = await core.list_pod_for_all_namespaces(field_selector="spec.nodeName=n1,status.phase=Running")
        assert [p.metadata.name for p in found.items] == ["p1"]
        with pytest.raises(ApiException) as raised:
            await core.list_namespaced_pod(NS, field_selector="spec.hostname=x")
        assert_status(raised.value, 400, "BadRequest")


# -- watch wire format ---------------------------------------------------------------------------------


async def test_watch_is_chunked_json_one_event_per_line(kube: KubeServer) -> None:
    add(kube, "a")
    async with raw_session(kube) as http, http.get(DD_PATH, params={"watch": "1"}) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("application/json")
        assert response.headers["Transfer-Encoding"] == "chunked"
        add(kube, "b")
        lines = [await response.content.readline() for _ in range(2)]
    events = [json.loads(line) for line in lines]
    assert all(line.endswith(b"}\n") for line in lines)
    assert [set(e) for e in events] == [{"type", "object"}] * 2
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [("ADDED", "a"), ("ADDED", "b")]
    assert events[0]["object"]["kind"] == "DataDownload"


@pytest.mark.parametrize(
    ("value", "watching"),
    [
        ("true", True),
        ("True", True),
        ("1", True),
        ("", True),
        ("yes", True),
        ("0", False),
        ("false", False),
        ("FALSE", False),
    ],
)
async def test_watch_parameter_truthiness(kube: KubeServer, value: str, watching: bool) -> None:
    add(kube, "a")
    async with raw_session(kube) as http, http.get(DD_PATH, params={"watch": value}) as response:
        first = json.loads(await response.content.readline())
    if watching:
        assert first["type"] == "ADDED"
    else:
        assert first["kind"] == "DataDownloadList"


@pytest.mark.parametrize("rv", [None, "0"])
async def test_watch_from_unset_or_zero_starts_with_synthetic_added(
    kube: KubeServer, custom: client.CustomObjectsApi, rv: str | None
) -> None:
    add(kube, "a")
    add(kube, "b")
    kube.patch(DD, "a", {"spec": {"cancel": True}}, NS)
    kwargs: dict[str, Any] = {} if rv is None else {"resource_version": rv}
    async with watch.Watch() as w:
        stream = w.stream(custom.list_namespaced_custom_object, G, V, NS, DD, **kwargs)
        events = await take(stream, 2)
        add(kube, "sentinel")
        events += await take(stream, 1)
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [
        ("ADDED", "a"),
        ("ADDED", "b"),
        ("ADDED", "sentinel"),  # the patch of "a" before the watch is not replayed
    ]
    assert events[0]["object"]["spec"]["cancel"] is True


async def test_watch_from_a_resource_version_sends_only_later_changes_in_order(
    kube: KubeServer, custom: client.CustomObjectsApi
) -> None:
    created = add(kube, "a")
    kube.patch(DD, "a", {"spec": {"cancel": True}}, NS)
    add(kube, "b")
    kube.delete(DD, "a", NS)
    rv = created["metadata"]["resourceVersion"]
    async with watch.Watch() as w:
        stream = w.stream(custom.list_namespaced_custom_object, G, V, NS, DD, resource_version=rv)
        events = await take(stream, 3)
        add(kube, "sentinel")
        events += await take(stream, 1)
    seen = [(e["type"], e["object"]["metadata"]["name"]) for e in events]
    assert seen == [("MODIFIED", "a"), ("ADDED", "b"), ("DELETED", "a"), ("ADDED", "sentinel")]
    assert len({e["object"]["metadata"]["resourceVersion"] for e in events}) == 4


async def test_watch_from_an_expired_version_gets_200_then_one_410_error_event(kube: KubeServer) -> None:
    old = add(kube, "a")["metadata"]["resourceVersion"]
    add(kube, "b")
    kube.expire_history()
    params = {"watch": "true", "resourceVersion": old}
    async with raw_session(kube) as http, http.get(DD_PATH, params=params) as response:
        assert response.status == 200
        events = await read_events(response)  # the server closes the stream after the ERROR event
    assert len(events) == 1
    assert events[0]["type"] == "ERROR"
    status = assert_status(events[0]["object"], 410, "Expired")
    assert status["message"].startswith(f"too old resource version: {old} (")


async def test_kubernetes_asyncio_retries_a_410_once_then_raises(
    kube: KubeServer, custom: client.CustomObjectsApi
) -> None:
    old = add(kube, "a")["metadata"]["resourceVersion"]
    add(kube, "b")
    kube.expire_history()

    async def consume() -> None:
        async with watch.Watch() as w:
            async for _ in w.stream(custom.list_namespaced_custom_object, G, V, NS, DD, resource_version=old):
                pass

    with pytest.raises(ApiException) as raised:
        await consume()
    assert raised.value.status == 410
    watches = [r for r in kube.requests if r.query.get("watch")]
    assert [r.query["resourceVersion"] for r in watches] == [old, old]


async def test_bookmarks_only_with_allow_watch_bookmarks(kube: KubeServer) -> None:
    async with raw_session(kube) as http:
        plain = await http.get(DD_PATH, params={"watch": "true"})
        marked = await http.get(DD_PATH, params={"watch": "true", "allowWatchBookmarks": "true"})
        async with plain, marked:
            await kube.wait_for_watches(2)
            kube.send_bookmarks()
            add(kube, "a")
            bookmark = await next_event(marked)
            assert bookmark["type"] == "BOOKMARK"
            assert bookmark["object"] == {
                "apiVersion": "velero.io/v2alpha1",
                "kind": "DataDownload",
                "metadata": {"resourceVersion": bookmark["object"]["metadata"]["resourceVersion"]},
            }
            assert (await next_event(marked))["type"] == "ADDED"
            assert (await next_event(plain))["type"] == "ADDED"  # no bookmark came first


async def test_idle_watches_get_periodic_bookmarks(tmp_path: Path) -> None:
    async with KubeServer([], bookmark_interval=0.05) as kube, raw_session(kube) as http:
        params = {"watch": "true", "allowWatchBookmarks": "true", "resourceVersion": "0"}
        async with http.get("/api/v1/namespaces", params=params) as stream:
            assert (await next_event(stream))["type"] == "ADDED"
            bookmark = await next_event(stream)
            assert bookmark["type"] == "BOOKMARK"
            assert bookmark["object"]["metadata"]["resourceVersion"] == str(kube.store.resource_version)


async def test_timeout_seconds_ends_the_stream_cleanly(kube: KubeServer) -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with (
        raw_session(kube) as http,
        http.get(DD_PATH, params={"watch": "true", "timeoutSeconds": "1"}) as response,
    ):
        body = await response.read()  # raises ClientPayloadError on an unclean end
    assert body == b""
    assert 0.9 <= loop.time() - started < 5
    assert kube.watch_count() == 0


async def test_an_object_that_stops_matching_the_selector_is_sent_as_deleted(kube: KubeServer) -> None:
    add(kube, "a", labels={"pick": "yes"})
    async with raw_session(kube) as http:
        params = {"watch": "true", "labelSelector": "pick=yes", "resourceVersion": "0"}
        async with http.get(DD_PATH, params=params) as stream:
            assert (await next_event(stream))["type"] == "ADDED"
            changed = kube.patch(DD, "a", {"metadata": {"labels": {"pick": "no"}}}, NS)
            gone = await next_event(stream)
            assert gone["type"] == "DELETED"
            assert gone["object"]["metadata"]["labels"] == {"pick": "yes"}
            assert gone["object"]["metadata"]["resourceVersion"] == changed["metadata"]["resourceVersion"]
            kube.patch(DD, "a", {"metadata": {"labels": {"pick": "yes"}}}, NS)
            assert (await next_event(stream))["type"] == "ADDED"


async def test_watch_field_selector_follows_one_object(kube: KubeServer) -> None:
    async with raw_session(kube) as http:
        params = {"watch": "true", "fieldSelector": "metadata.name=b"}
        async with http.get(DD_PATH, params=params) as stream:
            await kube.wait_for_watches(1)
            add(kube, "a")
            add(kube, "b")
            assert (await next_event(stream))["object"]["metadata"]["name"] == "b"


async def test_drop_watches_disconnects_the_client(kube: KubeServer, custom: client.CustomObjectsApi) -> None:
    async def consume() -> None:
        async with watch.Watch() as w:
            async for _ in w.stream(custom.list_namespaced_custom_object, G, V, NS, DD):
                pass

    task = asyncio.create_task(consume())
    try:
        await kube.wait_for_watches(1)
        kube.drop_watches()
        with pytest.raises(aiohttp.ClientPayloadError):
            await asyncio.wait_for(task, 5)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    await kube.wait_for_watches(0)  # trivially true; the count must drop too
    assert kube.watch_count() == 0


async def test_stop_ends_open_watches(tmp_path: Path) -> None:
    kube = await KubeServer([]).start()
    try:
        async with raw_session(kube) as http, http.get("/api/v1/namespaces", params={"watch": "1"}) as stream:
            assert (await next_event(stream))["type"] == "ADDED"
            await kube.stop()
            assert await stream.content.read() == b""
    finally:
        await kube.stop()
    assert kube.watch_count() == 0


async def test_watch_list_is_refused_as_not_modelled(kube: KubeServer) -> None:
    params = {"watch": "true", "sendInitialEvents": "true", "resourceVersionMatch": "NotOlderThan"}
    async with raw_session(kube) as http, http.get(DD_PATH, params=params) as response:
        body = assert_status(await response.json(), 400, "BadRequest")
    assert "sendInitialEvents" in body["message"]
    assert "not modelled" in body["message"]


async def test_a_watch_sees_builtin_kinds_with_kind_and_api_version(kube: KubeServer, tmp_path: Path) -> None:
    kube.create("secrets", {"metadata": {"name": "s", "namespace": NS}})
    async with api_client(kube, tmp_path) as api, watch.Watch() as w:
        events = await take(w.stream(client.CoreV1Api(api).list_namespaced_secret, NS), 1)
    assert [e["type"] for e in events] == ["ADDED"]
    assert events[0]["object"].metadata.name == "s"
    assert events[0]["raw_object"]["kind"] == "Secret"
    assert events[0]["raw_object"]["apiVersion"] == "v1"
