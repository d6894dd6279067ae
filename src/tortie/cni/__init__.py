"""tortie.cni."""
