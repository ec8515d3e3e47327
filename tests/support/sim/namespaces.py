"""The namespace controller: empties a terminating namespace, then finalizes it. See the package docstring."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tests.support.kube import KubeError

from .objects import meta, spec, terminating

if TYPE_CHECKING:
    from .cluster import SimCluster


class NamespaceController:
    """Kubernetes' namespace controller: every namespaced object in a terminating namespace is deleted (pods
    gracefully, objects with finalizers left to the controllers that hold them); once nothing is left, the
    ``kubernetes`` finalizer comes off ``spec.finalizers`` and the API server removes the namespace."""

    name = "namespace-controller"

    def __init__(self, sim: SimCluster) -> None:
        self.sim = sim

    async def step(self) -> None:
        kube = self.sim.kube
        for namespace in kube.list("namespaces"):
            if terminating(namespace):
                self._empty(meta(namespace)["name"], spec(namespace).get("finalizers") or [])

    def _empty(self, namespace: str, finalizers: list[str]) -> None:
        kube = self.sim.kube
        left = 0
        for rtype in kube.types:
            if not rtype.namespaced:
                continue
            for obj in kube.list(rtype.qualified, namespace):
                left += 1
                if terminating(obj):
                    continue
                try:
                    kube.delete(rtype.qualified, meta(obj)["name"], namespace)
                except KubeError as error:
                    if error.code != 404:
                        raise
        if left == 0 and "kubernetes" in finalizers:
            rest = [f for f in finalizers if f != "kubernetes"]
            kube.patch("namespaces", namespace, {"spec": {"finalizers": rest}})
