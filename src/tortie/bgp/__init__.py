"""tortie.bgp."""
