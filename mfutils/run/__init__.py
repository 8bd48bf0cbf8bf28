"""mfutils.run."""
