-- Order-rate throttles: a limit of new orders per second (and a burst) on a
-- registered symbol, applied through symbol_mode_apply (as migration 6 defines it)
-- like a mode change (command 'SetThrottle'), so it shares the version, the positions, the audit trail, the
-- authority rules and the change feed:
--   * setting a limit where there is none, lowering it or re-asserting it tightens;
--     clearing it or raising its rate or its burst relaxes (supervisor authority,
--     a ticket, the throttle's own position as the precondition);
--   * p_only_tighten lowers the limit to at most the one given in each dimension
--     (the settlement-lag policy), and writes nothing when it already is;
--   * the NOTIFY payload carries the new limit, so a handle applies it without a read.

-- Each symbol's throttle. A cleared throttle keeps its row with NULL limits, so
-- that its position (what relaxing it names) and who cleared it stay known.
CREATE TABLE IF NOT EXISTS symbol_throttles (
    symbol     TEXT        PRIMARY KEY,
    per_second INTEGER     CHECK (per_second BETWEEN 1 AND 1000000),
    burst      INTEGER     CHECK (burst BETWEEN 1 AND 1000000),
    version    BIGINT      NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL,
    updated_by TEXT        NOT NULL,
    reason     TEXT        NOT NULL,
    ticket     TEXT,
    position   BIGINT      NOT NULL,
    CHECK ((per_second IS NULL) = (burst IS NULL)),
    -- The limiter's clock advances once a millisecond: at most the burst passes per
    -- tick, so a burst below a millisecond's worth of the rate could not let it through.
    CHECK (burst >= (per_second + 999) / 1000)
);
CREATE INDEX IF NOT EXISTS symbol_throttles_version ON symbol_throttles (version);

ALTER TABLE symbol_mode_events ADD COLUMN IF NOT EXISTS from_rate INTEGER;
ALTER TABLE symbol_mode_events ADD COLUMN IF NOT EXISTS from_burst INTEGER;
ALTER TABLE symbol_mode_events ADD COLUMN IF NOT EXISTS to_rate INTEGER;
ALTER TABLE symbol_mode_events ADD COLUMN IF NOT EXISTS to_burst INTEGER;
ALTER TABLE symbol_mode_events DROP CONSTRAINT IF EXISTS symbol_mode_events_command_check;
ALTER TABLE symbol_mode_events ADD CONSTRAINT symbol_mode_events_command_check
    CHECK (command IN ('SetSymbolMode', 'SetGlobalMode', 'CancelAll', 'WithdrawalsHalt', 'RegisterSymbol', 'SetThrottle'));
ALTER TABLE symbol_mode_events ADD CONSTRAINT symbol_mode_events_throttle_check
    CHECK (command <> 'SetThrottle' OR symbol IS NOT NULL);

-- A limit as the library displays it: '50/s burst 100', or 'none'.
CREATE OR REPLACE FUNCTION symbol_throttle_text(p_rate INTEGER, p_burst INTEGER) RETURNS TEXT
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN p_rate IS NULL THEN 'none' ELSE p_rate || '/s burst ' || p_burst END
$$;

-- What an event did, as refusals name it: the library's Command::describe.
CREATE OR REPLACE FUNCTION symbol_mode_event_what(e symbol_mode_events) RETURNS TEXT
LANGUAGE sql STABLE AS $$
    SELECT e.command
        || coalesce(' ' || e.symbol, '')
        || coalesce(' ' || e.from_mode || ' -> ' || e.to_mode, '')
        || CASE e.withdrawals_halted WHEN TRUE THEN ' on' WHEN FALSE THEN ' off' ELSE '' END
        || CASE WHEN e.command = 'SetThrottle'
                THEN ' ' || symbol_throttle_text(e.from_rate, e.from_burst)
                     || ' -> ' || symbol_throttle_text(e.to_rate, e.to_burst)
                ELSE '' END
$$;

-- symbol_mode_apply learns 'SetThrottle' in migration 6 (approvals), which replaces
-- the function once for both; the two are applied together by every migrate.

REVOKE ALL ON symbol_throttles FROM PUBLIC;
GRANT SELECT ON symbol_throttles TO tradepulse_viewer;
