"""mfutils.data."""
