"""The Kubernetes side of the node agent: watch DataDownloads, claim this node's, drive each through its
phases and keep its status exact. Nothing here imports S3 clients, zstd or BLAKE3 (an import-linter
contract): restores are run through the ``Restorer`` interface the composition root supplies.

    kube.py        the API calls, as dicts, with errors mapped to agent.errors
    objects.py     the DataDownload view and the phase names
    watching.py    list + watch, re-list on 410, resume after disconnects
    controller.py  one serial worker per object; claims, timeouts, cancel
    restores.py    one restore from InProgress to its final phase; progress reporting
    statuses.py    conditional status writes through the main resource or /status
    volumes.py     where the target volume is on this node (kubelet layout)
    locations.py   BackupStorageLocation → S3 settings and credentials
    tuning.py      spec.dataMoverConfig → restore settings
    events.py      Kubernetes Events
    slots.py       the node's concurrency limit
    progress.py    a running restore's progress figures
    waiting.py     waiting on a worker's wake event with a deadline
    jobs.py        RestoreJob and the Restorer interface
"""
