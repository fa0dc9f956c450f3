"""Research: parameter sweeps and walk-forward validation of the trading systems, each trial one full backtest
through the live code path (`python main.py backtest`), searched with Optuna and run on a Dask cluster (a local one
on this machine's cores by default). Results live in one SQLite file per study (`research.db`)."""
