"""The backtest: the live flows replayed session by session with a simulated clock and the sim broker."""
