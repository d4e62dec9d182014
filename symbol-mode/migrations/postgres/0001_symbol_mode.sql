-- Venue-wide state: exactly one row (id = 1): the global mode, the withdrawals halt
-- and the version (the sequence of the newest audited command).
CREATE TABLE IF NOT EXISTS symbol_mode_state (
    id                 SMALLINT    PRIMARY KEY CHECK (id = 1),
    global_mode        TEXT        NOT NULL
                       CHECK (global_mode IN ('NORMAL', 'CANCEL_ONLY', 'SOFT_HALT', 'HARD_HALT')),
    withdrawals_halted BOOLEAN     NOT NULL,
    version            BIGINT      NOT NULL CHECK (version >= 0),
    updated_at         TIMESTAMPTZ NOT NULL
);

INSERT INTO symbol_mode_state (id, global_mode, withdrawals_halted, version, updated_at)
VALUES (1, 'NORMAL', FALSE, 0, now())
ON CONFLICT (id) DO NOTHING;

-- Each symbol's own mode. A symbol without a row is NORMAL. `version` is the command
-- that last set it, so a reader at version V fetches only rows with version > V.
-- The symbol rules are enforced by the library; the CHECK is a backstop.
CREATE TABLE IF NOT EXISTS symbol_modes (
    symbol     TEXT        PRIMARY KEY
               CHECK (char_length(symbol) BETWEEN 1 AND 64 AND symbol !~ '[\x01-\x20\x7f]'),
    mode       TEXT        NOT NULL
               CHECK (mode IN ('NORMAL', 'CANCEL_ONLY', 'SOFT_HALT', 'HARD_HALT')),
    version    BIGINT      NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL,
    updated_by TEXT        NOT NULL,
    reason     TEXT        NOT NULL,
    ticket     TEXT
);

CREATE INDEX IF NOT EXISTS symbol_modes_version ON symbol_modes (version);

-- Append-only audit trail: exactly one row per accepted command, keyed by the
-- gapless version. `command` holds the runbook's names verbatim.
CREATE TABLE IF NOT EXISTS symbol_mode_events (
    version            BIGINT      PRIMARY KEY,
    request_id         UUID        NOT NULL UNIQUE,
    command            TEXT        NOT NULL
                       CHECK (command IN ('SetSymbolMode', 'SetGlobalMode', 'CancelAll', 'WithdrawalsHalt')),
    symbol             TEXT,
    from_mode          TEXT,
    to_mode            TEXT,
    withdrawals_halted BOOLEAN,
    relaxes            BOOLEAN     NOT NULL,
    reason             TEXT        NOT NULL CHECK (btrim(reason) <> ''),
    actor              TEXT        NOT NULL CHECK (btrim(actor) <> ''),
    ticket             TEXT,
    at                 TIMESTAMPTZ NOT NULL,
    CHECK (CASE command
        WHEN 'SetSymbolMode'   THEN symbol IS NOT NULL AND from_mode IS NOT NULL AND to_mode IS NOT NULL
        WHEN 'SetGlobalMode'   THEN symbol IS NULL AND from_mode IS NOT NULL AND to_mode IS NOT NULL
        WHEN 'CancelAll'       THEN symbol IS NOT NULL
        WHEN 'WithdrawalsHalt' THEN withdrawals_halted IS NOT NULL
    END),
    -- relaxing safety is audited with reason + ticket id
    CHECK (NOT relaxes OR ticket IS NOT NULL)
);

-- CancelAll subscribers read "every CancelAll after my cursor".
CREATE INDEX IF NOT EXISTS symbol_mode_events_cancel_all
    ON symbol_mode_events (version) WHERE command = 'CancelAll';

CREATE OR REPLACE FUNCTION symbol_mode_events_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'symbol_mode_events is append-only: % is not allowed', TG_OP
        USING ERRCODE = 'P0001';
END
$$;

DROP TRIGGER IF EXISTS symbol_mode_events_no_update ON symbol_mode_events;
CREATE TRIGGER symbol_mode_events_no_update
    BEFORE UPDATE OR DELETE ON symbol_mode_events
    FOR EACH ROW EXECUTE FUNCTION symbol_mode_events_append_only();

DROP TRIGGER IF EXISTS symbol_mode_events_no_truncate ON symbol_mode_events;
CREATE TRIGGER symbol_mode_events_no_truncate
    BEFORE TRUNCATE ON symbol_mode_events
    FOR EACH STATEMENT EXECUTE FUNCTION symbol_mode_events_append_only();

-- One round trip per command. Every command locks the state row first, so commands
-- are serialised: the transition check and the write cannot race, and versions are
-- gapless and become visible in order (a reader that sees version V sees every
-- version below it).
--
-- The transition rules are not repeated here: the library passes, for the requested
-- mode, the current modes from which the change is allowed (p_allowed_from), those
-- from which it relaxes safety and so needs a ticket (p_relax_from), and those from
-- which a tighten-only request is a no-op (p_noop_from).
--
-- o_status: 'applied' | 'replayed' (the request id was already applied: its event is
-- returned) | 'unchanged' (tighten-only no-op) | 'forbidden' | 'ticket_required'
-- (nothing written; o_from is the current mode).
CREATE OR REPLACE FUNCTION symbol_mode_apply(
    p_request_id   UUID,
    p_command      TEXT,
    p_symbol       TEXT,
    p_to_mode      TEXT,
    p_withdrawals  BOOLEAN,
    p_allowed_from TEXT[],
    p_relax_from   TEXT[],
    p_noop_from    TEXT[],
    p_reason       TEXT,
    p_actor        TEXT,
    p_ticket       TEXT
) RETURNS TABLE (
    o_status      TEXT,
    o_version     BIGINT,
    o_request_id  UUID,
    o_command     TEXT,
    o_symbol      TEXT,
    o_from        TEXT,
    o_to          TEXT,
    o_withdrawals BOOLEAN,
    o_reason      TEXT,
    o_actor       TEXT,
    o_ticket      TEXT,
    o_at          TIMESTAMPTZ
)
LANGUAGE plpgsql AS $$
DECLARE
    s         symbol_mode_state%ROWTYPE;
    e         symbol_mode_events%ROWTYPE;
    v_from    TEXT;
    v_relaxes BOOLEAN := FALSE;
