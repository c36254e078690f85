"""ecgcad.jobs."""
