"""Volumes in the cluster and on this node: the pod and PVC that hold a volume on a node (``pods``),
exposing a volume to restore into (a restore PVC and pod, ``exposer``), exposing a CSI snapshot to back
up (moved into the mover's namespace, a backup PVC and pod, ``snapshots``), handing the restored PV to the
application's PVC (``rebind``), and where a PVC's volume is in the kubelet's layout (``volumes``). Takes
namespace/PVC/snapshot/node coordinates and an owner's uid, never a Velero object (an import-linter
contract)."""
