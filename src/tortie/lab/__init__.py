"""tortie.lab."""
