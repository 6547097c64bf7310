"""First-party services, one module each (declaration at module level, heavy imports inside)."""
