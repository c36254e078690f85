"""Transport: DICOM C-STORE and MLLP senders, MLLP framing, HL7 acknowledgements."""
