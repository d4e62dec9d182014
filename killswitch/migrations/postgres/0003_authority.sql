-- Authority in the write. Every change goes through kill_switch_apply, which decides
-- inside its transaction, against the locked row:
--   * authority: the lesser of what the caller claims and what the login holds
--     (tradepulse_authority, failover-core's roles migration); disengaging relaxes
--     safety and needs supervisor authority — refused with SQLSTATE 42501 otherwise;
--   * a relaxation is conditional on the position the caller saw (p_expected):
--     status 'precondition_failed' when the state moved, 'precondition_required'
--     when the caller had to name it (p_require_expected) and did not;
--   * a request id belongs to one actor and one action: the same again returns the
--     original result ('replayed') only while it is still the latest change;
--     'superseded' when a later change replaced it; 'request_reused' otherwise.
-- Every event records the database login (session_user) beside the actor.
-- The tables are written only through these functions (SECURITY DEFINER, fixed
-- search_path), which the roles may execute; viewers read.

ALTER TABLE kill_switch_events ADD COLUMN IF NOT EXISTS login TEXT;
ALTER TABLE kill_switch_events ADD COLUMN IF NOT EXISTS authority TEXT
    CHECK (authority IN ('operator', 'supervisor'));

DROP FUNCTION IF EXISTS kill_switch_apply(UUID, TEXT, TEXT, TEXT, TEXT);

CREATE FUNCTION kill_switch_apply(
    p_request_id       UUID,
    p_action           TEXT,
    p_reason           TEXT,
    p_actor            TEXT,
    p_ticket           TEXT,
    p_authority        TEXT    DEFAULT 'supervisor',
    p_expected         BIGINT  DEFAULT NULL,
    p_require_expected BOOLEAN DEFAULT FALSE
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
    o_other_at       TIMESTAMPTZ
)
LANGUAGE plpgsql AS $$
DECLARE
    s kill_switch_state%ROWTYPE;
    e kill_switch_events%ROWTYPE;
    l kill_switch_events%ROWTYPE;
    v_authority TEXT;
    v_payload TEXT;
BEGIN
    IF p_action NOT IN ('engage', 'disengage') THEN
        RAISE EXCEPTION 'unknown kill switch action %: engage or disengage', p_action
            USING ERRCODE = '22023';
    END IF;
    v_authority := tradepulse_authority(p_authority, p_actor);
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
                e.position, e.actor, e.action, e.at;
        ELSIF e.position <> s.position THEN
            RETURN QUERY SELECT 'superseded'::TEXT, s.engaged, s.reason, s.updated_at,
                s.updated_by, s.ticket, s.version, s.position,
                l.position, l.actor, l.action, l.at;
        ELSE
            RETURN QUERY SELECT 'replayed'::TEXT, e.engaged, e.reason, e.at, e.actor, e.ticket,
                e.version, e.position, NULL::BIGINT, NULL::TEXT, NULL::TEXT, NULL::TIMESTAMPTZ;
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
                l.position, l.actor, l.action, l.at;
            RETURN;
        END IF;
        IF p_expected IS NOT NULL AND p_expected <> s.position THEN
            RETURN QUERY SELECT 'precondition_failed'::TEXT, s.engaged, s.reason, s.updated_at,
                s.updated_by, s.ticket, s.version, s.position,
                l.position, l.actor, l.action, l.at;
            RETURN;
        END IF;
    END IF;

    UPDATE kill_switch_state
       SET engaged = (p_action = 'engage'), reason = p_reason, updated_at = now(),
           updated_by = p_actor, ticket = p_ticket, version = s.version + 1,
           position = failover_next_position(s.position)
     WHERE id = 1
    RETURNING * INTO s;
    INSERT INTO kill_switch_events (version, position, request_id, action, engaged, reason, actor,
                                    ticket, at, login, authority)
    VALUES (s.version, s.position, p_request_id, p_action, s.engaged, p_reason, p_actor, p_ticket,
            s.updated_at, session_user, v_authority);
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
        s.version, s.position, NULL::BIGINT, NULL::TEXT, NULL::TEXT, NULL::TIMESTAMPTZ;
END
$$;

-- The heartbeat confirms the state without changing it (updated_at only).
CREATE OR REPLACE FUNCTION kill_switch_heartbeat() RETURNS TIMESTAMPTZ
LANGUAGE sql AS $$
    UPDATE kill_switch_state SET updated_at = now() WHERE id = 1 RETURNING updated_at
$$;

-- Only the functions write; they run as their owner with a search_path fixed to the
-- schema they were created in.
DO $grants$
BEGIN
    EXECUTE format('ALTER FUNCTION kill_switch_apply(UUID, TEXT, TEXT, TEXT, TEXT, TEXT, BIGINT, BOOLEAN) SECURITY DEFINER SET search_path = %I, pg_temp', current_schema());
    EXECUTE format('ALTER FUNCTION kill_switch_heartbeat() SECURITY DEFINER SET search_path = %I, pg_temp', current_schema());
END
$grants$;
REVOKE ALL ON kill_switch_state, kill_switch_events FROM PUBLIC;
GRANT SELECT ON kill_switch_state, kill_switch_events TO tradepulse_viewer;
REVOKE ALL ON FUNCTION kill_switch_apply(UUID, TEXT, TEXT, TEXT, TEXT, TEXT, BIGINT, BOOLEAN) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION kill_switch_apply(UUID, TEXT, TEXT, TEXT, TEXT, TEXT, BIGINT, BOOLEAN)
    TO tradepulse_operator, tradepulse_service;
REVOKE ALL ON FUNCTION kill_switch_heartbeat() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION kill_switch_heartbeat() TO tradepulse_operator, tradepulse_service;
