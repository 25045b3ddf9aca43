"""Registry domain: digests, names, descriptors, manifests and errors. Standard library only."""
