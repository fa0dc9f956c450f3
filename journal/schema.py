"""The journal's schema, declared as data: numbered migrations and the SQL views.

Only db.py applies these. A change to the schema is a new numbered migration appended here; applied migrations are
never edited.
"""
from __future__ import annotations

from common.types import sql_list

MIGRATION_0001 = """
CREATE TABLE configs (
    id INTEGER PRIMARY KEY, created_at TEXT NOT NULL, hash TEXT NOT NULL UNIQUE, settings TEXT NOT NULL);
CREATE TABLE runs (
    run_id TEXT PRIMARY KEY, command TEXT NOT NULL, started_at TEXT NOT NULL, asof TEXT, finished_at TEXT,
    status TEXT NOT NULL DEFAULT 'running', exit_code INTEGER, detail TEXT);
CREATE TABLE trades (
    id INTEGER PRIMARY KEY, symbol TEXT NOT NULL, cap TEXT, strategy TEXT NOT NULL DEFAULT 'momentum',
    asset_class TEXT NOT NULL DEFAULT 'us_equity', qty INTEGER NOT NULL, original_qty INTEGER,
    entry_time TEXT, entry_price REAL, entry_order_id TEXT, entry_signals TEXT, composite_score REAL,
    spy_price REAL, spy_trend TEXT, vix REAL, regime TEXT, cash_pct REAL, exposure_pct REAL, state_vector TEXT,
    config_id INTEGER REFERENCES configs(id),
    status TEXT NOT NULL CHECK (status IN ('pending','open','closed','unprotected','external','unknown','canceled')),
    current_price REAL, unrealized_pnl REAL, unrealized_pnl_pct REAL, last_update TEXT,
    peak_price REAL, trailing_stop_price REAL, stop_order_id TEXT, target_price REAL,
    exit_time TEXT, exit_price REAL, exit_reason TEXT, exit_priority TEXT, pnl REAL, pnl_pct REAL, reward REAL,
    holding_days INTEGER, max_gain_pct REAL, max_drawdown_pct REAL, run_id TEXT, notes TEXT);
CREATE INDEX trades_status ON trades(status);
CREATE INDEX trades_symbol ON trades(symbol);
CREATE TABLE orders (
    client_order_id TEXT PRIMARY KEY, broker_order_id TEXT, trade_id INTEGER REFERENCES trades(id),
    symbol TEXT NOT NULL, side TEXT NOT NULL CHECK (side IN ('buy','sell')), type TEXT NOT NULL,
    qty INTEGER NOT NULL, time_in_force TEXT NOT NULL DEFAULT 'day', limit_price REAL, stop_price REAL,
    trail_percent REAL,
    purpose TEXT NOT NULL CHECK (purpose IN ('entry','stop','exit','partial','rebalance','option')),
    status TEXT NOT NULL, filled_qty INTEGER NOT NULL DEFAULT 0, filled_avg_price REAL, filled_at TEXT,
    created_at TEXT NOT NULL, submitted_at TEXT, updated_at TEXT, run_id TEXT, error TEXT);
CREATE INDEX orders_trade ON orders(trade_id);
CREATE INDEX orders_status ON orders(status);
CREATE TABLE scans (
    id INTEGER PRIMARY KEY, run_id TEXT, type TEXT NOT NULL, cap TEXT NOT NULL, asof TEXT NOT NULL,
    session TEXT, fraction REAL, started_at TEXT NOT NULL, finished_at TEXT, dry_run INTEGER NOT NULL,
    status TEXT NOT NULL DEFAULT 'running', timings TEXT, universe_count INTEGER, stage1_count INTEGER,
    stage2_count INTEGER, buy_count INTEGER, watch_count INTEGER, skipped_count INTEGER, skipped TEXT,
    spy_price REAL, spy_change_pct REAL, spy_trend TEXT, vix REAL, breadth REAL, regime TEXT,
    exposure_factor REAL, skip_mode INTEGER, decider TEXT, summary TEXT, error TEXT);
CREATE TABLE candidates (
    id INTEGER PRIMARY KEY, scan_id INTEGER NOT NULL REFERENCES scans(id), symbol TEXT NOT NULL, cap TEXT,
    session TEXT NOT NULL, asof TEXT NOT NULL, price REAL, prev_close REAL, change_pct REAL, rvol REAL,
    volume_surge REAL, stage1 INTEGER, stage2 INTEGER, gap_up REAL, follow_through INTEGER,
    breakout_5d INTEGER, roc_10d REAL, sma20 REAL, sma50 REAL, sma_aligned INTEGER, intraday_strength REAL,
    rsi_14 REAL, atr_14 REAL, momentum_breakout INTEGER, score INTEGER, decision TEXT, reason TEXT,
    price_1d REAL, price_3d REAL, price_5d REAL, price_10d REAL, max_gain_10d REAL, max_drawdown_10d REAL,
    outcome_updated_at TEXT);
CREATE INDEX candidates_scan ON candidates(scan_id);
CREATE INDEX candidates_symbol_session ON candidates(symbol, session);
CREATE TABLE decisions (
    id INTEGER PRIMARY KEY, scan_id INTEGER REFERENCES scans(id), created_at TEXT NOT NULL, decider TEXT NOT NULL,
    prompt TEXT, reply TEXT, parsed TEXT, valid INTEGER, fallback_reason TEXT);
CREATE TABLE watchlist (
    symbol TEXT PRIMARY KEY, cap TEXT, score INTEGER, scan_id INTEGER, added_at TEXT NOT NULL,
    updated_at TEXT NOT NULL, reason TEXT);
CREATE TABLE position_checks (
    id INTEGER PRIMARY KEY, trade_id INTEGER REFERENCES trades(id), symbol TEXT NOT NULL, checked_at TEXT NOT NULL,
    price REAL, pnl_pct REAL, reversal_score INTEGER, signals TEXT, urgent INTEGER, action TEXT, run_id TEXT);
CREATE INDEX position_checks_trade ON position_checks(trade_id, checked_at);
CREATE TABLE exits (
    id INTEGER PRIMARY KEY, trade_id INTEGER NOT NULL REFERENCES trades(id), symbol TEXT NOT NULL,
    reason TEXT NOT NULL, priority TEXT NOT NULL, triggered TEXT, qty INTEGER NOT NULL, partial INTEGER NOT NULL,
    strategy TEXT, state TEXT NOT NULL, price REAL, pnl REAL, pnl_pct REAL, attempts INTEGER DEFAULT 0,
    created_at TEXT NOT NULL, updated_at TEXT, completed_at TEXT, run_id TEXT);
CREATE TABLE exit_attempts (
    id INTEGER PRIMARY KEY, exit_id INTEGER NOT NULL REFERENCES exits(id), attempt INTEGER NOT NULL,
    order_type TEXT NOT NULL, limit_price REAL, qty INTEGER NOT NULL, status TEXT, filled_qty INTEGER DEFAULT 0,
    client_order_id TEXT, created_at TEXT NOT NULL);
CREATE TABLE poor_signals (
    id INTEGER PRIMARY KEY, symbol TEXT NOT NULL, trade_id INTEGER REFERENCES trades(id), entry_date TEXT,
    exit_date TEXT, entry_price REAL, exit_price REAL, pnl_pct REAL, holding_days INTEGER, exit_reason TEXT,
    reversal_score INTEGER, reversal_signals TEXT, entry_signals TEXT, composite_score REAL, notes TEXT,
    reviewed INTEGER NOT NULL DEFAULT 0);
CREATE TABLE daily_performance (
    date TEXT PRIMARY KEY, equity REAL, cash REAL, exposure REAL, exposure_pct REAL, day_pnl REAL,
    day_pnl_pct REAL, trades_opened INTEGER, trades_closed INTEGER, spy_close REAL, spy_change_pct REAL,
    cum_return_pct REAL, spy_cum_return_pct REAL, created_at TEXT NOT NULL);
CREATE TABLE regimes (
    date TEXT PRIMARY KEY, regime TEXT NOT NULL, factor REAL NOT NULL, features TEXT, params TEXT, reason TEXT,
    crash_override INTEGER NOT NULL DEFAULT 0, created_at TEXT NOT NULL);
CREATE TABLE risk_events (
    id INTEGER PRIMARY KEY, created_at TEXT NOT NULL, run_id TEXT, scan_id INTEGER, symbol TEXT, side TEXT,
    qty INTEGER, gate TEXT NOT NULL, detail TEXT);
CREATE INDEX risk_events_time ON risk_events(created_at);
CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL, updated_at TEXT NOT NULL, updated_by TEXT);
CREATE TABLE state (key TEXT PRIMARY KEY, value TEXT, updated_at TEXT NOT NULL);
CREATE TABLE events (
    id INTEGER PRIMARY KEY, created_at TEXT NOT NULL, level TEXT NOT NULL
        CHECK (level IN ('debug','info','warning','error','critical')),
    kind TEXT NOT NULL, source TEXT, message TEXT NOT NULL, detail TEXT, run_id TEXT, delivered TEXT);
CREATE INDEX events_level_time ON events(level, created_at);
CREATE TABLE bot_commands (
    id INTEGER PRIMARY KEY, update_id INTEGER, user_id INTEGER, chat_id INTEGER, username TEXT,
    command TEXT, args TEXT, authorised INTEGER NOT NULL, status TEXT NOT NULL, response TEXT,
    created_at TEXT NOT NULL, confirmed_at TEXT);
CREATE TABLE strat_signals (
    id INTEGER PRIMARY KEY, symbol TEXT NOT NULL, timeframe TEXT NOT NULL, pattern TEXT NOT NULL,
    direction TEXT NOT NULL, kind TEXT, bar_date TEXT NOT NULL, entry_trigger REAL, target REAL, stop REAL,
    magnitude_pct REAL, reward_risk REAL, status TEXT NOT NULL DEFAULT 'new', created_at TEXT NOT NULL,
    alerted INTEGER NOT NULL DEFAULT 0, UNIQUE (symbol, timeframe, pattern, bar_date));
"""

