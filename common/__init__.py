"""Below everything: the clock and NYSE calendar, errors, value types and port protocols, locks, logging, the
universe file and text rendering."""
