"""ecgcad.db."""
