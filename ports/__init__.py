"""The outside world behind two protocols (common/types.py): market-data sources, the sim and Alpaca brokers, option
chains, alert channels, charts and the model API."""
