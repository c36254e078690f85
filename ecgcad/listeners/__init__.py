"""ecgcad.listeners."""
