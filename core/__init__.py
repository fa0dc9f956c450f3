"""Pure decisions: indicators, reversal scores, risk gates and sizing, the rules decider, when and how to exit, the
intraday path of a daily bar, option maths, STRAT signals and the regime. No I/O, no clock."""
