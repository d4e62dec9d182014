-- Four eyes before the kill switch is disengaged (failover-core's approvals
-- migration holds the policy, the requests and their trail). kill_switch_apply
-- decides, inside its transaction and against the locked row, after authority,
-- ticket and precondition:
--   * a disengage by a supervisor while `kill-switch.disengage` is required
--     creates a pending request bound to the exact command and the position it
--     was made against, changes nothing, and answers 'pending' (o_approval_id,
--     o_expires_at); the same request id again answers the same request;
--   * with p_break_glass it applies at once, marked break_glass in its event and
--     listed for a second supervisor to acknowledge;
--   * p_approving is the request a second supervisor's approval applies: only the
--     transaction that claimed it may pass it (kill_switch_approve does), the
--     request's position is the precondition, and the event names it;
--   * every applied change closes the requests pending against the switch as
--     superseded (an engage never waits for them).

ALTER TABLE kill_switch_events ADD COLUMN IF NOT EXISTS approval_id UUID;
ALTER TABLE kill_switch_events ADD COLUMN IF NOT EXISTS break_glass BOOLEAN NOT NULL DEFAULT FALSE;

DROP FUNCTION IF EXISTS kill_switch_apply(UUID, TEXT, TEXT, TEXT, TEXT, TEXT, BIGINT, BOOLEAN);

CREATE FUNCTION kill_switch_apply(
    p_request_id       UUID,
    p_action           TEXT,
    p_reason           TEXT,
    p_actor            TEXT,
    p_ticket           TEXT,
    p_authority        TEXT    DEFAULT 'supervisor',
    p_expected         BIGINT  DEFAULT NULL,
    p_require_expected BOOLEAN DEFAULT FALSE,
    p_break_glass      BOOLEAN DEFAULT FALSE,
    p_approving        UUID    DEFAULT NULL
) RETURNS TABLE (
    o_status         TEXT,
    o_engaged        BOOLEAN,
    o_reason         TEXT,
    o_updated_at     TIMESTAMPTZ,
    o_updated_by     TEXT,
    o_ticket         TEXT,
    o_version        BIGINT,
    o_position       BIGINT,
    o_other_position BIGINT,
    o_other_actor    TEXT,
    o_other_action   TEXT,
    o_other_at       TIMESTAMPTZ,
    o_approval_id    UUID,
    o_expires_at     TIMESTAMPTZ,
    o_break_glass    BOOLEAN
)
LANGUAGE plpgsql AS $$
DECLARE
    s kill_switch_state%ROWTYPE;
    e kill_switch_events%ROWTYPE;
    l kill_switch_events%ROWTYPE;
    g RECORD;
    v_authority TEXT;
    v_payload TEXT;
    v_break_glass BOOLEAN := FALSE;