BEGIN
    SELECT * INTO s FROM symbol_mode_state WHERE id = 1 FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'symbol_mode_state row id = 1 is missing: run symbol-mode migrations'
            USING ERRCODE = '42P01';
    END IF;
    SELECT * INTO e FROM symbol_mode_events WHERE request_id = p_request_id;
    IF FOUND THEN
        RETURN QUERY SELECT 'replayed'::TEXT, e.version, e.request_id, e.command, e.symbol,
            e.from_mode, e.to_mode, e.withdrawals_halted, e.reason, e.actor, e.ticket, e.at;
        RETURN;
    END IF;

    IF p_command IN ('SetSymbolMode', 'SetGlobalMode') THEN
        IF p_command = 'SetGlobalMode' THEN
            v_from := s.global_mode;
        ELSE
            SELECT m.mode INTO v_from FROM symbol_modes m WHERE m.symbol = p_symbol;
            v_from := coalesce(v_from, 'NORMAL');
        END IF;
        IF v_from = ANY (p_noop_from) THEN
            RETURN QUERY SELECT 'unchanged'::TEXT, s.version, p_request_id, p_command, p_symbol,
                v_from, v_from, NULL::BOOLEAN, p_reason, p_actor, p_ticket, now();
            RETURN;
        END IF;
        IF NOT (v_from = ANY (p_allowed_from)) THEN
            RETURN QUERY SELECT 'forbidden'::TEXT, s.version, p_request_id, p_command, p_symbol,
                v_from, p_to_mode, NULL::BOOLEAN, p_reason, p_actor, p_ticket, now();
            RETURN;
        END IF;
        v_relaxes := v_from = ANY (p_relax_from);
        IF v_relaxes AND p_ticket IS NULL THEN
            RETURN QUERY SELECT 'ticket_required'::TEXT, s.version, p_request_id, p_command, p_symbol,
                v_from, p_to_mode, NULL::BOOLEAN, p_reason, p_actor, p_ticket, now();
            RETURN;
        END IF;
    ELSIF p_command = 'WithdrawalsHalt' THEN
        v_relaxes := NOT p_withdrawals;
    END IF;

    UPDATE symbol_mode_state
       SET version = s.version + 1,
           updated_at = now(),
           global_mode = CASE WHEN p_command = 'SetGlobalMode' THEN p_to_mode ELSE global_mode END,
           withdrawals_halted = CASE WHEN p_command = 'WithdrawalsHalt' THEN p_withdrawals
                                     ELSE withdrawals_halted END
     WHERE id = 1
    RETURNING * INTO s;

    IF p_command = 'SetSymbolMode' THEN
        INSERT INTO symbol_modes AS m (symbol, mode, version, updated_at, updated_by, reason, ticket)
        VALUES (p_symbol, p_to_mode, s.version, s.updated_at, p_actor, p_reason, p_ticket)
        ON CONFLICT (symbol) DO UPDATE
           SET mode = EXCLUDED.mode, version = EXCLUDED.version, updated_at = EXCLUDED.updated_at,
               updated_by = EXCLUDED.updated_by, reason = EXCLUDED.reason, ticket = EXCLUDED.ticket;
    END IF;

    INSERT INTO symbol_mode_events (version, request_id, command, symbol, from_mode, to_mode,
                                    withdrawals_halted, relaxes, reason, actor, ticket, at)
    VALUES (s.version, p_request_id, p_command,
            CASE WHEN p_command IN ('SetSymbolMode', 'CancelAll') THEN p_symbol END,
            v_from,
            CASE WHEN p_command IN ('SetSymbolMode', 'SetGlobalMode') THEN p_to_mode END,
            CASE WHEN p_command = 'WithdrawalsHalt' THEN p_withdrawals END,
            v_relaxes, p_reason, p_actor, p_ticket, s.updated_at);

    -- Delivered on COMMIT, in commit order.
    PERFORM pg_notify('symbol_mode_changed', s.version::TEXT);
    IF p_command = 'CancelAll' THEN
        PERFORM pg_notify('symbol_mode_cancel_all', s.version::TEXT);
    END IF;

    RETURN QUERY SELECT 'applied'::TEXT, s.version, p_request_id, p_command,
        CASE WHEN p_command IN ('SetSymbolMode', 'CancelAll') THEN p_symbol END,
        v_from,
        CASE WHEN p_command IN ('SetSymbolMode', 'SetGlobalMode') THEN p_to_mode END,
        CASE WHEN p_command = 'WithdrawalsHalt' THEN p_withdrawals END,
        p_reason, p_actor, p_ticket, s.updated_at;
END
$$;
