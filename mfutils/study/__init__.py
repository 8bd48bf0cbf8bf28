"""mfutils.study."""
