"""Agents sharing a cluster: racing claims, the per-node concurrency limit, conflicts on status writes,
and a watch that expires or is cut."""

from __future__ import annotations

import asyncio
from pathlib import Path

from agent.controller.jobs import Restorer
from tests.support.cluster import NS, Cluster, CountingRestorer, agent_settings, running_agent
from tests.support.faulty_proxy import FaultyProxy
from tests.test_agent_lifecycle import LIFECYCLE


async def test_two_agents_race_and_each_restore_happens_once(cluster: Cluster, tiny_snapshot: tuple[str, Path]) -> None:
    """Every volume is mounted on both nodes (RWX), so both agents try to claim every DataDownload."""
    snapshot_id, source = tiny_snapshot
    names = [f"race-{i}" for i in range(8)]
    mounts = {name: cluster.add_volume("app", f"{name}-claim", ["node-a", "node-b"]) for name in names}
    counters: list[CountingRestorer] = []

    def counting(node: str) -> object:
        def wrap(inner: Restorer) -> Restorer:
            counters.append(CountingRestorer(inner, node))
            return counters[-1]

        return wrap

    settings_a = agent_settings(cluster, "node-a", concurrency=2)
    settings_b = agent_settings(cluster, "node-b", concurrency=2)
    async with running_agent(settings_a, counting("node-a")), running_agent(settings_b, counting("node-b")):  # type: ignore[arg-type]
        for name in names:
            cluster.create_dd(name, snapshot_id, f"{name}-claim")
        finished = [await cluster.wait_phase(name, "Completed", "Failed", "Canceled") for name in names]

    assert [f["status"]["phase"] for f in finished] == ["Completed"] * len(names)
    runs: dict[str, list[str]] = {}
    for counter in counters:
        for key, nodes in counter.runs.items():
            runs.setdefault(key, []).extend(nodes)
    assert sorted(runs) == sorted(f"{NS}/{n}" for n in names)
    for name, f in zip(names, finished, strict=True):
        node = f["status"]["node"]
        assert runs[f"{NS}/{name}"] == [node], f"{name} restored by {runs[f'{NS}/{name}']}"
        assert f["status"]["acceptedByNode"] == node
        assert cluster.phases(name) == LIFECYCLE
        restored = mounts[name][0 if node == "node-a" else 1]
        assert (restored / "note.txt").read_bytes() == (source / "note.txt").read_bytes()
    conflicts = [r for r in cluster.kube.requests if r.method == "PATCH" and r.status == 409]
    assert conflicts, "the agents never raced (no 409): the test proves nothing"


async def test_concurrency_limit_queues_the_rest(
    cluster: Cluster, tree_snapshot: tuple[str, Path], proxy: FaultyProxy, slow_bsl: str
) -> None:
    snapshot_id, _ = tree_snapshot
    names = ["queued-0", "queued-1", "queued-2"]
    for name in names:
        cluster.add_volume("app", f"{name}-claim", ["node-a"])
    proxy.stall_ranged = True
    async with running_agent(agent_settings(cluster, "node-a", concurrency=1)) as agent:
        for name in names:
            cluster.create_dd(name, snapshot_id, f"{name}-claim", bsl=slow_bsl)
        async with asyncio.timeout(10):
            await proxy.holding.wait()
        assert agent.controller is not None
        # Let every DataDownload reach Prepared: the two that wait for the slot stay there.
        for name in names:
            await cluster.wait_phase(name, "Prepared", "InProgress")
        assert agent.controller.load.running == 1
        proxy.stall_ranged = False
        proxy.released.set()
        for name in names:
            done = await cluster.wait_phase(name, "Completed", "Failed", "Canceled")
            assert done["status"]["phase"] == "Completed", done["status"].get("message")

    # Replay every write in the server's order: never two InProgress at once.
    timeline = sorted(
        (int(rev.object["metadata"]["resourceVersion"]), rev.object["metadata"]["name"], rev.object.get("status") or {})
        for name in names
        for rev in cluster.kube.history("datadownloads", name, NS)
        if not rev.deleted
    )
    phase: dict[str, str] = {}
    most = 0
    for _, name, status in timeline:
        phase[name] = status.get("phase", "New")
        most = max(most, sum(p in ("InProgress", "Canceling") for p in phase.values()))
    assert most == 1


async def test_conflicting_status_write_is_retried_without_losing_others_fields(
    cluster: Cluster, tiny_snapshot: tuple[str, Path]
) -> None:
    snapshot_id, _ = tiny_snapshot
    cluster.add_volume("app", "data", ["node-a"])
    cluster.create_dd("contested", snapshot_id, "data")
    # Someone else (Velero) writes between our read and our write: the first status writes are refused.
    cluster.kube.fail_next("PATCH", r"/datadownloads/contested$", 409, reason="Conflict", count=2)
    cluster.kube.patch(
        "datadownloads", "contested", {"metadata": {"annotations": {"velero.io/note": "kept"}}}, namespace=NS
    )
    async with running_agent(agent_settings(cluster, "node-a")):
        done = await cluster.wait_phase("contested", "Completed", "Failed", "Canceled")
    assert done["status"]["phase"] == "Completed"
    assert done["metadata"]["annotations"]["velero.io/note"] == "kept"
    assert done["metadata"]["annotations"]["ferry.dev/accepted-by"] == "node-a"
    assert done["metadata"]["labels"]["velero.io/async-operation-id"] == "dd-contested"
    refused = [r for r in cluster.kube.requests if r.method == "PATCH" and r.status == 409]
    assert len(refused) >= 2  # the two injected, plus any real race between the reporter and the phase writes
    assert cluster.phases("contested") == LIFECYCLE


async def test_watch_expired_while_disconnected_relists(cluster: Cluster, tiny_snapshot: tuple[str, Path]) -> None:
    snapshot_id, _ = tiny_snapshot
    cluster.add_volume("app", "data", ["node-a"])
    cluster.add_volume("app", "gone-claim", ["node-b"])
    cluster.create_dd("before", snapshot_id, "gone-claim")  # known to the agent, deleted while it is away
    async with running_agent(agent_settings(cluster, "node-a")) as agent:
        assert agent.controller is not None
        assert agent.controller.watcher.lists == 1
        # All before the agent runs again: cut its watch, change things, forget the history it would need.
        cluster.kube.drop_watches()
        cluster.kube.delete("datadownloads", "before", namespace=NS)
        cluster.create_dd("missed", snapshot_id, "data")
        cluster.kube.expire_history()
        done = await cluster.wait_phase("missed", "Completed", "Failed", "Canceled")
        assert agent.controller.watcher.lists == 2
        assert agent.controller.worker("before") is None, "still waiting for a DataDownload that is gone"
    assert done["status"]["phase"] == "Completed"
    assert cluster.phases("missed") == LIFECYCLE


async def test_dropped_watch_resumes_without_relisting(cluster: Cluster, tiny_snapshot: tuple[str, Path]) -> None:
    snapshot_id, _ = tiny_snapshot
    cluster.add_volume("app", "data", ["node-a"])
    async with running_agent(agent_settings(cluster, "node-a")) as agent:
        assert agent.controller is not None
        cluster.kube.drop_watches()
        cluster.create_dd("after-drop", snapshot_id, "data")
        done = await cluster.wait_phase("after-drop", "Completed", "Failed", "Canceled")
        assert agent.controller.watcher.lists == 1
    assert done["status"]["phase"] == "Completed"
    watches = [r for r in cluster.kube.requests if r.query.get("watch") and r.path.endswith("/datadownloads")]
    assert len(watches) >= 2
    assert all(r.query.get("resourceVersion") for r in watches)
