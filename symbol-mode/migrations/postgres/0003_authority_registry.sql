-- Authority in the write, replays that never lie, and a registry of known symbols.
--
-- symbol_mode_apply decides everything inside its transaction, against the locked
-- state row:
--   * the authority: the lesser of what the caller claims and what the login holds
--     (tradepulse_authority); a command that relaxes (by the ladder below, decided
--     here from the mode it finds, never from what the caller says) needs supervisor
--     authority — refused with SQLSTATE 42501 otherwise;
--   * a relaxation is conditional on the position of its target the caller saw
--     (the symbol's, the global mode's or the withdrawals halt's own position);
--   * a request id belongs to one actor and one command: the same again returns the
--     original event ('replayed') only while it is still the latest change of its
--     target; 'superseded' after a later one; 'request_reused' otherwise;
--   * a mode change or CancelAll names a registered symbol exactly; registration
--     ('RegisterSymbol') is unique on a folded key (case and -_./: ignored).
-- Every event records the database login (session_user) beside the actor. The
-- tables are written only through the function (SECURITY DEFINER, fixed
-- search_path), which the roles may execute; viewers read.

-- The folded key of a symbol: what makes eth-usd, ETH_USD and ethusd one symbol.
CREATE OR REPLACE FUNCTION symbol_fold(p_symbol TEXT) RETURNS TEXT
LANGUAGE sql IMMUTABLE STRICT AS $$
    SELECT upper(translate(p_symbol, '-_./:', ''))
$$;

CREATE TABLE IF NOT EXISTS symbol_registry (
    symbol        TEXT        PRIMARY KEY
                  CHECK (symbol ~ '^[A-Za-z0-9._/:-]{1,64}$'),
    folded        TEXT        NOT NULL UNIQUE,
    registered_at TIMESTAMPTZ NOT NULL,
    registered_by TEXT        NOT NULL,
    position      BIGINT      NOT NULL
);

-- Every symbol that already has a mode is registered (the first of any that fold
-- alike; the others keep their rows but can no longer be changed).
INSERT INTO symbol_registry (symbol, folded, registered_at, registered_by, position)
SELECT m.symbol, symbol_fold(m.symbol), m.updated_at, m.updated_by, 0
  FROM symbol_modes m
 WHERE m.symbol ~ '^[A-Za-z0-9._/:-]{1,64}$'
 ORDER BY m.version
ON CONFLICT DO NOTHING;

-- Each target's own position: what a relaxation of it is conditional on.
ALTER TABLE symbol_mode_state ADD COLUMN IF NOT EXISTS global_position BIGINT NOT NULL DEFAULT 0;
ALTER TABLE symbol_mode_state ADD COLUMN IF NOT EXISTS withdrawals_position BIGINT NOT NULL DEFAULT 0;
UPDATE symbol_mode_state s SET
    global_position = coalesce((SELECT max(position) FROM symbol_mode_events
                                 WHERE command = 'SetGlobalMode'), 0),
    withdrawals_position = coalesce((SELECT max(position) FROM symbol_mode_events
                                      WHERE command = 'WithdrawalsHalt'), 0);
ALTER TABLE symbol_modes ADD COLUMN IF NOT EXISTS position BIGINT NOT NULL DEFAULT 0;
UPDATE symbol_modes m SET position = e.position
  FROM symbol_mode_events e WHERE e.version = m.version AND e.command = 'SetSymbolMode';

ALTER TABLE symbol_mode_events ADD COLUMN IF NOT EXISTS login TEXT;
ALTER TABLE symbol_mode_events ADD COLUMN IF NOT EXISTS authority TEXT
    CHECK (authority IN ('operator', 'supervisor'));
ALTER TABLE symbol_mode_events DROP CONSTRAINT IF EXISTS symbol_mode_events_command_check;
ALTER TABLE symbol_mode_events ADD CONSTRAINT symbol_mode_events_command_check
    CHECK (command IN ('SetSymbolMode', 'SetGlobalMode', 'CancelAll', 'WithdrawalsHalt', 'RegisterSymbol'));
ALTER TABLE symbol_mode_events ADD CONSTRAINT symbol_mode_events_register_check
    CHECK (command <> 'RegisterSymbol' OR symbol IS NOT NULL);

-- The mode ladder: 'tighten' (as strict or stricter), 'relax' (down the "may relax
-- to" column: CANCEL_ONLY -> NORMAL; SOFT_HALT -> CANCEL_ONLY, NORMAL; HARD_HALT ->
-- CANCEL_ONLY) or 'forbidden'. The library's SymbolMode::transition_to is the same
-- table; a test holds the two equal.
CREATE OR REPLACE FUNCTION symbol_mode_transition(p_from TEXT, p_to TEXT) RETURNS TEXT
LANGUAGE sql IMMUTABLE STRICT AS $$
    SELECT CASE
        WHEN array_position(m, p_to) >= array_position(m, p_from) THEN 'tighten'
        WHEN (p_from, p_to) IN (('CANCEL_ONLY', 'NORMAL'), ('SOFT_HALT', 'CANCEL_ONLY'),
                                ('SOFT_HALT', 'NORMAL'), ('HARD_HALT', 'CANCEL_ONLY')) THEN 'relax'
        ELSE 'forbidden'
    END
    FROM (SELECT ARRAY['NORMAL', 'CANCEL_ONLY', 'SOFT_HALT', 'HARD_HALT'] AS m) t
$$;

-- What an event did, as refusals name it: the library's Command::describe.
CREATE OR REPLACE FUNCTION symbol_mode_event_what(e symbol_mode_events) RETURNS TEXT
LANGUAGE sql STABLE AS $$
    SELECT e.command
        || coalesce(' ' || e.symbol, '')
        || coalesce(' ' || e.from_mode || ' -> ' || e.to_mode, '')
        || CASE e.withdrawals_halted WHEN TRUE THEN ' on' WHEN FALSE THEN ' off' ELSE '' END
$$;

DROP FUNCTION IF EXISTS symbol_mode_apply(UUID, TEXT, TEXT, TEXT, BOOLEAN, TEXT[], TEXT[], TEXT[], TEXT, TEXT, TEXT);

CREATE FUNCTION symbol_mode_apply(
    p_request_id       UUID,
    p_command          TEXT,
    p_symbol           TEXT,
    p_to_mode          TEXT,
    p_withdrawals      BOOLEAN,
    p_only_tighten     BOOLEAN,
    p_reason           TEXT,
    p_actor            TEXT,
    p_ticket           TEXT,
    p_authority        TEXT    DEFAULT 'supervisor',
    p_expected         BIGINT  DEFAULT NULL,
    p_require_expected BOOLEAN DEFAULT FALSE
) RETURNS TABLE (
    o_status         TEXT,
    o_version        BIGINT,
    o_request_id     UUID,
    o_command        TEXT,
    o_symbol         TEXT,
    o_from           TEXT,
    o_to             TEXT,
    o_withdrawals    BOOLEAN,
    o_reason         TEXT,
    o_actor          TEXT,
    o_ticket         TEXT,
    o_at             TIMESTAMPTZ,
    o_position       BIGINT,
    o_login          TEXT,
    o_authority      TEXT,
    o_target         BIGINT,
    o_other_position BIGINT,
    o_other_actor    TEXT,
    o_other_what     TEXT,
    o_other_at       TIMESTAMPTZ
)
LANGUAGE plpgsql AS $$
DECLARE
    s           symbol_mode_state%ROWTYPE;
    e           symbol_mode_events%ROWTYPE;
    l           symbol_mode_events%ROWTYPE;
    v_authority TEXT;
    v_from      TEXT;
    v_target    BIGINT;
    v_step      TEXT;
    v_relaxes   BOOLEAN := FALSE;
    v_prev      UUID;
    v_known     TEXT;
BEGIN
    IF p_command NOT IN ('SetSymbolMode', 'SetGlobalMode', 'CancelAll', 'WithdrawalsHalt', 'RegisterSymbol') THEN
        RAISE EXCEPTION 'unknown command %', p_command USING ERRCODE = '22023';
    END IF;
    v_authority := tradepulse_authority(p_authority, p_actor);
    PERFORM tradepulse_bound_lock_wait();
    SELECT * INTO s FROM symbol_mode_state WHERE id = 1 FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'symbol_mode_state row id = 1 is missing: run symbol-mode migrations'
            USING ERRCODE = '42P01';
    END IF;

    -- The target's own position, and the change that put it there.
    v_target := CASE p_command
        WHEN 'SetSymbolMode' THEN coalesce((SELECT m.position FROM symbol_modes m WHERE m.symbol = p_symbol), 0)
        WHEN 'SetGlobalMode' THEN s.global_position
        WHEN 'WithdrawalsHalt' THEN s.withdrawals_position
    END;
    IF v_target IS NOT NULL THEN
        SELECT * INTO l FROM symbol_mode_events ev WHERE ev.position = v_target;
    END IF;

    SELECT * INTO e FROM symbol_mode_events ev WHERE ev.request_id = p_request_id;
    IF FOUND THEN
        IF e.command <> p_command OR e.actor <> p_actor
           OR e.symbol IS DISTINCT FROM (CASE WHEN p_command IN ('SetSymbolMode', 'CancelAll', 'RegisterSymbol') THEN p_symbol END)
           OR e.to_mode IS DISTINCT FROM (CASE WHEN p_command IN ('SetSymbolMode', 'SetGlobalMode') THEN p_to_mode END)
           OR e.withdrawals_halted IS DISTINCT FROM (CASE WHEN p_command = 'WithdrawalsHalt' THEN p_withdrawals END) THEN
            RETURN QUERY SELECT 'request_reused'::TEXT, e.version, e.request_id, e.command, e.symbol,
                e.from_mode, e.to_mode, e.withdrawals_halted, e.reason, e.actor, e.ticket, e.at,
                e.position, e.login, e.authority, v_target,
                e.position, e.actor, symbol_mode_event_what(e), e.at;
        ELSIF v_target IS NOT NULL AND v_target <> e.position THEN
            RETURN QUERY SELECT 'superseded'::TEXT, e.version, e.request_id, e.command, e.symbol,
                e.from_mode, e.to_mode, e.withdrawals_halted, e.reason, e.actor, e.ticket, e.at,
                e.position, e.login, e.authority, v_target,
                l.position, l.actor, symbol_mode_event_what(l), l.at;
        ELSE
            RETURN QUERY SELECT 'replayed'::TEXT, e.version, e.request_id, e.command, e.symbol,
                e.from_mode, e.to_mode, e.withdrawals_halted, e.reason, e.actor, e.ticket, e.at,
                e.position, e.login, e.authority, v_target,
                NULL::BIGINT, NULL::TEXT, NULL::TEXT, NULL::TIMESTAMPTZ;
        END IF;
        RETURN;
    END IF;

    IF p_command IN ('SetSymbolMode', 'CancelAll') THEN
        IF NOT EXISTS (SELECT 1 FROM symbol_registry r WHERE r.symbol = p_symbol) THEN
            SELECT r.symbol INTO v_known FROM symbol_registry r WHERE r.folded = symbol_fold(p_symbol);
            RETURN QUERY SELECT 'unknown_symbol'::TEXT, s.version, p_request_id, p_command, v_known,
                NULL::TEXT, NULL::TEXT, NULL::BOOLEAN, p_reason, p_actor, p_ticket, now(), s.position,
                NULL::TEXT, NULL::TEXT, v_target, NULL::BIGINT, NULL::TEXT, NULL::TEXT, NULL::TIMESTAMPTZ;
            RETURN;
        END IF;
    ELSIF p_command = 'RegisterSymbol' THEN
        SELECT r.symbol INTO v_known FROM symbol_registry r WHERE r.folded = symbol_fold(p_symbol);
        IF v_known IS NOT NULL THEN
            RETURN QUERY SELECT CASE WHEN v_known = p_symbol THEN 'unchanged' ELSE 'symbol_conflict' END,
                s.version, p_request_id, p_command, v_known,
                NULL::TEXT, NULL::TEXT, NULL::BOOLEAN, p_reason, p_actor, p_ticket, now(), s.position,
                NULL::TEXT, NULL::TEXT, v_target, NULL::BIGINT, NULL::TEXT, NULL::TEXT, NULL::TIMESTAMPTZ;
            RETURN;
        END IF;
    END IF;

    IF p_command IN ('SetSymbolMode', 'SetGlobalMode') THEN
        IF p_command = 'SetGlobalMode' THEN
            v_from := s.global_mode;
        ELSE
            SELECT m.mode INTO v_from FROM symbol_modes m WHERE m.symbol = p_symbol;
            v_from := coalesce(v_from, 'NORMAL');
        END IF;
        v_step := symbol_mode_transition(v_from, p_to_mode);
        IF p_only_tighten AND (v_step <> 'tighten' OR v_from = p_to_mode) THEN
            RETURN QUERY SELECT 'unchanged'::TEXT, s.version, p_request_id, p_command, p_symbol,
                v_from, v_from, NULL::BOOLEAN, p_reason, p_actor, p_ticket, now(), s.position,
                NULL::TEXT, NULL::TEXT, v_target, NULL::BIGINT, NULL::TEXT, NULL::TEXT, NULL::TIMESTAMPTZ;
            RETURN;
        END IF;
        v_relaxes := v_step <> 'tighten';
    ELSIF p_command = 'WithdrawalsHalt' THEN
        v_relaxes := NOT p_withdrawals;
    END IF;

    IF v_relaxes THEN
        IF v_authority <> 'supervisor' THEN
            RAISE EXCEPTION '% acts as operator (login %): % relaxes safety and needs supervisor authority',
                p_actor, session_user,
                CASE p_command
                    WHEN 'WithdrawalsHalt' THEN 'lifting the withdrawals halt'
                    WHEN 'SetGlobalMode' THEN format('the global mode is %s; %s', v_from, p_to_mode)
                    ELSE format('symbol %s is %s; %s', p_symbol, v_from, p_to_mode)
                END
                USING ERRCODE = '42501',
                      HINT = 'a supervisor relaxes (login with tradepulse_supervisor)';
        END IF;
        IF v_step = 'forbidden' THEN
            RETURN QUERY SELECT 'transition_forbidden'::TEXT, s.version, p_request_id, p_command, p_symbol,
                v_from, p_to_mode, NULL::BOOLEAN, p_reason, p_actor, p_ticket, now(), s.position,
                NULL::TEXT, NULL::TEXT, v_target, NULL::BIGINT, NULL::TEXT, NULL::TEXT, NULL::TIMESTAMPTZ;
            RETURN;
        END IF;
        IF p_ticket IS NULL THEN
            RETURN QUERY SELECT 'ticket_required'::TEXT, s.version, p_request_id, p_command, p_symbol,
                v_from, p_to_mode, NULL::BOOLEAN, p_reason, p_actor, p_ticket, now(), s.position,
                NULL::TEXT, NULL::TEXT, v_target, NULL::BIGINT, NULL::TEXT, NULL::TEXT, NULL::TIMESTAMPTZ;
            RETURN;
        END IF;
        IF (p_expected IS NULL AND p_require_expected)
           OR (p_expected IS NOT NULL AND p_expected <> v_target) THEN
            RETURN QUERY SELECT CASE WHEN p_expected IS NULL THEN 'precondition_required'
                                     ELSE 'precondition_failed' END,
                s.version, p_request_id, p_command, p_symbol,
                v_from, p_to_mode, NULL::BOOLEAN, p_reason, p_actor, p_ticket, now(), s.position,
                NULL::TEXT, NULL::TEXT, v_target,
                l.position, l.actor, symbol_mode_event_what(l), l.at;
            RETURN;
        END IF;
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
    UPDATE symbol_mode_state
       SET global_position = CASE WHEN p_command = 'SetGlobalMode' THEN s.position ELSE global_position END,
           withdrawals_position = CASE WHEN p_command = 'WithdrawalsHalt' THEN s.position
                                       ELSE withdrawals_position END
     WHERE id = 1
    RETURNING * INTO s;

    IF p_command = 'SetSymbolMode' THEN
        INSERT INTO symbol_modes AS m (symbol, mode, version, updated_at, updated_by, reason, ticket, position)
        VALUES (p_symbol, p_to_mode, s.version, s.updated_at, p_actor, p_reason, p_ticket, s.position)
        ON CONFLICT (symbol) DO UPDATE
           SET mode = EXCLUDED.mode, version = EXCLUDED.version, updated_at = EXCLUDED.updated_at,
               updated_by = EXCLUDED.updated_by, reason = EXCLUDED.reason, ticket = EXCLUDED.ticket,
               position = EXCLUDED.position;
    ELSIF p_command = 'RegisterSymbol' THEN
        INSERT INTO symbol_registry (symbol, folded, registered_at, registered_by, position)
        VALUES (p_symbol, symbol_fold(p_symbol), s.updated_at, p_actor, s.position);
    END IF;

    INSERT INTO symbol_mode_events (version, position, request_id, command, symbol, from_mode, to_mode,
                                    withdrawals_halted, relaxes, reason, actor, ticket, at, login, authority)
    VALUES (s.version, s.position, p_request_id, p_command,
            CASE WHEN p_command IN ('SetSymbolMode', 'CancelAll', 'RegisterSymbol') THEN p_symbol END,
            v_from,
            CASE WHEN p_command IN ('SetSymbolMode', 'SetGlobalMode') THEN p_to_mode END,
            CASE WHEN p_command = 'WithdrawalsHalt' THEN p_withdrawals END,
            v_relaxes, p_reason, p_actor, p_ticket, s.updated_at, session_user, v_authority);

    -- Delivered on COMMIT, in commit order. The payload carries the delta this
    -- command made after the previous version, so that a handle whose snapshot is at
    -- that version applies it without a read (one NOTIFY per command, not one SELECT
    -- per process).
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
        CASE WHEN p_command IN ('SetSymbolMode', 'CancelAll', 'RegisterSymbol') THEN p_symbol END,
        v_from,
        CASE WHEN p_command IN ('SetSymbolMode', 'SetGlobalMode') THEN p_to_mode END,
        CASE WHEN p_command = 'WithdrawalsHalt' THEN p_withdrawals END,
        p_reason, p_actor, p_ticket, s.updated_at, s.position, session_user::TEXT, v_authority,
        s.position, NULL::BIGINT, NULL::TEXT, NULL::TEXT, NULL::TIMESTAMPTZ;
END
$$;

DO $grants$
BEGIN
    EXECUTE format('ALTER FUNCTION symbol_mode_apply(UUID, TEXT, TEXT, TEXT, BOOLEAN, BOOLEAN, TEXT, TEXT, TEXT, TEXT, BIGINT, BOOLEAN) SECURITY DEFINER SET search_path = %I, pg_temp', current_schema());
END
$grants$;
REVOKE ALL ON symbol_mode_state, symbol_modes, symbol_mode_events, symbol_registry FROM PUBLIC;
GRANT SELECT ON symbol_mode_state, symbol_modes, symbol_mode_events, symbol_registry TO tradepulse_viewer;
REVOKE ALL ON FUNCTION symbol_mode_apply(UUID, TEXT, TEXT, TEXT, BOOLEAN, BOOLEAN, TEXT, TEXT, TEXT, TEXT, BIGINT, BOOLEAN) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION symbol_mode_apply(UUID, TEXT, TEXT, TEXT, BOOLEAN, BOOLEAN, TEXT, TEXT, TEXT, TEXT, BIGINT, BOOLEAN)
    TO tradepulse_operator, tradepulse_service;
