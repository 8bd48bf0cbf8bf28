"""mfutils.present."""
