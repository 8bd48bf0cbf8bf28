"""mfutils.measure."""
