"""One job each: the scan and its orders, the exit runner, option entries and exits, the STRAT scan, operator
commands, the rebalance, reports, and the runtime that wires a command's parts together."""
