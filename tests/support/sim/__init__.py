"""A small simulated cluster over the strict test apiserver (:mod:`tests.support.kube`): nodes, a scheduler,
a kubelet per node, a CSI provisioner, the PV binder and the protection controllers, as asyncio tasks.

``async with SimCluster(kube, root, ["node-a", "node-b"]) as sim:`` creates the Node objects (label
``kubernetes.io/hostname=<node>``) and runs every controller until the block ends (tasks cancelled and
awaited, Block volumes detached, data moved back to its backing storage). Each controller makes a pass
over the whole state after every write to the store (``Store.next_change``, the event ``wait_for`` uses)
and never polls; ``await sim.settled()`` returns once every controller has passed over the current state
without writing. ``tests/test_sim_contract.py`` pins every rule below.

API server rules these rely on (in :mod:`tests.support.kube`): kinds ``nodes`` and ``storageclasses``
(storage.k8s.io/v1), PVC spec immutability, the protection finalizers added on create, graceful pod deletion.

CSI provisioner (``SimCluster.PROVISIONER``, ``csi.ferry.test``)
    * Provisions a Pending claim without ``spec.volumeName`` whose StorageClass names it, unless the binder
      has a PV for it (pre-bound by claimRef, or Available and fitting): Immediate classes at once,
      WaitForFirstConsumer classes once the claim has ``volume.kubernetes.io/selected-node`` (the PV then
      gets ``spec.nodeAffinity`` requiring ``kubernetes.io/hostname`` = that node). It annotates the claim
      ``volume.kubernetes.io/storage-provisioner``.
    * Refuses a claim with ``spec.selector``: one Warning Event ``ProvisioningFailed`` ("... claim Selector is
      not supported"); the claim stays Pending.
    * The PV: ``pvc-<claim uid>``, ``spec.csi`` {driver, volumeHandle}, capacity = the request (1Gi if none),
      class, accessModes, volumeMode, reclaim policy of the class, ``claimRef`` (with the claim's uid and
      resourceVersion), annotation ``pv.kubernetes.io/provisioned-by``; Event ``ProvisioningSucceeded``.
    * Backing storage, ``sim.backing(pv)`` = ``root/storage/<pv>``: a directory (Filesystem) or a sparse
      image file of the requested size (Block).
    * A PV it provisioned that is Released with reclaim policy Delete: backing storage removed, PV deleted.

PV binder (Kubernetes' pv_controller)
    * PV phases: no claimRef, or a claimRef without uid (pre-bound) → Available; a claimRef whose uid names a
      claim that no longer exists (none of that namespace/name, or one with another uid) → Released; its
      claim has ``spec.volumeName`` = the PV → Bound.
    * A Pending claim with ``spec.volumeName`` binds to that PV if it exists, its claimRef is absent or names
      the claim (namespace/name, and no uid or the claim's uid), and it *fits*: same class, same volumeMode
      (Filesystem when absent), the claim's access modes offered, capacity >= request, and the PV's labels
      match the claim's ``spec.selector``. (Stricter than Kubernetes, which ignores the selector here.)
    * A Pending claim without ``spec.volumeName`` (of a WaitForFirstConsumer class: only once it has a
      selected node, and only PVs whose nodeAffinity allows that node) binds to a PV pre-bound to it by
      claimRef that fits, else to the smallest Available PV without claimRef that fits; else it waits
      for the provisioner.
    * Binding: PV ``claimRef`` (with uid) and ``status.phase: Bound`` (annotation
      ``pv.kubernetes.io/bound-by-controller`` when the binder set the claimRef), then the claim:
      ``spec.volumeName`` if unset (and ``bound-by-controller``), ``pv.kubernetes.io/bind-completed``,
      ``status`` {phase Bound, capacity, accessModes} from the PV.
    * A Bound claim whose PV is gone or names another uid becomes Lost (Event ``ClaimLost``).

Protection controllers
    * ``kubernetes.io/pvc-protection`` comes off a terminating claim once no pod that has not terminated
      (phase not Succeeded/Failed; terminating pods still count) names it in a volume.
    * ``kubernetes.io/pv-protection`` comes off a terminating PV once it is not Bound.

Scheduler (pods without ``spec.nodeName``, ``schedulerName`` default, not terminating or terminated)
    * Filters, in the real order, each node failing on the first: ``spec.unschedulable``, taints with effect
      NoSchedule/NoExecute not tolerated (``sim.taint``), ``spec.nodeSelector`` and required node affinity
      (``In``/``NotIn``/``Exists``/``DoesNotExist``/``Gt``/``Lt``, ``matchFields`` on ``metadata.name``), the
      nodeAffinity of the PVs bound to the pod's claims.
    * A missing or terminating claim, or an unbound claim of an Immediate class (or of no/unknown class):
      not scheduled. No feasible node: condition ``PodScheduled`` False, reason ``Unschedulable``, with the
      real scheduler's message ("0/3 nodes are available: 1 node(s) had untolerated taint {k: v}, 2 node(s)
      didn't match Pod's node affinity/selector.").
    * Unbound claims of a WaitForFirstConsumer class: the chosen node goes into their
      ``volume.kubernetes.io/selected-node``; ``spec.nodeName`` is set only once they are all Bound.
    * Choice among feasible nodes: the fewest non-terminated pods, then the name. Sets ``PodScheduled`` True.

Kubelet (one per node; pods whose ``spec.nodeName`` is that node; root ``sim.kubelet_root(node)``)
    * Waits until every PVC volume of the pod is Bound to a PV of ``csi.ferry.test`` whose nodeAffinity allows
      this node and whose backing storage is not mounted by another pod, then mounts them all:
      Filesystem: ``root/storage/<pv>`` is renamed to
      ``<kubelet root>/pods/<pod uid>/volumes/kubernetes.io~csi/<pv>/mount`` (with ``vol_data.json`` beside
      it) and renamed back on unmount, so data persists across pods; Block: the image is attached with
      ``losetup`` (root only) and ``<kubelet root>/pods/<pod uid>/volumeDevices/kubernetes.io~csi/<pv>``
      is a symlink to the loop device, detached on unmount. ``sim.pod_volume(ns, pod, claim)`` is that path.
    * Then phase Running (conditions Ready etc. True, containerStatuses running) — or, if a container's
      image was marked ``sim.fail_image(image)``, phase Pending with ``state.waiting.reason:
      ImagePullBackOff`` (volumes mounted, as the kubelet mounts before pulling).
    * ``sim.fail_pod(ns, name, message)``: volumes unmounted, phase Failed with that message.
    * A terminating pod (``deletionTimestamp``): volumes unmounted, pod directory removed, then deleted for
      good with grace period 0. A pod that vanished: unmounted likewise. Terminated pods are unmounted.

Known simplifications
    * A volume is mounted by at most one pod at a time (the backing directory moves into the pod), even
      ReadWriteMany volumes on one node: a second pod waits until the first one lets go.
    * Only volumes of ``csi.ferry.test`` are mounted; a pod with any other PVC volume (in-tree, another
      driver, or a PV made by hand without backing storage) stays Pending. Non-PVC volumes are ignored.
    * No container processes, restarts, probes, resources, preemption, pod/node affinity between pods,
      topology spread, volume expansion, snapshots, attach/detach (VolumeAttachments), CSINode limits,
      allowedTopologies, default StorageClass admission, node lifecycle; terminationGracePeriodSeconds is
      recorded but the kubelet stops pods at once. PVC/PV ``volumeMode`` is not defaulted by the server
      (the controllers read an absent one as Filesystem).
"""

from .cluster import SimCluster
from .kubelet import Mount

__all__ = ["Mount", "SimCluster"]
