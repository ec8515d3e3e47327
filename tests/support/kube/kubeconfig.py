"""A kubeconfig that points a client (kubernetes_asyncio, kubectl) at the test server."""

from __future__ import annotations

from pathlib import Path

import yaml

CONTEXT = "ferry-test"


def kubeconfig(server_url: str, token: str, namespace: str = "default") -> dict[str, object]:
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": CONTEXT, "cluster": {"server": server_url}}],
        "users": [{"name": CONTEXT, "user": {"token": token}}],
        "contexts": [{"name": CONTEXT, "context": {"cluster": CONTEXT, "user": CONTEXT, "namespace": namespace}}],
        "current-context": CONTEXT,
        "preferences": {},
    }


def write_kubeconfig(path: Path | str, server_url: str, token: str, namespace: str = "default") -> Path:
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(yaml.safe_dump(kubeconfig(server_url, token, namespace), sort_keys=False))
    target.chmod(0o600)
    return target
