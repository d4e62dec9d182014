-- Positions (failover_core::position): every change carries a position that strictly
-- increases across promotions, including asynchronous ones that lost acknowledged
-- changes; audit events are identified by it. `version` stays the count of changes in
-- this database's history (it can repeat after a lossy failover); `position` never
-- repeats.
ALTER TABLE kill_switch_state ADD COLUMN IF NOT EXISTS position BIGINT NOT NULL DEFAULT 0
    CHECK (position >= 0);
UPDATE kill_switch_state SET position = version WHERE position = 0;

ALTER TABLE kill_switch_events ADD COLUMN IF NOT EXISTS position BIGINT;
-- Events written before positions existed take their version (timeline 0: below
-- every position issued since). The append-only trigger is lifted for this one
-- backfill inside the migration's transaction.
ALTER TABLE kill_switch_events DISABLE TRIGGER kill_switch_events_no_update;
UPDATE kill_switch_events SET position = version WHERE position IS NULL;
ALTER TABLE kill_switch_events ENABLE TRIGGER kill_switch_events_no_update;
ALTER TABLE kill_switch_events ALTER COLUMN position SET NOT NULL;
CREATE UNIQUE INDEX IF NOT EXISTS kill_switch_events_position ON kill_switch_events (position);

DROP FUNCTION IF EXISTS kill_switch_apply(UUID, TEXT, TEXT, TEXT, TEXT);

-- One round trip per change: serialise on the state row, replay a request id that
-- was already applied (a retry after a lost COMMIT acknowledgement), otherwise bump
-- the version, take the next position, append the audit row and notify listeners
-- (delivered on COMMIT) with the whole new state as JSON — so that no listener reads
-- it back: one NOTIFY per change, not one SELECT per process — or with the position
-- alone when the state would not fit PostgreSQL's 8000-byte payload limit.
CREATE FUNCTION kill_switch_apply(
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
