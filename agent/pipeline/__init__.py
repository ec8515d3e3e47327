"""The restore data path: plan → fetch → decompress/verify → write. Nothing here knows Kubernetes."""

from agent.pipeline.restore import RestoreResult, restore

__all__ = ["RestoreResult", "restore"]
