"""Local filesystem primitives both halves of the data path share: opening paths strictly beneath a
directory (any length, never through a symlink), extended attributes, sparse-file extents and zero runs,
and showing file names to people. Nothing here knows the repository format, storage or Kubernetes;
functions are blocking and raise ``OSError`` for the caller to put in its own words."""