BEGIN
    IF p_action NOT IN ('engage', 'disengage') THEN
        RAISE EXCEPTION 'unknown kill switch action %: engage or disengage', p_action
            USING ERRCODE = '22023';
    END IF;
    IF p_approving IS NOT NULL THEN
        -- The approving supervisor's authority was decided by tradepulse_approve;
        -- the actor is the requester's.
        PERFORM tradepulse_approval_verify(p_approving, 'kill_switch');
        v_authority := 'supervisor';
    ELSE
        v_authority := tradepulse_authority(p_authority, p_actor);
    END IF;
    PERFORM tradepulse_bound_lock_wait();
    SELECT * INTO s FROM kill_switch_state WHERE id = 1 FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'kill_switch_state row id = 1 is missing: run killswitch migrations'
            USING ERRCODE = '42P01';
    END IF;
    SELECT * INTO l FROM kill_switch_events WHERE position = s.position;

    SELECT * INTO e FROM kill_switch_events WHERE request_id = p_request_id;
    IF FOUND THEN
        IF e.action <> p_action OR e.actor <> p_actor THEN
            RETURN QUERY SELECT 'request_reused'::TEXT, s.engaged, s.reason, s.updated_at,
                s.updated_by, s.ticket, s.version, s.position,
                e.position, e.actor, e.action, e.at, NULL::UUID, NULL::TIMESTAMPTZ, FALSE;
        ELSIF e.position <> s.position THEN
            RETURN QUERY SELECT 'superseded'::TEXT, s.engaged, s.reason, s.updated_at,
                s.updated_by, s.ticket, s.version, s.position,
                l.position, l.actor, l.action, l.at, NULL::UUID, NULL::TIMESTAMPTZ, FALSE;
        ELSE
            RETURN QUERY SELECT 'replayed'::TEXT, e.engaged, e.reason, e.at, e.actor, e.ticket,
                e.version, e.position, NULL::BIGINT, NULL::TEXT, NULL::TEXT, NULL::TIMESTAMPTZ,
                e.approval_id, NULL::TIMESTAMPTZ, e.break_glass;
        END IF;
        RETURN;
    END IF;

    IF p_action = 'disengage' THEN
        IF v_authority <> 'supervisor' THEN
            RAISE EXCEPTION 'disengaging the kill switch relaxes safety and needs supervisor authority; % acts as operator (login %)', p_actor, session_user
                USING ERRCODE = '42501',
                      HINT = 'a supervisor disengages (login with tradepulse_supervisor)';
        END IF;
        IF p_expected IS NULL AND p_require_expected THEN
            RETURN QUERY SELECT 'precondition_required'::TEXT, s.engaged, s.reason, s.updated_at,
                s.updated_by, s.ticket, s.version, s.position,
                l.position, l.actor, l.action, l.at, NULL::UUID, NULL::TIMESTAMPTZ, FALSE;
            RETURN;
        END IF;
        IF p_expected IS NOT NULL AND p_expected <> s.position THEN
            RETURN QUERY SELECT 'precondition_failed'::TEXT, s.engaged, s.reason, s.updated_at,
                s.updated_by, s.ticket, s.version, s.position,
                l.position, l.actor, l.action, l.at, NULL::UUID, NULL::TIMESTAMPTZ, FALSE;
            RETURN;
        END IF;
        IF p_approving IS NULL THEN
            SELECT * INTO g FROM tradepulse_approval_gate(p_request_id, 'kill-switch.disengage',
                'kill_switch', 'kill_switch',
                format('disengage the kill switch (engaged: %s)', s.reason),
                jsonb_build_object('action', p_action), p_reason, p_ticket, p_actor, s.position,
                p_break_glass);
            IF g.o_gate IN ('pending', 'closed') THEN
                RETURN QUERY SELECT CASE WHEN g.o_gate = 'pending' THEN 'pending' ELSE 'request_closed' END,
                    s.engaged, s.reason, s.updated_at, s.updated_by, s.ticket, s.version, s.position,
                    NULL::BIGINT, NULL::TEXT, g.o_status, NULL::TIMESTAMPTZ,
                    g.o_id, g.o_expires_at, FALSE;
                RETURN;
            END IF;
            v_break_glass := g.o_gate = 'break_glass';
        END IF;
    END IF;

    UPDATE kill_switch_state
       SET engaged = (p_action = 'engage'), reason = p_reason, updated_at = now(),
           updated_by = p_actor, ticket = p_ticket, version = s.version + 1,
           position = failover_next_position(s.position)
     WHERE id = 1
    RETURNING * INTO s;
    INSERT INTO kill_switch_events (version, position, request_id, action, engaged, reason, actor,
                                    ticket, at, login, authority, approval_id, break_glass)
    VALUES (s.version, s.position, p_request_id, p_action, s.engaged, p_reason, p_actor, p_ticket,
            s.updated_at, session_user, v_authority, p_approving, v_break_glass);
    PERFORM tradepulse_approval_applied('kill_switch', 'kill_switch', s.position, p_actor, p_action,
                                        p_approving);
    -- The payload carries the whole new state, so that no listener has to read it
    -- back (one NOTIFY per change, not one SELECT per process); the position alone
    -- when it would not fit PostgreSQL's 8000-byte payload limit.
    v_payload := json_build_object(
        'position', s.position, 'version', s.version, 'engaged', s.engaged,
        'reason', s.reason, 'updated_by', s.updated_by, 'ticket', s.ticket,
        'updated_at_us', (extract(epoch FROM s.updated_at) * 1000000)::BIGINT)::TEXT;
    IF octet_length(v_payload) > 7900 THEN
        v_payload := s.position::TEXT;
    END IF;
    PERFORM pg_notify('kill_switch_changed', v_payload);
    RETURN QUERY SELECT 'applied'::TEXT, s.engaged, s.reason, s.updated_at, s.updated_by, s.ticket,
        s.version, s.position, NULL::BIGINT, NULL::TEXT, NULL::TEXT, NULL::TIMESTAMPTZ,
        p_approving, NULL::TIMESTAMPTZ, v_break_glass;
