"""Volumes in the cluster and on this node: exposing a volume to restore into (a restore PVC and a restore
pod, ``exposer``), handing the restored PV to the application's PVC (``rebind``), and where a PVC's volume
is in the kubelet's layout (``volumes``). Takes namespace/PVC/node coordinates and an owner's uid, never a
Velero object (an import-linter contract)."""
