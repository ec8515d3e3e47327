"""The agent's settings, parsed in one place: FERRY_* variables, flags on top, Go durations."""

from __future__ import annotations

import pytest

from agent.errors import ConfigError
from agent.settings import MiB, RestoreSettings, agent_settings_from_env, parse_duration
from agent.velero.tuning import restore_settings_for


def test_environment_then_flags() -> None:
    env = {
        "FERRY_NODE_NAME": "node-1",
        "FERRY_NAMESPACE": "backup",
        "FERRY_CONCURRENCY": "3",
        "FERRY_PROGRESS_INTERVAL": "2.5",
        "FERRY_HTTP_PORT": "9090",
        "FERRY_LOG_FORMAT": "text",
        "FERRY_SHUTDOWN_GRACE": "10",
        "FERRY_VOLUME_POLL_INTERVAL": "0.5",
        "KUBECONFIG": "/etc/kubeconfig",
    }
    s = agent_settings_from_env(env, concurrency=5, http_port=None)
    assert (s.node_name, s.namespace, s.concurrency, s.progress_interval_s) == ("node-1", "backup", 5, 2.5)
    assert (s.http_port, s.log_format, s.shutdown_grace_s, s.volume_poll_interval_s) == (9090, "text", 10.0, 0.5)
    assert s.kubeconfig == "/etc/kubeconfig"
    assert s.datamover == "ferry"
    assert s.kubelet_root == "/var/lib/kubelet"
    assert s.credentials_file == "/credentials/cloud"
    assert s.restore == RestoreSettings()


def test_restore_tuning_for_the_whole_node_comes_from_the_environment() -> None:
    env = {
        "FERRY_NODE_NAME": "n",
        "FERRY_RESTORE_READS_IN_FLIGHT": "24",
        "FERRY_RESTORE_MAX_RANGE": "16MiB",
        "FERRY_RESTORE_MEMORY": "512MiB",
        "FERRY_RESTORE_THREADS": "6",
        "FERRY_RESTORE_DIRECT_IO": "false",
    }
    r = agent_settings_from_env(env).restore
    assert (r.reads_in_flight, r.max_range_bytes, r.memory_bytes, r.threads) == (24, 16 * MiB, 512 * MiB, 6)
    assert r.direct_io is False
    # A DataDownload's dataMoverConfig still overrides the node's defaults.
    assert restore_settings_for({"ferry.readsInFlight": "4"}, r)[0].reads_in_flight == 4


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({}, "the node name is required"),
        ({"FERRY_NODE_NAME": "n", "FERRY_CONCURRENCY": "0"}, "FERRY_CONCURRENCY: '0' must be at least 1"),
        ({"FERRY_NODE_NAME": "n", "FERRY_PROGRESS_INTERVAL": "soon"}, "is not a number of seconds"),
        ({"FERRY_NODE_NAME": "n", "FERRY_LOG_FORMAT": "xml"}, "log format 'xml' must be json or text"),
        ({"FERRY_NODE_NAME": "n", "FERRY_HTTP_PORT": "99999"}, "HTTP port 99999 is out of range"),
        ({"FERRY_NODE_NAME": "n", "FERRY_RESTORE_DIRECT_IO": "maybe"}, "FERRY_RESTORE_DIRECT_IO"),
        ({"FERRY_NODE_NAME": "n", "FERRY_RESTORE_MAX_RANGE": "32KiB"}, "max range must be >= 64 KiB"),
        ({"FERRY_NODE_NAME": "n", "FERRY_RESTORE_READS_IN_FLIGHT": "0"}, "FERRY_RESTORE_READS_IN_FLIGHT"),
    ],
)
def test_bad_settings_are_refused(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        agent_settings_from_env(env)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("10m0s", 600.0), ("1h30m", 5400.0), ("1.5s", 1.5), ("250ms", 0.25), ("0", 0.0), ("2h0m0s", 7200.0)],
)
def test_go_durations(text: str, seconds: float) -> None:
    assert parse_duration(text, "t") == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "10", "ten minutes", "5d", "1h-3m"])
def test_bad_go_durations(text: str) -> None:
    with pytest.raises(ConfigError, match="is not a duration"):
        parse_duration(text, "spec.operationTimeout")


def test_data_mover_config_keys() -> None:
    config = {
        "WriteSparseFiles": "true",
        "ParallelFilesDownload": "3",
        "ferry.threads": "2",
        "ferry.readsInFlight": "16",
        "ferry.memory": "256MiB",
        "ferry.maxRangeBytes": "4MiB",
        "ferry.directIO": "false",
        "SomethingElse": "x",
    }
    settings, unknown = restore_settings_for(config, RestoreSettings())
    assert settings.sparse is True
    assert settings.threads == 2  # Ferry's own key wins over Velero's
    assert settings.reads_in_flight == 16
    assert settings.memory_bytes == 256 * MiB
    assert settings.max_range_bytes == 4 * MiB
    assert settings.direct_io is False
    assert unknown == ["SomethingElse"]
    assert restore_settings_for({}, RestoreSettings()) == (RestoreSettings(), [])


def test_the_manifest_memory_limit_is_a_node_setting() -> None:
    settings = agent_settings_from_env({"FERRY_NODE_NAME": "n", "FERRY_MANIFEST_MEMORY": "256MiB"})
    assert settings.repository.manifest_memory_bytes == 256 * 1024 * 1024
    with pytest.raises(ConfigError, match="FERRY_MANIFEST_MEMORY"):
        agent_settings_from_env({"FERRY_NODE_NAME": "n", "FERRY_MANIFEST_MEMORY": "lots"})
