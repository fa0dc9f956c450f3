"""The command line and the Telegram bot: each command parses its options, starts its run, calls one flow, prints."""
