-- NOTIFY kill_switch_changed carries the new state as JSON (or the position alone when
-- it would not fit the 8000-byte payload limit): a change costs the primary one
-- NOTIFY, however many processes listen.
CREATE OR REPLACE FUNCTION kill_switch_apply(
    p_request_id UUID,
    p_action     TEXT,
    p_reason     TEXT,
    p_actor      TEXT,
    p_ticket     TEXT
) RETURNS TABLE (
    o_engaged      BOOLEAN,
    o_reason       TEXT,
    o_updated_at   TIMESTAMPTZ,
    o_updated_by   TEXT,
    o_ticket       TEXT,
    o_version      BIGINT,
    o_position     BIGINT,
    o_replayed     BOOLEAN,
    o_prior_action TEXT
)
LANGUAGE plpgsql AS $$
DECLARE
    s kill_switch_state%ROWTYPE;
    e kill_switch_events%ROWTYPE;
    v_payload TEXT;
BEGIN
    SELECT * INTO s FROM kill_switch_state WHERE id = 1 FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'kill_switch_state row id = 1 is missing: run killswitch migrations'
            USING ERRCODE = '42P01';
    END IF;
    SELECT * INTO e FROM kill_switch_events WHERE request_id = p_request_id;
    IF FOUND THEN
        RETURN QUERY SELECT e.engaged, e.reason, e.at, e.actor, e.ticket, e.version, e.position,
            TRUE, e.action;
        RETURN;
    END IF;
    UPDATE kill_switch_state
       SET engaged = (p_action = 'engage'), reason = p_reason, updated_at = now(),
           updated_by = p_actor, ticket = p_ticket, version = s.version + 1,
           position = failover_next_position(s.position)
     WHERE id = 1
    RETURNING * INTO s;
    INSERT INTO kill_switch_events (version, position, request_id, action, engaged, reason, actor, ticket, at)
    VALUES (s.version, s.position, p_request_id, p_action, s.engaged, p_reason, p_actor, p_ticket, s.updated_at);
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
    RETURN QUERY SELECT s.engaged, s.reason, s.updated_at, s.updated_by, s.ticket, s.version, s.position,
        FALSE, p_action;
END
$$;
