-- Kill switch state: exactly one row (id = 1), read by the runbook verbatim:
--   SELECT engaged, reason, updated_at FROM kill_switch_state WHERE id = 1;
CREATE TABLE IF NOT EXISTS kill_switch_state (
    id         SMALLINT    PRIMARY KEY CHECK (id = 1),
    engaged    BOOLEAN     NOT NULL,
    reason     TEXT        NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL,
    updated_by TEXT        NOT NULL,
    ticket     TEXT,
    version    BIGINT      NOT NULL CHECK (version >= 0)
);

INSERT INTO kill_switch_state (id, engaged, reason, updated_at, updated_by, ticket, version)
VALUES (1, FALSE, '', now(), '', NULL, 0)
ON CONFLICT (id) DO NOTHING;

-- Append-only audit trail: one row per successful engage/disengage.
CREATE TABLE IF NOT EXISTS kill_switch_events (
    version    BIGINT      PRIMARY KEY,
    request_id UUID        NOT NULL UNIQUE,
    action     TEXT        NOT NULL CHECK (action IN ('engage', 'disengage')),
    engaged    BOOLEAN     NOT NULL,
    reason     TEXT        NOT NULL CHECK (btrim(reason) <> ''),
    actor      TEXT        NOT NULL CHECK (btrim(actor) <> ''),
    ticket     TEXT,
    at         TIMESTAMPTZ NOT NULL,
    -- relaxing safety is audited with reason + ticket id
    CHECK (action = 'engage' OR ticket IS NOT NULL)
);

CREATE OR REPLACE FUNCTION kill_switch_events_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'kill_switch_events is append-only: % is not allowed', TG_OP
        USING ERRCODE = 'P0001';
END
$$;

DROP TRIGGER IF EXISTS kill_switch_events_no_update ON kill_switch_events;
CREATE TRIGGER kill_switch_events_no_update
    BEFORE UPDATE OR DELETE ON kill_switch_events
    FOR EACH ROW EXECUTE FUNCTION kill_switch_events_append_only();

DROP TRIGGER IF EXISTS kill_switch_events_no_truncate ON kill_switch_events;
CREATE TRIGGER kill_switch_events_no_truncate
    BEFORE TRUNCATE ON kill_switch_events
    FOR EACH STATEMENT EXECUTE FUNCTION kill_switch_events_append_only();

-- One round trip per change: serialise on the state row, replay a request id that
-- was already applied (a retry after a lost COMMIT acknowledgement), otherwise bump
-- the version, append the audit row and notify listeners (delivered on COMMIT).
CREATE OR REPLACE FUNCTION kill_switch_apply(
    p_request_id UUID,
    p_action     TEXT,
    p_reason     TEXT,
    p_actor      TEXT,
    p_ticket     TEXT
) RETURNS TABLE (
    o_engaged    BOOLEAN,
    o_reason     TEXT,
    o_updated_at TIMESTAMPTZ,
    o_updated_by TEXT,
    o_ticket     TEXT,
    o_version    BIGINT,
    o_replayed   BOOLEAN,
    o_prior_action TEXT
)
LANGUAGE plpgsql AS $$
DECLARE
    s kill_switch_state%ROWTYPE;
    e kill_switch_events%ROWTYPE;
BEGIN
    SELECT * INTO s FROM kill_switch_state WHERE id = 1 FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'kill_switch_state row id = 1 is missing: run killswitch migrations'
            USING ERRCODE = '42P01';
    END IF;
    SELECT * INTO e FROM kill_switch_events WHERE request_id = p_request_id;
    IF FOUND THEN
        RETURN QUERY SELECT e.engaged, e.reason, e.at, e.actor, e.ticket, e.version, TRUE, e.action;
        RETURN;
    END IF;
    UPDATE kill_switch_state
       SET engaged = (p_action = 'engage'), reason = p_reason, updated_at = now(),
           updated_by = p_actor, ticket = p_ticket, version = s.version + 1
     WHERE id = 1
    RETURNING * INTO s;
    INSERT INTO kill_switch_events (version, request_id, action, engaged, reason, actor, ticket, at)
    VALUES (s.version, p_request_id, p_action, s.engaged, p_reason, p_actor, p_ticket, s.updated_at);
    PERFORM pg_notify('kill_switch_changed', s.version::text);
    RETURN QUERY SELECT s.engaged, s.reason, s.updated_at, s.updated_by, s.ticket, s.version, FALSE, p_action;
END
$$;
