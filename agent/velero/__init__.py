"""Velero's vocabulary: the DataDownload view and its phases (``objects``), conditional status writes
for both CRD flavours (``statuses``), BackupStorageLocation → S3 settings and credentials
(``locations``), and ``spec.dataMoverConfig`` → restore settings (``tuning``)."""
