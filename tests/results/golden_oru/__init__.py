"""Golden ORU^R01 messages (byte-for-byte fixtures of :func:`ecgcad.integration.reports.oru.build_oru`)."""