# A held trade: its shares are (or should be) at the broker, whatever its protection. One definition for every query.
HELD_STATUSES = ("open", "unprotected", "external")
HELD = f"status IN {sql_list(HELD_STATUSES)}"

VIEWS = {
    "open_positions": """
        SELECT id AS trade_id, symbol, cap, strategy, qty, entry_time, entry_price, current_price,
               unrealized_pnl, unrealized_pnl_pct, peak_price, trailing_stop_price, stop_order_id, status
        FROM trades WHERE """ + HELD,
    "closed_trades": """
        SELECT id AS trade_id, symbol, cap, strategy, qty, entry_time, entry_price, exit_time, exit_price,
               exit_reason, exit_priority, pnl, pnl_pct, holding_days
        FROM trades WHERE status IN ('closed', 'unknown') AND exit_time IS NOT NULL""",
    "daily_pnl": """
        SELECT date, equity, day_pnl, day_pnl_pct, cum_return_pct, spy_cum_return_pct,
               cum_return_pct - spy_cum_return_pct AS vs_spy_pct
        FROM daily_performance ORDER BY date""",
    "candidate_outcomes": """
        SELECT c.session, c.symbol, c.cap, c.score, c.decision, c.price,
               (c.price_1d / c.price - 1) * 100 AS ret_1d_pct, (c.price_5d / c.price - 1) * 100 AS ret_5d_pct,
               (c.price_10d / c.price - 1) * 100 AS ret_10d_pct, c.max_gain_10d, c.max_drawdown_10d
        FROM candidates c""",
    "exit_summary": """
        SELECT reason, priority, COUNT(*) AS exits, SUM(partial) AS partial_exits,
               ROUND(AVG(pnl_pct), 3) AS avg_pnl_pct, ROUND(SUM(pnl), 2) AS total_pnl
        FROM exits WHERE state = 'filled' GROUP BY reason, priority""",
}

