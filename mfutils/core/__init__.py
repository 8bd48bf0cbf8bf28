"""mfutils.core."""
