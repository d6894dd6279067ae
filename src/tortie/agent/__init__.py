"""tortie.agent."""
