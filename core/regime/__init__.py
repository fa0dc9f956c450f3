"""The market regime: a statistical jump model and the classifier built on it (with the VIX crash override)."""
