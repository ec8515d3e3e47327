"""A small, strict Kubernetes API server for tests (aiohttp, in process, on 127.0.0.1).

The agent reaches it through a kubeconfig (``KubeServer.write_kubeconfig``) with kubernetes_asyncio,
exactly as it would reach a real cluster. ``tests/test_kube_contract*.py`` pins every rule below.

Modelled
    * Resources: the custom resources of the CRDs it is given (``velero_crds(version)`` for each Velero
      release in ``VELERO_VERSIONS``: DataDownloads, DataUploads, BackupStorageLocations and Backups, or
      Velero's own YAML, loaded by the caller; ``snapshot_crds()``, the CSI snapshot kinds of
      ``snapshot.storage.k8s.io/v1``, namespaced or cluster-scoped), core/v1 namespaces, secrets, pods,
      persistentvolumeclaims, persistentvolumes and events, and ``coordination.k8s.io/v1`` leases. Verbs:
      list (per namespace and across namespaces), watch, get, create, update, patch, delete; ``/status``
      where the kind has it (CRDs: only when declared).
    * Discovery: ``/api``, ``/api/v1``, ``/apis``, ``/apis/<group>``, ``/apis/<group>/<version>``,
      ``/version``.
    * Bearer-token authentication (401 otherwise). Every error body is a ``Status``.
    * RBAC for tokens issued to an identity (``write_kubeconfig(path, ns, user=..., rbac=Path(...))`` or
      ``accounts.issue``): Roles, ClusterRoles and their bindings decide as Kubernetes' RBAC authorizer does,
      403 ``Forbidden`` otherwise; ``RbacUsage`` records the rule behind each allowed request and each
      denial, ``excess_grants`` names what nothing used (see :mod:`.rbac`). The admin token is unrestricted.
    * resourceVersions (one global counter, served as opaque strings), ``generation`` (custom resources:
      1 on create, +1 on any change outside ``metadata``, status included unless there is a ``/status``
      subresource), no-op updates that write nothing, server-set ``uid``/``creationTimestamp``/names from
      ``generateName``, optimistic concurrency (PUT and merge-patch preconditions, delete preconditions).
    * The status split: main writes keep ``.status``, ``/status`` writes take only ``.status``; built-ins
      with a status get their initial phase on create (Pending; namespaces Active).
    * Custom-resource schemas: unknown fields pruned (or 400 with ``fieldValidation=Strict``), defaults,
      type/enum/required/nullable/format/pattern/minimum violations as 422 with ``details.causes``, and the
      CEL rule shapes the snapshot CRDs use (exactly-one-of, immutable, required once set, non-empty; any
      other rule is refused when the CRD is loaded; see :mod:`.schema`).
    * Patches: merge-patch and JSON patch everywhere; strategic merge on built-ins only, modelled as a
      merge patch that merges the usual keyed lists (see :mod:`.patches`).
    * Finalizers (delete marks ``deletionTimestamp``; removing the last finalizer deletes), lists with
      ``limit``/``continue`` served from a snapshot, label and field selectors, Secret ``data``/``stringData``,
      the Event namespace rule.
    * Watches: chunked JSON lines, synthetic ADDED from RV unset/"0", replay after a given RV, 410 as an
      ERROR event once history is expired, BOOKMARKs with ``allowWatchBookmarks`` (every
      ``bookmark_interval`` seconds when idle, or on ``send_bookmarks()``), ``timeoutSeconds``, selector
      transitions as ADDED/DELETED.
    * Leases (``coordination.k8s.io/v1``, namespaced, no ``/status``), as the lease registry strategy and
      ``ValidateLeaseSpec`` have them: a PUT must carry ``metadata.resourceVersion`` (422 without it, 409 if
      stale: no unconditional updates), and a PUT of a missing Lease creates it (201, create-on-update). The
      body decodes as the typed object or is 400 ("Lease in version "v1" cannot be handled as a Lease: ..."):
      ``holderIdentity`` (and ``strategy``/``preferredHolder``) strings, ``leaseDurationSeconds`` and
      ``leaseTransitions`` int32 (not 1.5, not "15", not true), ``acquireTime``/``renewTime`` MicroTimes
      (RFC 3339 with exactly six fractional digits, ``Z`` or an offset), stored and served in UTC with six
      digits and ``Z``; ``spec`` is always written (``{}`` when empty). Unknown fields are dropped (400 under
      ``fieldValidation=Strict``), and so are ``strategy``/``preferredHolder`` (the CoordinatedLeaderElection
      gate is off by default). 422: ``leaseDurationSeconds`` <= 0, ``leaseTransitions`` < 0, and a patch whose
      result does not decode (cause ``patch``). A PUT that creates a Lease is also authorized as ``create``
      (see :mod:`.rbac`). Pinned, with kubernetes_asyncio's leader election, in
      ``tests/test_kube_contract_leases.py``.
    * Cluster-scoped built-ins ``nodes`` (core/v1, with ``/status``) and ``storageclasses``
      (``storage.k8s.io/v1``, in discovery; ``provisioner`` required, ``reclaimPolicy`` defaults to Delete,
      ``volumeBindingMode`` to Immediate; fields not immutable here).
    * Built-in admission: every new PVC gets finalizer ``kubernetes.io/pvc-protection`` and every new PV
      ``kubernetes.io/pv-protection``; a PVC's ``spec`` is immutable (422) except ``spec.volumeName``, which
      may be set once from empty, and ``spec.resources.requests``; a patch (any format) setting
      ``metadata.resourceVersion`` to ``""``/``null`` (JSON patch: or removing it) is 422 on every kind.
    * Graceful pod deletion: DELETE of a pod with ``spec.nodeName`` (not Succeeded/Failed) only sets
      ``deletionTimestamp`` and ``deletionGracePeriodSeconds`` (``gracePeriodSeconds`` of the query or the
      DeleteOptions body, else ``spec.terminationGracePeriodSeconds``, else 30) and keeps it (MODIFIED); a
      later DELETE may shorten it; grace period 0, or a pod on no node, removes it at once. (These last three
      are pinned in ``tests/test_sim_contract.py``.)
    * PVCs: ``dataSource`` and ``dataSourceRef`` each filled from the other on create (422 if both are given
      and differ), as the apiserver's NormalizeDataSources.
    * Namespace termination: a new namespace gets ``spec.finalizers: [kubernetes]`` (changed only through
      ``PUT .../namespaces/<n>/finalize``, or the Python controls); DELETE marks it (``deletionTimestamp``,
      phase Terminating) and keeps it until ``spec.finalizers`` is empty; creating anything in a terminating
      namespace is 403 ("unable to create new content in namespace X because it is being terminated"). Who
      empties it is :mod:`tests.support.sim` (``tests/test_sim_snapshots.py`` pins these).

Refused loudly (an error naming what is not modelled, never a silent approximation)
    server-side apply (415), protobuf/YAML/Table-only ``Accept`` (406), ``sendInitialEvents`` (watch-list),
    ``dryRun``, ``resourceVersionMatch=Exact``, ``$``-directives of strategic merge other than the common
    ones, watching a single object by its path (400), deletecollection (405), unknown paths (404).

Test controls (Python, same rules as the HTTP verbs): ``create``/``get``/``update``/``patch``/``delete``/
``list`` (updates and patches see the whole object, status included, like a controller with full rights),
``history`` (every stored version, deletions included), ``wait_for``/``wait_gone``/``wait_for_watches``
(woken by each write, never polling), ``fail_next`` (inject a Status error), ``requests`` (what was
asked, and the answer's code), ``expire_history``, ``drop_watches``, ``send_bookmarks``, ``watch_count``.

Modules: ``crds`` (Velero's CRDs in Python), ``snapshot_crds`` (the CSI snapshot CRDs), ``resources``
(kinds, discovery, admission), ``schema`` (prune/default/validate/CEL), ``meta`` (ObjectMeta), ``patches``,
``selectors``, ``store`` (write rules, history, snapshots), ``watches`` (subscriptions), ``handlers`` (HTTP
routing and verbs), ``server`` (``KubeServer``), ``rbac`` (authorization, tokens, usage), ``kubeconfig``,
``clients`` (client helpers and sample objects for tests).

Not modelled at all: admission webhooks, garbage collection of owned objects, managedFields. The kubelet,
scheduler, PV binder, provisioner and the snapshot and namespace controllers are not part of the server:
tests play them through the Python controls, or run :mod:`tests.support.sim` (``SimCluster``).
"""

from .crds import VELERO_VERSIONS, velero_crds
from .errors import KubeError
from .rbac import Authorizer, RbacUsage, excess_grants
from .server import KubeServer, RequestRecord
from .watches import Revision

__all__ = [
    "VELERO_VERSIONS",
    "Authorizer",
    "KubeError",
    "KubeServer",
    "RbacUsage",
    "RequestRecord",
    "Revision",
    "excess_grants",
    "velero_crds",
]
