"""Velero's vocabulary: the DataUpload and DataDownload views and their phases (``objects``), conditional
status writes for both CRD flavours (``statuses``), BackupStorageLocation → S3 settings and credentials
(``locations``), and ``spec.dataMoverConfig`` → backup and restore settings (``tuning``)."""
