"""Reports: the validated report content and its builders (DICOM SR, Encapsulated PDF, HL7 ORU^R01)."""
