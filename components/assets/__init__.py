"""User-supplied assets: the manifest, the checker and the synthetic bundle writer."""
