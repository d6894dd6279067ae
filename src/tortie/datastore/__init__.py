"""tortie.datastore."""
