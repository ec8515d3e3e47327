"""Volumes in the cluster and on this node: where a PVC's volume is in the kubelet's layout
(``volumes``). Takes namespace/PVC/node coordinates, never a Velero object (an import-linter contract)."""