END
$$;

-- A second supervisor's approval of a pending disengage (called by
-- tradepulse_approve): the switch's row is locked first, then the request is
-- claimed (not self-approved, not expired) and applied with the position it was
-- made against as the precondition; a state that moved closes it as stale.
CREATE OR REPLACE FUNCTION kill_switch_approve(p_id UUID, p_actor TEXT)
RETURNS TABLE (
    o_status TEXT, o_id UUID, o_action TEXT, o_what TEXT, o_requested_by TEXT,
    o_position BIGINT, o_other_position BIGINT, o_other_actor TEXT, o_other_what TEXT,
    o_other_at TIMESTAMPTZ, o_expires_at TIMESTAMPTZ
)
LANGUAGE plpgsql AS $$
DECLARE
    c RECORD;
    r approval_requests%ROWTYPE;
    a RECORD;
BEGIN
    PERFORM 1 FROM kill_switch_state WHERE id = 1 FOR UPDATE;
    SELECT * INTO c FROM tradepulse_approval_claim(p_id, p_actor);
    r := c.o_request;
    IF c.o_verdict <> 'ok' THEN
        RETURN QUERY SELECT * FROM tradepulse_approval_unclaimed(c.o_verdict, r);
        RETURN;
    END IF;
    SELECT * INTO a FROM kill_switch_apply(r.id, r.params->>'action', r.reason, r.requested_by,
        r.ticket, 'supervisor', r.expected_position, FALSE, FALSE, r.id);
    RETURN QUERY SELECT * FROM tradepulse_approval_close(p_id, a.o_status, p_actor, a.o_position,
        a.o_other_position, a.o_other_actor, a.o_other_action, a.o_other_at);
END
$$;

DO $grants$
BEGIN
    EXECUTE format('ALTER FUNCTION kill_switch_apply(UUID, TEXT, TEXT, TEXT, TEXT, TEXT, BIGINT, BOOLEAN, BOOLEAN, UUID) SECURITY DEFINER SET search_path = %I, pg_temp', current_schema());
    EXECUTE format('ALTER FUNCTION kill_switch_approve(UUID, TEXT) SECURITY DEFINER SET search_path = %I, pg_temp', current_schema());
END
$grants$;
REVOKE ALL ON FUNCTION kill_switch_apply(UUID, TEXT, TEXT, TEXT, TEXT, TEXT, BIGINT, BOOLEAN, BOOLEAN, UUID) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION kill_switch_apply(UUID, TEXT, TEXT, TEXT, TEXT, TEXT, BIGINT, BOOLEAN, BOOLEAN, UUID)
    TO tradepulse_operator, tradepulse_service;
-- Reached only through tradepulse_approve, which decides the approver's authority.
REVOKE ALL ON FUNCTION kill_switch_approve(UUID, TEXT) FROM PUBLIC;
