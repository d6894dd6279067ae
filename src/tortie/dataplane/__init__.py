"""tortie.dataplane."""
