-- Positions (failover_core::position): every command carries a position that strictly
-- increases across promotions, including asynchronous ones that lost acknowledged
-- commands; audit events are identified by it, CancelAll is delivered in its order
-- (the subscribers' `seq`) and NOTIFY carries it. NOTIFY symbol_mode_changed carries the
-- command's delta as JSON (position, version, the request ids at the previous and the
-- new version, global mode, withdrawals, the symbol's new mode): a command costs the
-- primary one NOTIFY, however many processes listen (a symbol is at most 64
-- characters, so the payload always fits). `version` stays the count of
-- commands in this database's history (it can repeat after a lossy failover; the
-- snapshot deltas use it together with the request id at a version, which tells a
-- diverged history); `position` never repeats.
ALTER TABLE symbol_mode_state ADD COLUMN IF NOT EXISTS position BIGINT NOT NULL DEFAULT 0
    CHECK (position >= 0);
UPDATE symbol_mode_state SET position = version WHERE position = 0;

ALTER TABLE symbol_mode_events ADD COLUMN IF NOT EXISTS position BIGINT;
-- Events written before positions existed take their version (timeline 0: below every
-- position issued since). The append-only trigger is lifted for this one backfill
-- inside the migration's transaction.
ALTER TABLE symbol_mode_events DISABLE TRIGGER symbol_mode_events_no_update;
UPDATE symbol_mode_events SET position = version WHERE position IS NULL;
ALTER TABLE symbol_mode_events ENABLE TRIGGER symbol_mode_events_no_update;
ALTER TABLE symbol_mode_events ALTER COLUMN position SET NOT NULL;
CREATE UNIQUE INDEX IF NOT EXISTS symbol_mode_events_position ON symbol_mode_events (position);
CREATE INDEX IF NOT EXISTS symbol_mode_events_cancel_all_position
    ON symbol_mode_events (position) WHERE command = 'CancelAll';

DROP FUNCTION IF EXISTS symbol_mode_apply(UUID, TEXT, TEXT, TEXT, BOOLEAN, TEXT[], TEXT[], TEXT[], TEXT, TEXT, TEXT);

CREATE FUNCTION symbol_mode_apply(
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
    o_at          TIMESTAMPTZ,
    o_position    BIGINT
)
LANGUAGE plpgsql AS $$
DECLARE
    s         symbol_mode_state%ROWTYPE;
    e         symbol_mode_events%ROWTYPE;
    v_from    TEXT;
    v_relaxes BOOLEAN := FALSE;
    v_prev    UUID;
BEGIN
    SELECT * INTO s FROM symbol_mode_state WHERE id = 1 FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'symbol_mode_state row id = 1 is missing: run symbol-mode migrations'
            USING ERRCODE = '42P01';
    END IF;
    SELECT * INTO e FROM symbol_mode_events WHERE request_id = p_request_id;
    IF FOUND THEN
        RETURN QUERY SELECT 'replayed'::TEXT, e.version, e.request_id, e.command, e.symbol,
            e.from_mode, e.to_mode, e.withdrawals_halted, e.reason, e.actor, e.ticket, e.at, e.position;
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
                v_from, v_from, NULL::BOOLEAN, p_reason, p_actor, p_ticket, now(), s.position;
            RETURN;
        END IF;
        IF NOT (v_from = ANY (p_allowed_from)) THEN
            RETURN QUERY SELECT 'forbidden'::TEXT, s.version, p_request_id, p_command, p_symbol,
                v_from, p_to_mode, NULL::BOOLEAN, p_reason, p_actor, p_ticket, now(), s.position;
            RETURN;
        END IF;
        v_relaxes := v_from = ANY (p_relax_from);
        IF v_relaxes AND p_ticket IS NULL THEN
            RETURN QUERY SELECT 'ticket_required'::TEXT, s.version, p_request_id, p_command, p_symbol,
                v_from, p_to_mode, NULL::BOOLEAN, p_reason, p_actor, p_ticket, now(), s.position;
            RETURN;
        END IF;
    ELSIF p_command = 'WithdrawalsHalt' THEN
        v_relaxes := NOT p_withdrawals;
    END IF;

    UPDATE symbol_mode_state
       SET version = s.version + 1,
           position = failover_next_position(s.position),
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

    INSERT INTO symbol_mode_events (version, position, request_id, command, symbol, from_mode, to_mode,
                                    withdrawals_halted, relaxes, reason, actor, ticket, at)
    VALUES (s.version, s.position, p_request_id, p_command,
            CASE WHEN p_command IN ('SetSymbolMode', 'CancelAll') THEN p_symbol END,
            v_from,
            CASE WHEN p_command IN ('SetSymbolMode', 'SetGlobalMode') THEN p_to_mode END,
            CASE WHEN p_command = 'WithdrawalsHalt' THEN p_withdrawals END,
            v_relaxes, p_reason, p_actor, p_ticket, s.updated_at);

    -- Delivered on COMMIT, in commit order.
    -- The payload carries the delta this command made after the previous version, so
    -- that a handle whose snapshot is at that version applies it without a read (one
    -- NOTIFY per command, not one SELECT per process).
    SELECT ev.request_id INTO v_prev FROM symbol_mode_events ev WHERE ev.version = s.version - 1;
    PERFORM pg_notify('symbol_mode_changed', json_build_object(
        'position', s.position, 'version', s.version,
        'since_event', v_prev, 'head_event', p_request_id,
        'global', s.global_mode, 'withdrawals_halted', s.withdrawals_halted,
        'symbol', CASE WHEN p_command = 'SetSymbolMode' THEN p_symbol END,
        'mode', CASE WHEN p_command = 'SetSymbolMode' THEN p_to_mode END)::TEXT);
    IF p_command = 'CancelAll' THEN
        PERFORM pg_notify('symbol_mode_cancel_all', s.position::TEXT);
    END IF;

    RETURN QUERY SELECT 'applied'::TEXT, s.version, p_request_id, p_command,
        CASE WHEN p_command IN ('SetSymbolMode', 'CancelAll') THEN p_symbol END,
        v_from,
        CASE WHEN p_command IN ('SetSymbolMode', 'SetGlobalMode') THEN p_to_mode END,
        CASE WHEN p_command = 'WithdrawalsHalt' THEN p_withdrawals END,
        p_reason, p_actor, p_ticket, s.updated_at, s.position;
END
$$;
