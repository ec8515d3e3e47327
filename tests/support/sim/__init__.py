"""A small simulated cluster over the strict test apiserver (:mod:`tests.support.kube`): nodes, a scheduler,
a kubelet per node, a CSI provisioner, the PV binder and the protection controllers, as asyncio tasks.

``async with SimCluster(kube, root, ["node-a", "node-b"]) as sim:`` creates the Node objects (label
``kubernetes.io/hostname=<node>``) and runs every controller until the block ends (tasks cancelled and
awaited, Block volumes detached, data moved back to its backing storage). Each controller makes a pass
over the whole state after every write to the store (``Store.next_change``, the event ``wait_for`` uses)
and never polls; ``await sim.settled()`` returns once every controller has passed over the current state
without writing. ``tests/test_sim_contract.py`` pins every rule below.

API server rules these rely on (in :mod:`tests.support.kube`): kinds ``nodes`` and ``storageclasses``
(storage.k8s.io/v1), PVC spec immutability, the protection finalizers added on create, graceful pod deletion,
the snapshot CRDs (``snapshot_crds()``, served by the ``kube`` fixture; without them the snapshot controllers
stay idle and a claim from a snapshot is refused), PVC ``dataSource``/``dataSourceRef`` mirrored, namespace
termination. ``tests/test_sim_snapshots.py`` pins the snapshot and namespace rules.

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
    * A claim whose ``dataSource`` (or ``dataSourceRef``) is {apiGroup ``snapshot.storage.k8s.io``, kind
      VolumeSnapshot, name}: provisioned (WaitForFirstConsumer still applies) only from a VolumeSnapshot of
      that name in the claim's own namespace that is not terminating, is readyToUse and bound both ways to a
      content of ``csi.ferry.test`` whose storage snapshot exists, with a request >= its restore size, and of
      the content's ``sourceVolumeMode`` (unless the content has annotation
      ``snapshot.storage.kubernetes.io/allow-volume-mode-change: "true"``; the conversion itself is not
      modelled). Otherwise it stays Pending with one Warning Event ``ProvisioningFailed`` per reason, in the
      external-provisioner's words ("... snapshot snap is not Ready", "... not found", "requested volume size
      N is less than the size M for the source snapshot snap", "... is currently being deleted"), and is
      provisioned once the reason is gone. The backing storage is a copy (``cp -a``: hard links, owners,
      modes, times kept) of the snapshot's directory, or its image grown to the request (Block). The PV is an
      ordinary one: nothing in it names the snapshot.
    * Any other data source kind: refused likewise (cloning and populators are not modelled).

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

Snapshot controller (external-snapshotter v8's snapshot-controller; VolumeSnapshot ``vs``, content ``vsc``)
    * Every ``vs`` not being deleted gets finalizer ``snapshot.storage.kubernetes.io/volumesnapshot-as-source-
      protection``; once bound (``status.boundVolumeSnapshotContentName``) to a ``vsc`` of deletionPolicy Delete
      also ``...volumesnapshot-bound-protection``. A ``vsc`` whose ``volumeSnapshotRef`` has a uid gets
      ``snapshot.storage.kubernetes.io/volumesnapshotcontent-bound-protection``.
    * Dynamic (``source.persistentVolumeClaimName``): without ``volumeSnapshotClassName`` the single class of
      the PV's driver with annotation ``snapshot.storage.kubernetes.io/is-default-class: "true"`` is written
      into the ``vs`` spec (none or several: ``status.error`` "Failed to set default snapshot class with error
      cannot find default snapshot class"). The claim must be Bound (else an error, retried once it is); it
      gets finalizer ``snapshot.storage.kubernetes.io/pvc-as-source-protection`` until no ``vs`` of it is
      unready. Then ``vsc`` ``snapcontent-<vs uid>``: ``source.volumeHandle`` = the PV's CSI volumeHandle,
      ``volumeSnapshotRef`` (kind, apiVersion, namespace, name, uid, resourceVersion), deletionPolicy and
      driver of the class, ``volumeSnapshotClassName``, ``sourceVolumeMode`` of the PV; Events
      ``CreatingSnapshot``, ``SnapshotCreated``, ``SnapshotReady`` on the ``vs``.
    * Static (``source.volumeSnapshotContentName``): binds only a ``vsc`` with ``source.snapshotHandle`` whose
      ``volumeSnapshotRef`` names this ``vs`` (namespace/name, and no uid or its uid): the ref's uid (and the
      ``vs`` class, if any) is written into the ``vsc``. Missing: error "VolumeSnapshotContent is missing";
      naming another snapshot: "VolumeSnapshotContent [x] is bound to a different snapshot" (not bound).
    * ``vs`` status follows its ``vsc``: ``boundVolumeSnapshotContentName``, ``readyToUse``, ``creationTime``
      (RFC 3339), ``restoreSize`` (a quantity: ``64Mi``), ``error`` copied (cleared once ready). Errors of its
      own: ``status.error`` {message, time}, readyToUse false, one Warning Event per message.
    * A terminating ``vs``: if a Pending claim in its namespace has it as ``dataSource`` (and it has a
      content), it waits (Warning ``SnapshotDeletePending``). Else its ``vsc`` (bound both ways) gets annotation
      ``snapshot.storage.kubernetes.io/volumesnapshot-being-deleted: yes`` and, under Delete, is deleted; the
      as-source finalizer comes off, the bound one once that ``vsc`` is gone. Under Retain the ``vsc`` stays,
      its ``volumeSnapshotRef`` naming the gone ``vs``.

CSI snapshotter (the csi-snapshotter sidecar and the driver ``csi.ferry.test``; contents of that driver)
    * A ``vsc`` with ``source.volumeHandle`` and no ``status.snapshotHandle``: annotation
      ``snapshot.storage.kubernetes.io/volumesnapshot-being-created: yes`` while CreateSnapshot runs, then the
      volume's data is copied (``cp -a``) from wherever it is now (``sim.backing(pv)`` or, a Filesystem volume
      a pod mounts, the kubelet's mount directory; ``sim.volume_data(pv)``) to ``root/snapshots/<handle>``
      (handle ``snapshot-<vsc uid>``), status {snapshotHandle, readyToUse true, restoreSize = the PV capacity
      in bytes, creationTime in Unix ns}, annotation removed. Later writes to the volume do not reach it. No
      PV of that volumeHandle: status error, retried.
    * ``sim.pause_snapshots()``: CreateSnapshot hangs (annotation kept, no status, ``vs`` not ready) until
      ``sim.resume_snapshots()``.
    * A ``vsc`` with ``source.snapshotHandle``: ready (status filled from the stored snapshot) if
      ``root/snapshots/<handle>`` exists, else status error "... can not find snapshot for snapshotID <h>",
      readyToUse false (copied to a ``vs`` bound to it).
    * A terminating ``vsc`` is finished only when the sidecar may delete it: unbound pre-provisioned (no ref
      uid), or with the being-deleted annotation and without the being-created one. Then, under Delete, the
      storage snapshot (``status.snapshotHandle``) is removed; the content finalizer comes off. So a ``vsc``
      deleted while its ``vs`` still exists stays terminating until that ``vs`` is deleted; an unbound one
      without finalizer goes at once and leaves its storage snapshot.
    * ``sim.storage_snapshots()``: the handles in storage; ``sim.snapshot_data(handle)``: where one is.

Namespace controller
    * A namespace being deleted (``deletionTimestamp``, phase Terminating, ``spec.finalizers: [kubernetes]``
      held by the API server): every namespaced object in it is deleted (pods gracefully; finalizers are left
      to the controllers that hold them); once none is left, ``kubernetes`` comes off ``spec.finalizers`` and
      the namespace is gone. Events the controllers record there are dropped (403).

Known simplifications
    * A volume is mounted by at most one pod at a time (the backing directory moves into the pod), even
      ReadWriteMany volumes on one node: a second pod waits until the first one lets go.
    * Only volumes of ``csi.ferry.test`` are mounted; a pod with any other PVC volume (in-tree, another
      driver, or a PV made by hand without backing storage) stays Pending. Non-PVC volumes are ignored.
    * No container processes, restarts, probes, resources, preemption, pod/node affinity between pods,
      topology spread, volume expansion, group snapshots, cloning, volume populators, attach/detach
      (VolumeAttachments), CSINode limits, allowedTopologies, default StorageClass admission, node lifecycle,
      owner-reference garbage collection; terminationGracePeriodSeconds is
      recorded but the kubelet stops pods at once. PVC/PV ``volumeMode`` is not defaulted by the server
      (the controllers read an absent one as Filesystem).
    * Snapshots are cut at once (CreateSnapshot returns ready) unless paused; no secrets of snapshot classes,
      no retries with backoff (a pass after every write instead), the VolumeSnapshotClass is not checked
      against the PV's driver (a content of another driver is simply never cut), and a snapshot of a
      Filesystem volume a pod is writing to is a plain ``cp -a`` of the directory at that moment.
"""

from .cluster import SimCluster
from .kubelet import Mount

__all__ = ["Mount", "SimCluster"]
