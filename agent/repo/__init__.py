"""The repository format: manifests, chunks, packs, and the snapshot writer."""