# Quotes shared by the processes of one journal for a few seconds, so a monitor run and a scan that overlap do not
# spend the broker's request budget twice on the same prices.
MIGRATION_0002 = """
CREATE TABLE quote_cache (
    symbol TEXT PRIMARY KEY, session TEXT NOT NULL, fraction REAL NOT NULL, open REAL, high REAL, low REAL,
    price REAL, volume REAL, prev_close REAL, bid REAL, ask REAL, fetched_at TEXT NOT NULL);
"""

# Fills are applied to trades by quantity: each order remembers how much of its fill the trade book has taken in, so
# partial fills, partial exits and rebalance adjustments are applied exactly once however often reconciliation runs.
MIGRATION_0003 = """
ALTER TABLE orders ADD COLUMN applied_qty INTEGER NOT NULL DEFAULT 0;
ALTER TABLE trades ADD COLUMN realized_pnl REAL NOT NULL DEFAULT 0;
UPDATE orders SET applied_qty = filled_qty WHERE trade_id IN (SELECT id FROM trades WHERE status != 'pending');
"""

# An exit is a persisted state machine (exit_plan.ExitState as JSON), advanced run by run; partial-exit tranches are
# taken at most once per trade.
MIGRATION_0004 = """
ALTER TABLE exits ADD COLUMN plan TEXT;
ALTER TABLE exits ADD COLUMN tranche INTEGER;
ALTER TABLE trades ADD COLUMN partial_15_done INTEGER NOT NULL DEFAULT 0;
ALTER TABLE trades ADD COLUMN partial_25_done INTEGER NOT NULL DEFAULT 0;
"""

