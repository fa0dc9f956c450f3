"""Alpaca: one guarded HTTP transport, and the broker, market-data and options clients built on it."""
