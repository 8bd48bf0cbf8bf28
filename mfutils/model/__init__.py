"""mfutils.model."""
