"""ecgcad.api."""
