"""The reconcilers of the node agent: watch DataUploads and DataDownloads, claim them, drive each through
Velero's phases and keep its status exact. Nothing here imports S3 clients, zstd or BLAKE3 (an
import-linter contract): transfers run through the ``Uploader`` and ``Restorer`` interfaces the composition
root supplies (``agent.datapath``).

    movers.py         what both share: one serial worker per object, claim, expose, prepare, start the
                      transfer, clean up; timeouts, cancel, deletion, orphans, refusals
    datauploads.py    backups: move and expose the CSI snapshot, back it up, clean up, record the snapshot ID
    datadownloads.py  restores: expose a new volume, restore, hand it over (or restore in place)
    supervisor.py     one running transfer, from InProgress until every byte is moved or it stops; progress
    load.py           the node's load limit (Velero's loadConcurrency), backups and restores together
    progress.py       a running transfer's progress figures
    jobs.py           RestoreJob, BackupJob and the Restorer and Uploader interfaces
"""
