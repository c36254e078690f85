"""Golden ORU^R01 messages (byte-for-byte fixtures of :func:`ecgcad.integration.oru.build_oru`)."""
