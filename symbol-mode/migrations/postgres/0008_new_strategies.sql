-- A firm-wide halt of new strategy activations beside the withdrawals halt:
-- command 'NewStrategiesHalt', applied through symbol_mode_apply like
-- 'WithdrawalsHalt', so it shares the version, the positions, the audit trail, the
-- authority rules, four eyes and the change feed:
--   * p_withdrawals carries the command's flag (TRUE halts new activations,
--     FALSE enables them again), and o_withdrawals answers it, for either halt;
--     the event keeps it in its own column, new_strategies_disabled;
--   * halting tightens (any operator, never waits); enabling again relaxes:
--     supervisor authority, a ticket, the halt's own position
--     (new_strategies_position) as the precondition, and approval action
--     strategies.enable-new (target 'new_strategies') for four eyes;
--   * the NOTIFY payload carries new_strategies_disabled, so a handle applies the
--     change without a read.
-- The tamper-evident log's entry of such an event names the command and whether it
-- relaxed (enabling again relaxes, halting does not), which is its flag.

ALTER TABLE symbol_mode_state ADD COLUMN IF NOT EXISTS new_strategies_disabled BOOLEAN NOT NULL DEFAULT FALSE;
ALTER TABLE symbol_mode_state ADD COLUMN IF NOT EXISTS new_strategies_position BIGINT NOT NULL DEFAULT 0;

ALTER TABLE symbol_mode_events ADD COLUMN IF NOT EXISTS new_strategies_disabled BOOLEAN;
ALTER TABLE symbol_mode_events DROP CONSTRAINT IF EXISTS symbol_mode_events_command_check;
ALTER TABLE symbol_mode_events ADD CONSTRAINT symbol_mode_events_command_check
    CHECK (command IN ('SetSymbolMode', 'SetGlobalMode', 'CancelAll', 'WithdrawalsHalt', 'RegisterSymbol',
                       'SetThrottle', 'NewStrategiesHalt'));
ALTER TABLE symbol_mode_events DROP CONSTRAINT IF EXISTS symbol_mode_events_new_strategies_check;
ALTER TABLE symbol_mode_events ADD CONSTRAINT symbol_mode_events_new_strategies_check
    CHECK ((command = 'NewStrategiesHalt') = (new_strategies_disabled IS NOT NULL));

-- Four eyes may be required before new strategy activations are enabled again.
ALTER TABLE approval_policy DROP CONSTRAINT IF EXISTS approval_policy_action_check;
ALTER TABLE approval_policy ADD CONSTRAINT approval_policy_action_check CHECK (action IN (
    'kill-switch.disengage', 'global-mode.relax', 'mode.relax', 'withdrawals.lift',
    'throttle.relax', 'scope.relax', 'strategies.enable-new'));
INSERT INTO approval_policy (action) VALUES ('strategies.enable-new') ON CONFLICT (action) DO NOTHING;

-- The target a command changes, as approval requests name it.
CREATE OR REPLACE FUNCTION symbol_mode_target(p_command TEXT, p_symbol TEXT) RETURNS TEXT
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE p_command
        WHEN 'SetSymbolMode' THEN 'mode:' || p_symbol
        WHEN 'SetGlobalMode' THEN 'global_mode'
        WHEN 'WithdrawalsHalt' THEN 'withdrawals'
        WHEN 'NewStrategiesHalt' THEN 'new_strategies'
        WHEN 'SetThrottle' THEN 'throttle:' || p_symbol
    END
$$;

-- What an event did, as refusals name it: the library's Command::describe.
CREATE OR REPLACE FUNCTION symbol_mode_event_what(e symbol_mode_events) RETURNS TEXT
LANGUAGE sql STABLE AS $$
    SELECT e.command
        || coalesce(' ' || e.symbol, '')
        || coalesce(' ' || e.from_mode || ' -> ' || e.to_mode, '')
        || CASE coalesce(e.withdrawals_halted, e.new_strategies_disabled)
               WHEN TRUE THEN ' on' WHEN FALSE THEN ' off' ELSE '' END
        || CASE WHEN e.command = 'SetThrottle'
                THEN ' ' || symbol_throttle_text(e.from_rate, e.from_burst)
                     || ' -> ' || symbol_throttle_text(e.to_rate, e.to_burst)
                ELSE '' END
$$;

