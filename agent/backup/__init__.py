"""Snapshot creation: a source (a directory, a block device or an image file) → the repository.

scan.py      walking a directory tree with directory descriptors (any depth, any name)
sources.py   opening a block source; reading one regular file: extents, zero runs, chunks
writer.py    read → cut → hash → deduplicate → compress → pack → upload → manifest
"""