# update-outcomes reads the candidates whose 10-session outcome is still open: a few sessions' worth, while the table
# grows by every candidate of every scan. A partial index holds just those rows (an entry leaves it when price_10d is
# filled in), ordered by session as the job reads them.
MIGRATION_0005 = """
CREATE INDEX candidates_outcome_pending ON candidates(session) WHERE price_10d IS NULL;
"""

# Every scan and monitor run refreshes the orders that are not final yet and applies fills not yet in the trade
# book; both read a handful of rows out of every order ever sent. Two partial indexes hold just those rows. The
# condition of orders_live must stay word for word the LIVE_ORDERS of journal/reconcile.py (SQLite uses a partial index
# only for a query carrying its condition); the final statuses are common/types.py's FINAL_STATUSES plus 'not_sent'.
MIGRATION_0006 = """
CREATE INDEX orders_live ON orders(status)
    WHERE status NOT IN ('canceled', 'expired', 'filled', 'rejected', 'replaced', 'stopped', 'suspended', 'not_sent');
CREATE INDEX orders_unapplied ON orders(trade_id) WHERE filled_qty > applied_qty;
"""

# A cached quote remembers what it was built from (common/types.py DAILY or INTRADAY), so a scan served from the
# cache reads the same signals as one served by the source. Rows from before live seconds; they count as daily.
MIGRATION_0007 = """
ALTER TABLE quote_cache ADD COLUMN view TEXT NOT NULL DEFAULT 'daily';
"""

# The product's own schedule (`tick`): one row per planned run it has dealt with, so each runs at most once, a missed
# one is skipped with its reason, and the dead-man check knows which did not run. `slot` is core/schedule's key.
MIGRATION_0008 = """
CREATE TABLE schedule_slots (
    slot TEXT PRIMARY KEY, session TEXT NOT NULL, job TEXT NOT NULL, command TEXT NOT NULL, planned_at TEXT NOT NULL,
    status TEXT NOT NULL
        CHECK (status IN ('running','done','failed','deferred','skipped','superseded','missed')),
    attempts INTEGER NOT NULL DEFAULT 0, started_at TEXT, finished_at TEXT, exit_code INTEGER, seconds REAL,
    reason TEXT, alerted_at TEXT);
CREATE INDEX schedule_slots_session ON schedule_slots(session);
"""

# The learned candidate ranking (`learn fit`): each fitted model, versioned, with the span it learned from and the day
# from which a scan may use it (its fitted-until day plus the outcome horizon: no label from the future leaks in);
# each candidate records the figure the active model gave it and that model's version.
MIGRATION_0009 = """
CREATE TABLE models (
    version INTEGER PRIMARY KEY, created_at TEXT NOT NULL, kind TEXT NOT NULL, target TEXT NOT NULL,
    fitted_until TEXT NOT NULL, usable_from TEXT NOT NULL, horizon INTEGER NOT NULL, features TEXT NOT NULL,
    train_start TEXT NOT NULL, train_end TEXT NOT NULL, rows INTEGER NOT NULL, validation TEXT NOT NULL,
    library TEXT NOT NULL, model BLOB NOT NULL, source TEXT);
ALTER TABLE candidates ADD COLUMN learned REAL;
ALTER TABLE candidates ADD COLUMN model_version INTEGER;
"""

# (name, sql) in order; names are stored in _sqlite_migrations and must never change.
MIGRATIONS: list[tuple[str, str]] = [
    ("0001_initial", MIGRATION_0001),
    ("0002_quote_cache", MIGRATION_0002),
    ("0003_fill_ledger", MIGRATION_0003),
    ("0004_exit_plans", MIGRATION_0004),
    ("0005_pending_outcomes_index", MIGRATION_0005),
    ("0006_live_order_indexes", MIGRATION_0006),
    ("0007_quote_view", MIGRATION_0007),
    ("0008_schedule_slots", MIGRATION_0008),
    ("0009_learned_ranking", MIGRATION_0009),
]