-- The one current definition of symbol_mode_apply (migration 6's, with
-- 'NewStrategiesHalt' added); same arguments and answer.
CREATE OR REPLACE FUNCTION symbol_mode_apply(
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
    p_require_expected BOOLEAN DEFAULT FALSE,
    p_per_second       INTEGER DEFAULT NULL,
    p_burst            INTEGER DEFAULT NULL,
    p_break_glass      BOOLEAN DEFAULT FALSE,
    p_approving        UUID    DEFAULT NULL
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
    o_other_at       TIMESTAMPTZ,
    o_from_rate      INTEGER,
    o_from_burst     INTEGER,
    o_to_rate        INTEGER,
    o_to_burst       INTEGER
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
    v_from_rate  INTEGER;
    v_from_burst INTEGER;
    v_to_rate    INTEGER := p_per_second;
    v_to_burst   INTEGER := p_burst;
    g            RECORD;
    v_key        TEXT;
    v_break_glass BOOLEAN := FALSE;
BEGIN
    IF p_command NOT IN ('SetSymbolMode', 'SetGlobalMode', 'CancelAll', 'WithdrawalsHalt', 'RegisterSymbol', 'SetThrottle', 'NewStrategiesHalt') THEN
        RAISE EXCEPTION 'unknown command %', p_command USING ERRCODE = '22023';
    END IF;
    IF p_command = 'SetThrottle' AND ((p_per_second IS NULL) <> (p_burst IS NULL)
        OR p_per_second NOT BETWEEN 1 AND 1000000 OR p_burst NOT BETWEEN 1 AND 1000000
        OR p_burst < (p_per_second + 999) / 1000) THEN
        RAISE EXCEPTION 'a throttle needs a rate and a burst between 1 and 1000000, the burst at least a millisecond''s worth of the rate (or neither, to clear it), not % and %',
            p_per_second, p_burst USING ERRCODE = '22023';
    END IF;
    IF p_approving IS NOT NULL THEN
        -- The approving supervisor's authority was decided by tradepulse_approve;
        -- the actor is the requester's.
        PERFORM tradepulse_approval_verify(p_approving, 'symbol_mode');
        v_authority := 'supervisor';
    ELSE
        v_authority := tradepulse_authority(p_authority, p_actor);
    END IF;
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
        WHEN 'NewStrategiesHalt' THEN s.new_strategies_position
        WHEN 'SetThrottle' THEN coalesce((SELECT t.position FROM symbol_throttles t WHERE t.symbol = p_symbol), 0)
    END;
    IF v_target IS NOT NULL THEN
        SELECT * INTO l FROM symbol_mode_events ev WHERE ev.position = v_target;
    END IF;

    SELECT * INTO e FROM symbol_mode_events ev WHERE ev.request_id = p_request_id;
    IF FOUND THEN
        IF e.command <> p_command OR e.actor <> p_actor
           OR e.symbol IS DISTINCT FROM (CASE WHEN p_command IN ('SetSymbolMode', 'CancelAll', 'RegisterSymbol', 'SetThrottle') THEN p_symbol END)
           OR e.to_mode IS DISTINCT FROM (CASE WHEN p_command IN ('SetSymbolMode', 'SetGlobalMode') THEN p_to_mode END)
           OR e.withdrawals_halted IS DISTINCT FROM (CASE WHEN p_command = 'WithdrawalsHalt' THEN p_withdrawals END)
           OR e.new_strategies_disabled IS DISTINCT FROM (CASE WHEN p_command = 'NewStrategiesHalt' THEN p_withdrawals END)
           OR (p_command = 'SetThrottle' AND NOT p_only_tighten
               AND (e.to_rate IS DISTINCT FROM p_per_second OR e.to_burst IS DISTINCT FROM p_burst)) THEN
            RETURN QUERY SELECT 'request_reused'::TEXT, e.version, e.request_id, e.command, e.symbol,
                e.from_mode, e.to_mode, coalesce(e.withdrawals_halted, e.new_strategies_disabled), e.reason, e.actor, e.ticket, e.at,
                e.position, e.login, e.authority, v_target,
                e.position, e.actor, symbol_mode_event_what(e), e.at,
                e.from_rate, e.from_burst, e.to_rate, e.to_burst;
        ELSIF v_target IS NOT NULL AND v_target <> e.position THEN
            RETURN QUERY SELECT 'superseded'::TEXT, e.version, e.request_id, e.command, e.symbol,
                e.from_mode, e.to_mode, coalesce(e.withdrawals_halted, e.new_strategies_disabled), e.reason, e.actor, e.ticket, e.at,
                e.position, e.login, e.authority, v_target,
                l.position, l.actor, symbol_mode_event_what(l), l.at,
                e.from_rate, e.from_burst, e.to_rate, e.to_burst;
        ELSE
            RETURN QUERY SELECT 'replayed'::TEXT, e.version, e.request_id, e.command, e.symbol,
                e.from_mode, e.to_mode, coalesce(e.withdrawals_halted, e.new_strategies_disabled), e.reason, e.actor, e.ticket, e.at,
                e.position, e.login, e.authority, v_target,
                NULL::BIGINT, NULL::TEXT, NULL::TEXT, NULL::TIMESTAMPTZ,
                e.from_rate, e.from_burst, e.to_rate, e.to_burst;
        END IF;
        RETURN;
    END IF;

    IF p_command IN ('SetSymbolMode', 'CancelAll', 'SetThrottle') THEN
        IF NOT EXISTS (SELECT 1 FROM symbol_registry r WHERE r.symbol = p_symbol) THEN
            SELECT r.symbol INTO v_known FROM symbol_registry r WHERE r.folded = symbol_fold(p_symbol);
            RETURN QUERY SELECT 'unknown_symbol'::TEXT, s.version, p_request_id, p_command, v_known,
                NULL::TEXT, NULL::TEXT, NULL::BOOLEAN, p_reason, p_actor, p_ticket, now(), s.position,
                NULL::TEXT, NULL::TEXT, v_target, NULL::BIGINT, NULL::TEXT, NULL::TEXT, NULL::TIMESTAMPTZ,
                v_from_rate, v_from_burst, v_to_rate, v_to_burst;
            RETURN;
        END IF;
    ELSIF p_command = 'RegisterSymbol' THEN
        SELECT r.symbol INTO v_known FROM symbol_registry r WHERE r.folded = symbol_fold(p_symbol);
        IF v_known IS NOT NULL THEN
            RETURN QUERY SELECT CASE WHEN v_known = p_symbol THEN 'unchanged' ELSE 'symbol_conflict' END,
                s.version, p_request_id, p_command, v_known,
                NULL::TEXT, NULL::TEXT, NULL::BOOLEAN, p_reason, p_actor, p_ticket, now(), s.position,
                NULL::TEXT, NULL::TEXT, v_target, NULL::BIGINT, NULL::TEXT, NULL::TEXT, NULL::TIMESTAMPTZ,
                v_from_rate, v_from_burst, v_to_rate, v_to_burst;
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
                NULL::TEXT, NULL::TEXT, v_target, NULL::BIGINT, NULL::TEXT, NULL::TEXT, NULL::TIMESTAMPTZ,
                v_from_rate, v_from_burst, v_to_rate, v_to_burst;
            RETURN;
        END IF;
        v_relaxes := v_step <> 'tighten';
    ELSIF p_command IN ('WithdrawalsHalt', 'NewStrategiesHalt') THEN
        v_relaxes := NOT p_withdrawals;
    ELSIF p_command = 'SetThrottle' THEN
        SELECT t.per_second, t.burst INTO v_from_rate, v_from_burst
          FROM symbol_throttles t WHERE t.symbol = p_symbol;
        IF p_only_tighten THEN
            -- At most the requested limit in each dimension; nothing when already so.
            v_to_rate := least(coalesce(v_from_rate, p_per_second), p_per_second);
            v_to_burst := least(coalesce(v_from_burst, p_burst), p_burst);
            IF v_to_rate IS NOT DISTINCT FROM v_from_rate AND v_to_burst IS NOT DISTINCT FROM v_from_burst THEN
                RETURN QUERY SELECT 'unchanged'::TEXT, s.version, p_request_id, p_command, p_symbol,
                    NULL::TEXT, NULL::TEXT, NULL::BOOLEAN, p_reason, p_actor, p_ticket, now(), s.position,
                    NULL::TEXT, NULL::TEXT, v_target, NULL::BIGINT, NULL::TEXT, NULL::TEXT, NULL::TIMESTAMPTZ,
                    v_from_rate, v_from_burst, v_from_rate, v_from_burst;
                RETURN;
            END IF;
        END IF;
        -- Clearing a limit, or raising its rate or its burst, relaxes.
        v_relaxes := v_from_rate IS NOT NULL
            AND (v_to_rate IS NULL OR v_to_rate > v_from_rate OR v_to_burst > v_from_burst);
    END IF;

    IF v_relaxes THEN
        IF v_authority <> 'supervisor' THEN
            RAISE EXCEPTION '% acts as operator (login %): % relaxes safety and needs supervisor authority',
                p_actor, session_user,
                CASE p_command
                    WHEN 'WithdrawalsHalt' THEN 'lifting the withdrawals halt'
                    WHEN 'NewStrategiesHalt' THEN 'enabling new strategy activations again'
                    WHEN 'SetGlobalMode' THEN format('the global mode is %s; %s', v_from, p_to_mode)
                    WHEN 'SetThrottle' THEN format('the throttle of %s is %s; %s', p_symbol,
                        symbol_throttle_text(v_from_rate, v_from_burst), symbol_throttle_text(v_to_rate, v_to_burst))
                    ELSE format('symbol %s is %s; %s', p_symbol, v_from, p_to_mode)
                END
                USING ERRCODE = '42501',
                      HINT = 'a supervisor relaxes (login with tradepulse_supervisor)';
        END IF;
        IF v_step = 'forbidden' THEN
            RETURN QUERY SELECT 'transition_forbidden'::TEXT, s.version, p_request_id, p_command, p_symbol,
                v_from, p_to_mode, NULL::BOOLEAN, p_reason, p_actor, p_ticket, now(), s.position,
                NULL::TEXT, NULL::TEXT, v_target, NULL::BIGINT, NULL::TEXT, NULL::TEXT, NULL::TIMESTAMPTZ,
                v_from_rate, v_from_burst, v_to_rate, v_to_burst;
            RETURN;
        END IF;
        IF p_ticket IS NULL THEN
            RETURN QUERY SELECT 'ticket_required'::TEXT, s.version, p_request_id, p_command, p_symbol,
                v_from, p_to_mode, NULL::BOOLEAN, p_reason, p_actor, p_ticket, now(), s.position,
                NULL::TEXT, NULL::TEXT, v_target, NULL::BIGINT, NULL::TEXT, NULL::TEXT, NULL::TIMESTAMPTZ,
                v_from_rate, v_from_burst, v_to_rate, v_to_burst;
            RETURN;
        END IF;
        IF (p_expected IS NULL AND p_require_expected)
           OR (p_expected IS NOT NULL AND p_expected <> v_target) THEN
            RETURN QUERY SELECT CASE WHEN p_expected IS NULL THEN 'precondition_required'
                                     ELSE 'precondition_failed' END,
                s.version, p_request_id, p_command, p_symbol,
                v_from, p_to_mode, NULL::BOOLEAN, p_reason, p_actor, p_ticket, now(), s.position,
                NULL::TEXT, NULL::TEXT, v_target,
                l.position, l.actor, symbol_mode_event_what(l), l.at,
                v_from_rate, v_from_burst, v_to_rate, v_to_burst;
            RETURN;
        END IF;
        IF p_approving IS NULL THEN
            SELECT * INTO g FROM tradepulse_approval_gate(p_request_id,
                CASE p_command WHEN 'SetSymbolMode' THEN 'mode.relax'
                               WHEN 'SetGlobalMode' THEN 'global-mode.relax'
                               WHEN 'WithdrawalsHalt' THEN 'withdrawals.lift'
                               WHEN 'NewStrategiesHalt' THEN 'strategies.enable-new'
                               ELSE 'throttle.relax' END,
                'symbol_mode', symbol_mode_target(p_command, p_symbol),
                CASE p_command
                    WHEN 'WithdrawalsHalt' THEN 'lift the withdrawals halt'
                    WHEN 'NewStrategiesHalt' THEN 'enable new strategy activations again'
                    WHEN 'SetGlobalMode' THEN format('global mode %s -> %s', v_from, p_to_mode)
                    WHEN 'SetThrottle' THEN format('throttle of %s %s -> %s', p_symbol,
                        symbol_throttle_text(v_from_rate, v_from_burst), symbol_throttle_text(v_to_rate, v_to_burst))
                    ELSE format('%s %s -> %s', p_symbol, v_from, p_to_mode)
                END,
                jsonb_build_object('command', p_command, 'symbol', p_symbol, 'to_mode', p_to_mode,
                                   'withdrawals', p_withdrawals, 'per_second', p_per_second,
                                   'burst', p_burst),
                p_reason, p_ticket, p_actor, v_target, p_break_glass);
            IF g.o_gate IN ('pending', 'closed') THEN
                -- o_request_id: the request; o_at: when it expires; o_other_what:
                -- how a closed request ended.
                RETURN QUERY SELECT CASE WHEN g.o_gate = 'pending' THEN 'pending' ELSE 'request_closed' END,
                    s.version, g.o_id, p_command, p_symbol,
                    v_from, p_to_mode, p_withdrawals, p_reason, p_actor, p_ticket, g.o_expires_at, s.position,
                    NULL::TEXT, NULL::TEXT, v_target, NULL::BIGINT, NULL::TEXT, g.o_status, NULL::TIMESTAMPTZ,
                    v_from_rate, v_from_burst, v_to_rate, v_to_burst;
                RETURN;
            END IF;
            v_break_glass := g.o_gate = 'break_glass';
        END IF;
    END IF;

    UPDATE symbol_mode_state
       SET version = s.version + 1,
           position = failover_next_position(s.position),
           updated_at = now(),
           global_mode = CASE WHEN p_command = 'SetGlobalMode' THEN p_to_mode ELSE global_mode END,
           withdrawals_halted = CASE WHEN p_command = 'WithdrawalsHalt' THEN p_withdrawals
                                     ELSE withdrawals_halted END,
           new_strategies_disabled = CASE WHEN p_command = 'NewStrategiesHalt' THEN p_withdrawals
                                          ELSE new_strategies_disabled END
     WHERE id = 1
    RETURNING * INTO s;
    UPDATE symbol_mode_state
       SET global_position = CASE WHEN p_command = 'SetGlobalMode' THEN s.position ELSE global_position END,
           withdrawals_position = CASE WHEN p_command = 'WithdrawalsHalt' THEN s.position
                                       ELSE withdrawals_position END,
           new_strategies_position = CASE WHEN p_command = 'NewStrategiesHalt' THEN s.position
                                          ELSE new_strategies_position END
     WHERE id = 1
    RETURNING * INTO s;

    IF p_command = 'SetSymbolMode' THEN
        INSERT INTO symbol_modes AS m (symbol, mode, version, updated_at, updated_by, reason, ticket, position)
        VALUES (p_symbol, p_to_mode, s.version, s.updated_at, p_actor, p_reason, p_ticket, s.position)
        ON CONFLICT (symbol) DO UPDATE
           SET mode = EXCLUDED.mode, version = EXCLUDED.version, updated_at = EXCLUDED.updated_at,
               updated_by = EXCLUDED.updated_by, reason = EXCLUDED.reason, ticket = EXCLUDED.ticket,
               position = EXCLUDED.position;
    ELSIF p_command = 'SetThrottle' THEN
        INSERT INTO symbol_throttles AS t (symbol, per_second, burst, version, updated_at, updated_by, reason, ticket, position)
        VALUES (p_symbol, v_to_rate, v_to_burst, s.version, s.updated_at, p_actor, p_reason, p_ticket, s.position)
        ON CONFLICT (symbol) DO UPDATE
           SET per_second = EXCLUDED.per_second, burst = EXCLUDED.burst, version = EXCLUDED.version,
               updated_at = EXCLUDED.updated_at, updated_by = EXCLUDED.updated_by,
               reason = EXCLUDED.reason, ticket = EXCLUDED.ticket, position = EXCLUDED.position;
    ELSIF p_command = 'RegisterSymbol' THEN
        INSERT INTO symbol_registry (symbol, folded, registered_at, registered_by, position)
        VALUES (p_symbol, symbol_fold(p_symbol), s.updated_at, p_actor, s.position);
    END IF;

    INSERT INTO symbol_mode_events (version, position, request_id, command, symbol, from_mode, to_mode,
                                    withdrawals_halted, relaxes, reason, actor, ticket, at, login, authority,
                                    from_rate, from_burst, to_rate, to_burst, approval_id, break_glass,
                                    new_strategies_disabled)
    VALUES (s.version, s.position, p_request_id, p_command,
            CASE WHEN p_command IN ('SetSymbolMode', 'CancelAll', 'RegisterSymbol', 'SetThrottle') THEN p_symbol END,
            v_from,
            CASE WHEN p_command IN ('SetSymbolMode', 'SetGlobalMode') THEN p_to_mode END,
            CASE WHEN p_command = 'WithdrawalsHalt' THEN p_withdrawals END,
            v_relaxes, p_reason, p_actor, p_ticket, s.updated_at, session_user, v_authority,
            v_from_rate, v_from_burst,
            CASE WHEN p_command = 'SetThrottle' THEN v_to_rate END,
            CASE WHEN p_command = 'SetThrottle' THEN v_to_burst END,
            p_approving, v_break_glass,
            CASE WHEN p_command = 'NewStrategiesHalt' THEN p_withdrawals END);
    v_key := symbol_mode_target(p_command, p_symbol);
    IF v_key IS NOT NULL THEN
        SELECT * INTO e FROM symbol_mode_events ev WHERE ev.position = s.position;
        PERFORM tradepulse_approval_applied('symbol_mode', v_key, s.position, p_actor,
                                            symbol_mode_event_what(e), p_approving);
    END IF;

    -- Delivered on COMMIT, in commit order. The payload carries the delta this
    -- command made after the previous version, so that a handle whose snapshot is at
    -- that version applies it without a read (one NOTIFY per command, not one SELECT
    -- per process).
    SELECT ev.request_id INTO v_prev FROM symbol_mode_events ev WHERE ev.version = s.version - 1;
    PERFORM pg_notify('symbol_mode_changed', json_build_object(
        'position', s.position, 'version', s.version,
        'since_event', v_prev, 'head_event', p_request_id,
        'global', s.global_mode, 'withdrawals_halted', s.withdrawals_halted,
        'new_strategies_disabled', s.new_strategies_disabled,
        'symbol', CASE WHEN p_command = 'SetSymbolMode' THEN p_symbol END,
        'mode', CASE WHEN p_command = 'SetSymbolMode' THEN p_to_mode END,
        'throttle', CASE WHEN p_command = 'SetThrottle' THEN json_build_object(
            'symbol', p_symbol, 'per_second', v_to_rate, 'burst', v_to_burst) END)::TEXT);
    IF p_command = 'CancelAll' THEN
        PERFORM pg_notify('symbol_mode_cancel_all', s.position::TEXT);
    END IF;

    RETURN QUERY SELECT CASE WHEN v_break_glass THEN 'applied_break_glass' ELSE 'applied' END,
        s.version, p_request_id, p_command,
        CASE WHEN p_command IN ('SetSymbolMode', 'CancelAll', 'RegisterSymbol', 'SetThrottle') THEN p_symbol END,
        v_from,
        CASE WHEN p_command IN ('SetSymbolMode', 'SetGlobalMode') THEN p_to_mode END,
        CASE WHEN p_command IN ('WithdrawalsHalt', 'NewStrategiesHalt') THEN p_withdrawals END,
        p_reason, p_actor, p_ticket, s.updated_at, s.position, session_user::TEXT, v_authority,
        s.position, NULL::BIGINT, NULL::TEXT, NULL::TEXT, NULL::TIMESTAMPTZ,
                v_from_rate, v_from_burst, v_to_rate, v_to_burst;
END
$$;

-- CREATE OR REPLACE resets what ALTER FUNCTION set: run as its owner again, with the
-- fixed search_path.
DO $grants$
BEGIN
    EXECUTE format('ALTER FUNCTION symbol_mode_apply(UUID, TEXT, TEXT, TEXT, BOOLEAN, BOOLEAN, TEXT, TEXT, TEXT, TEXT, BIGINT, BOOLEAN, INTEGER, INTEGER, BOOLEAN, UUID) SECURITY DEFINER SET search_path = %I, pg_temp', current_schema());
END
$grants$;
REVOKE ALL ON FUNCTION symbol_mode_apply(UUID, TEXT, TEXT, TEXT, BOOLEAN, BOOLEAN, TEXT, TEXT, TEXT, TEXT, BIGINT, BOOLEAN, INTEGER, INTEGER, BOOLEAN, UUID) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION symbol_mode_apply(UUID, TEXT, TEXT, TEXT, BOOLEAN, BOOLEAN, TEXT, TEXT, TEXT, TEXT, BIGINT, BOOLEAN, INTEGER, INTEGER, BOOLEAN, UUID)
    TO tradepulse_operator, tradepulse_service;
