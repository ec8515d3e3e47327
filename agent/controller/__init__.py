"""The reconcilers of the node agent: watch DataDownloads, claim them, drive each through Velero's phases
and keep its status exact. Nothing here imports S3 clients, zstd or BLAKE3 (an import-linter contract):
restores run through the ``Restorer`` interface the composition root supplies (``agent.datapath``).

    datadownloads.py  one serial worker per DataDownload; claims, timeouts, cancel
    supervisor.py     one running restore, from InProgress to the phase it ends in; progress reporting
    load.py           the node's load limit (Velero's loadConcurrency)
    progress.py       a running restore's progress figures
    jobs.py           RestoreJob and the Restorer interface
"""
