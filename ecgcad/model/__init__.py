"""ecgcad.model."""
