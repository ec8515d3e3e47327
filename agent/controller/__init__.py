"""The reconcilers of the node agent: watch DataDownloads, claim them, drive each through Velero's phases
and keep its status exact. Nothing here imports S3 clients, zstd or BLAKE3 (an import-linter contract):
restores run through the ``Restorer`` interface the composition root supplies (``agent.datapath``).

    datadownloads.py  one serial worker per DataDownload: claim, expose, prepare, hand over, clean up;
                      timeouts, cancel, deletion
    supervisor.py     one running restore's data transfer, from InProgress until every byte is written or
                      it stops; progress reporting
    load.py           the node's load limit (Velero's loadConcurrency)
    progress.py       a running restore's progress figures
    jobs.py           RestoreJob and the Restorer interface
"""
