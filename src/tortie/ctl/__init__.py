"""tortie.ctl."""
