"""What the journal keeps and how it changes: the schema, the trade book, reconciliation with the broker, regime
labels by day, CSV exports."""
