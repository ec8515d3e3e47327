"""Finding a DataDownload's target volume on this node, through the API and the kubelet's layout.

The PVC to fill is the first of the candidates the caller names that exists (for a DataDownload: the
restore PVC in Velero's namespace, then ``spec.targetVolume``). It is usable here once it is Bound and a Running
pod on this node mounts it, and the kubelet has put it in place:

    <kubelet root>/pods/<pod uid>/volumes/kubernetes.io~csi/<pv>/mount       CSI, Filesystem mode
    <kubelet root>/pods/<pod uid>/volumeDevices/kubernetes.io~csi/<pv>       CSI, Block mode (a link)
    <kubelet root>/pods/<pod uid>/volumes/kubernetes.io~local-volume/<pv>    in-tree local volume
    <kubelet root>/pods/<pod uid>/volumes/kubernetes.io~host-path/<pv>       in-tree hostPath
    (in-tree Block mode: volumeDevices/<plugin>/<pv>)

The volume mode comes from the PV (``spec.volumeMode``, Filesystem when absent).
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from typing import Literal

from agent.errors import KubeNotFound, VolumeError
from agent.kube.api import Kube, Obj

_PLUGINS = {"csi": "kubernetes.io~csi", "local": "kubernetes.io~local-volume", "hostPath": "kubernetes.io~host-path"}


@dataclass(frozen=True)
class Volume:
    pvc: str
    """namespace/name of the PVC."""
    pv: str
    mode: Literal["Filesystem", "Block"]
    pod: str
    """namespace/name of the pod that mounts it here."""
    path: str
    """The directory to restore into, or the block device (symlinks resolved)."""

    def describe(self) -> str:
        return f"PVC {self.pvc} (PV {self.pv}, {self.mode}) mounted by pod {self.pod}"


def _check_path(path: str, mode: str) -> str | None:
    """The usable path (links resolved for devices), or None when the kubelet has not put it there yet."""
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    if mode == "Block":
        if not stat.S_ISBLK(st.st_mode):
            raise VolumeError(f"{path} should be a block device for a Block-mode volume but is not")
        return os.path.realpath(path)
    if not stat.S_ISDIR(st.st_mode):
        raise VolumeError(f"{path} should be the mounted volume's directory but is not a directory")
    return path


class VolumeFinder:
    def __init__(self, kube: Kube, node: str, kubelet_root: str) -> None:
        self._kube = kube
        self._node = node
        self._root = kubelet_root

    async def _claim(self, candidates: tuple[tuple[str, str], ...]) -> Obj | None:
        for namespace, name in candidates:
            try:
                return await self._kube.get_pvc(namespace, name)
            except KubeNotFound:
                continue
        return None

    async def find(self, *candidates: tuple[str, str]) -> Volume | None:
        """The volume of the first existing PVC among ``candidates`` (``(namespace, name)`` pairs) if it is
        usable on this node now; None if not (yet). Raises VolumeError when it can never be used by Ferry
        (a volume plugin whose layout we do not know)."""
        pvc = await self._claim(candidates)
        if pvc is None:
            return None
        meta, spec = pvc.get("metadata") or {}, pvc.get("spec") or {}
        pvc_ns, pvc_name = str(meta.get("namespace", "")), str(meta.get("name", ""))
        pv_name = spec.get("volumeName")
        if (pvc.get("status") or {}).get("phase") != "Bound" or not pv_name:
            return None
        try:
            pv = await self._kube.get_pv(str(pv_name))
        except KubeNotFound:
            return None
        pv_spec = pv.get("spec") or {}
        mode: Literal["Filesystem", "Block"] = "Block" if pv_spec.get("volumeMode") == "Block" else "Filesystem"
        plugin = next((folder for key, folder in _PLUGINS.items() if key in pv_spec), None)
        if plugin is None:
            raise VolumeError(
                f"PV {pv_name} (bound to PVC {pvc_ns}/{pvc_name}) uses a volume plugin whose place on the node "
                "Ferry does not know; supported are CSI, local and hostPath volumes"
            )
        for pod in await self._kube.list_pods_on_node(pvc_ns, self._node):
            pod_meta = pod.get("metadata") or {}
            if (pod.get("status") or {}).get("phase") != "Running" or pod_meta.get("deletionTimestamp"):
                continue
            claims = {
                (v.get("persistentVolumeClaim") or {}).get("claimName")
                for v in (pod.get("spec") or {}).get("volumes") or []
            }
            if pvc_name not in claims:
                continue
            base = os.path.join(self._root, "pods", str(pod_meta.get("uid", "")))
            if mode == "Block":
                path = os.path.join(base, "volumeDevices", plugin, str(pv_name))
            elif plugin == _PLUGINS["csi"]:
                path = os.path.join(base, "volumes", plugin, str(pv_name), "mount")
            else:
                path = os.path.join(base, "volumes", plugin, str(pv_name))
            usable = _check_path(path, mode)
            if usable is not None:
                return Volume(f"{pvc_ns}/{pvc_name}", str(pv_name), mode, f"{pvc_ns}/{pod_meta.get('name')}", usable)
        return None
