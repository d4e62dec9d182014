-- The registry of controls: a control joins the audit log and the approvals by
-- registering itself, without re-issuing any shared function or constraint.
--
--   tradepulse_controls  one row per control: how its event rows encode as entries
--                        of the audit log (tp-audit-v1), or, for a control without
--                        events of its own (approval_policy), only its name.
--
-- A control's migration makes three calls, in this order:
--     SELECT tradepulse_make_append_only('widget_events');
--     SELECT tradepulse_register_control('widget', 'widget_events', 'position', 'action',
--         'actor', TRUE, TRUE, TRUE, ARRAY['login', 'size'], '{}');
--     SELECT tradepulse_audit_attach('widget_events', 'widget', 'position');
--
-- A registered control's entry is built from its row of the registry: the keys of
-- the position, action and actor; reason, request_id and ticket from the keys of those
-- names when it has them (null otherwise); details from its detail keys in byte order,
-- each value the row's JSON value, or the key's default when the row lacks the key
-- (a column added after the row was written), or null. Detail columns hold text,
-- integers, booleans or UUIDs: what is written is the JSON the row gives.
--
-- A registration never changes: an entry's bytes are re-derived from its event row
-- whenever the log is verified, so another encoding for a control that has entries
-- would make them all fail. Registering the same definition again does nothing; a
-- different one is refused. The registry is append-only.
--
-- Controls that are not registered are encoded by tradepulse_audit_entry_builtin, the
-- encoding from before the registry, which no control is ever added to: leases (their
-- ttl is an interval written in microseconds, which the generic encoding does not
-- express) stay there.

CREATE TABLE IF NOT EXISTS tradepulse_controls (
    control         TEXT    PRIMARY KEY CHECK (control ~ '^[a-z][a-z0-9_]*$'),
    -- Null for a control without events of its own; then every encoding column is null.
    events_table    TEXT    CHECK (events_table <> ''),
    position_key    TEXT    CHECK (position_key ~ '^[a-z_][a-z0-9_]*$'),
    action_key      TEXT    CHECK (action_key ~ '^[a-z_][a-z0-9_]*$'),
    actor_key       TEXT    CHECK (actor_key ~ '^[a-z_][a-z0-9_]*$'),
    has_reason      BOOLEAN,
    has_request_id  BOOLEAN,
    has_ticket      BOOLEAN,
    -- Sorted in byte order, no duplicates.
    detail_keys     TEXT[],
    -- key -> the JSON scalar written when an event row lacks the key.
    detail_defaults JSONB   CHECK (jsonb_typeof(detail_defaults) = 'object'),
    CONSTRAINT tradepulse_controls_encoding_whole CHECK (
        (events_table IS NULL) = (position_key IS NULL)
        AND (events_table IS NULL) = (action_key IS NULL)
        AND (events_table IS NULL) = (actor_key IS NULL)
        AND (events_table IS NULL) = (has_reason IS NULL)
        AND (events_table IS NULL) = (has_request_id IS NULL)
        AND (events_table IS NULL) = (has_ticket IS NULL)
        AND (events_table IS NULL) = (detail_keys IS NULL)
        AND (events_table IS NULL) = (detail_defaults IS NULL))
);

SELECT tradepulse_make_append_only('tradepulse_controls');

-- Registers a control, once, before its tradepulse_audit_attach. With only p_control
-- it registers a control without events of its own (one that approval requests may
-- name). p_details: the event row's keys written under "details" (any order; they are
-- kept in byte order). p_defaults: a JSON object, key -> what to write when a row
-- lacks that detail key. Idempotent: the same definition again does nothing; a
-- different definition is refused (existing entries would no longer verify).
CREATE OR REPLACE FUNCTION tradepulse_register_control(
    p_control      TEXT,
    p_events_table TEXT    DEFAULT NULL,
    p_position     TEXT    DEFAULT NULL,
    p_action       TEXT    DEFAULT NULL,
    p_actor        TEXT    DEFAULT NULL,
    p_reason       BOOLEAN DEFAULT NULL,
    p_request_id   BOOLEAN DEFAULT NULL,
    p_ticket       BOOLEAN DEFAULT NULL,
    p_details      TEXT[]  DEFAULT NULL,
    p_defaults     JSONB   DEFAULT NULL
) RETURNS VOID
LANGUAGE plpgsql AS $$
DECLARE
    v_new  tradepulse_controls%ROWTYPE;
    v_old  tradepulse_controls%ROWTYPE;
    v_key  TEXT;
BEGIN
    v_new.control := p_control;
    IF p_events_table IS NOT NULL THEN
        IF p_position IS NULL OR p_action IS NULL OR p_actor IS NULL OR p_reason IS NULL
           OR p_request_id IS NULL OR p_ticket IS NULL OR p_details IS NULL THEN
            RAISE EXCEPTION 'control %: an events table needs its whole encoding', p_control
                USING ERRCODE = '22023',
                      HINT = 'pass the position, action and actor keys, whether it has reason, '
                             'request_id and ticket, and its detail keys (ARRAY[]::TEXT[] for none)';
        END IF;
        v_new.events_table := p_events_table;
        v_new.position_key := p_position;
        v_new.action_key := p_action;
        v_new.actor_key := p_actor;
        v_new.has_reason := p_reason;
        v_new.has_request_id := p_request_id;
        v_new.has_ticket := p_ticket;
        v_new.detail_keys := coalesce(
            (SELECT array_agg(k ORDER BY k COLLATE "C")
               FROM (SELECT DISTINCT k FROM unnest(p_details) AS k) AS keys),
            ARRAY[]::TEXT[]);
        v_new.detail_defaults := coalesce(p_defaults, '{}'::JSONB);
        IF jsonb_typeof(v_new.detail_defaults) <> 'object' THEN
            RAISE EXCEPTION 'control %: the defaults must be a JSON object (key -> value), not %',
                p_control, v_new.detail_defaults
                USING ERRCODE = '22023';
        END IF;
        FOR v_key IN SELECT jsonb_object_keys(v_new.detail_defaults) LOOP
            IF NOT v_key = ANY (v_new.detail_keys) THEN
                RAISE EXCEPTION 'control %: default for %, which is not a detail key', p_control, v_key
                    USING ERRCODE = '22023', HINT = 'add it to the detail keys or drop the default';
            END IF;
            IF jsonb_typeof(v_new.detail_defaults -> v_key) IN ('object', 'array') THEN
                RAISE EXCEPTION 'control %: the default for % must be a JSON scalar', p_control, v_key
                    USING ERRCODE = '22023';
            END IF;
        END LOOP;
        FOREACH v_key IN ARRAY v_new.detail_keys LOOP
            IF v_key !~ '^[a-z_][a-z0-9_]*$' THEN
                RAISE EXCEPTION 'control %: detail key % is not a column name (lower-case letters, digits, _)',
                    p_control, v_key
                    USING ERRCODE = '22023';
            END IF;
        END LOOP;
    ELSIF num_nonnulls(p_position, p_action, p_actor, p_reason, p_request_id, p_ticket,
                       p_details, p_defaults) > 0 THEN
        RAISE EXCEPTION 'control %: an encoding without an events table', p_control
            USING ERRCODE = '22023',
                  HINT = 'name the events table, or pass only the control for one without events';
    END IF;

    INSERT INTO tradepulse_controls VALUES (v_new.*) ON CONFLICT (control) DO NOTHING;
    IF FOUND THEN
        RETURN;
    END IF;
    SELECT * INTO v_old FROM tradepulse_controls WHERE control = p_control;
    IF v_old IS DISTINCT FROM v_new THEN
        RAISE EXCEPTION 'control % is already registered with another definition', p_control
            USING ERRCODE = '42710',
                  DETAIL = format('registered: %s; asked: %s', to_jsonb(v_old), to_jsonb(v_new)),
                  HINT = 'a control''s encoding never changes, or its existing audit entries would '
                         'no longer verify: keep the registered definition, or register the new '
                         'encoding under a new control name';
    END IF;
END
$$;

-- The encoding from before the registry keeps serving what is not registered.
-- Callers name tradepulse_audit_entry and resolve it when they run, so they reach the
-- dispatcher below.
ALTER FUNCTION tradepulse_audit_entry(TEXT, JSONB) RENAME TO tradepulse_audit_entry_builtin;

-- The canonical entry (tp-audit-v1) of an event row of p_control given as JSONB: from
-- the control's registration when it is registered; otherwise from
-- tradepulse_audit_entry_builtin, for the controls that encoding knows.
CREATE OR REPLACE FUNCTION tradepulse_audit_entry(p_control TEXT, r JSONB) RETURNS TEXT
LANGUAGE plpgsql STABLE AS $$
DECLARE
    c         tradepulse_controls%ROWTYPE;
    v_details TEXT;
BEGIN
    SELECT * INTO c FROM tradepulse_controls WHERE control = p_control;
    IF NOT FOUND THEN
        -- The builtin encoding is frozen: it knows these controls and no other.
        IF p_control IN ('kill_switch', 'symbol_mode', 'scope', 'approvals', 'lease') THEN
            RETURN tradepulse_audit_entry_builtin(p_control, r);
        END IF;
        RAISE EXCEPTION 'audit log: control % is not registered, its events cannot be encoded', p_control
            USING ERRCODE = '22023',
                  HINT = 'the control''s migration calls tradepulse_register_control(control, '
                         'events_table, position_key, action_key, actor_key, has_reason, '
                         'has_request_id, has_ticket, detail_keys, defaults) before tradepulse_audit_attach';
    END IF;
    IF c.events_table IS NULL THEN
        RAISE EXCEPTION 'audit log: control % is registered without events', p_control
            USING ERRCODE = '22023',
                  HINT = 'a control with events registers its encoding: tradepulse_register_control '
                         'with its events table, keys and detail keys';
    END IF;
    SELECT string_agg(to_json(k)::TEXT || ':'
                      || coalesce((r -> k)::TEXT, (c.detail_defaults -> k)::TEXT, 'null'),
                      ',' ORDER BY k COLLATE "C")
      INTO v_details
      FROM unnest(c.detail_keys) AS k;
    RETURN 'tp-audit-v1 {"action":' || coalesce((r -> c.action_key)::TEXT, 'null')
        || ',"actor":' || coalesce((r -> c.actor_key)::TEXT, 'null')
        || ',"at":' || coalesce(to_json(tradepulse_audit_time((r->>'at')::TIMESTAMPTZ))::TEXT, 'null')
        || ',"control":' || to_json(p_control)::TEXT
        || ',"details":{' || coalesce(v_details, '') || '}'
        || ',"position":' || (r ->> c.position_key)
        || ',"reason":' || CASE WHEN c.has_reason
                                THEN coalesce((r -> 'reason')::TEXT, 'null') ELSE 'null' END
        || ',"request_id":' || CASE WHEN c.has_request_id
                                    THEN coalesce((r -> 'request_id')::TEXT, 'null') ELSE 'null' END
        || ',"ticket":' || CASE WHEN c.has_ticket
                                THEN coalesce((r -> 'ticket')::TEXT, 'null') ELSE 'null' END
        || '}';
END
$$;

-- The log records each entry under its event's position: the registered position key,
-- the id for leases (builtin), the position otherwise.
CREATE OR REPLACE FUNCTION tradepulse_audit_append_row(p_control TEXT, r JSONB) RETURNS BIGINT
LANGUAGE plpgsql AS $$
DECLARE
    v_entry    BYTEA := convert_to(tradepulse_audit_entry(p_control, r), 'UTF8');
    v_position BIGINT := (r ->> coalesce(
                              (SELECT position_key FROM tradepulse_controls WHERE control = p_control),
                              CASE WHEN p_control = 'lease' THEN 'id' ELSE 'position' END))::BIGINT;
    v_leaf     BYTEA;
    v_carry    BYTEA;
    v_edge     BYTEA[];
    v_n        BIGINT;
    h          audit_log_head%ROWTYPE;
BEGIN
    v_leaf := sha256(decode('00', 'hex') || v_entry);
    PERFORM tradepulse_bound_lock_wait();
    SELECT * INTO h FROM audit_log_head WHERE id = 1 FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'audit_log_head row id = 1 is missing: run the migrations'
            USING ERRCODE = '42P01';
    END IF;
    v_edge := h.edge;
    v_carry := v_leaf;
    v_n := h.size;
    WHILE v_n & 1 = 1 LOOP
        v_carry := sha256(decode('01', 'hex') || v_edge[array_upper(v_edge, 1)] || v_carry);
        v_edge := v_edge[1:array_upper(v_edge, 1) - 1];
        v_n := v_n >> 1;
    END LOOP;
    INSERT INTO audit_log (idx, control, position, entry, leaf_hash)
    VALUES (h.size, p_control, v_position, v_entry, v_leaf);
    UPDATE audit_log_head SET size = h.size + 1, edge = array_append(v_edge, v_carry) WHERE id = 1;
    RETURN h.size;
END
$$;

-- The controls core knows, with the encoding each has had since it joined the log
-- (break_glass, added later, is false in rows written before it).
SELECT tradepulse_register_control('kill_switch', 'kill_switch_events', 'position', 'action',
    'actor', TRUE, TRUE, TRUE,
    ARRAY['approval_id', 'authority', 'break_glass', 'engaged', 'login', 'version'],
    '{"break_glass": false}');
SELECT tradepulse_register_control('symbol_mode', 'symbol_mode_events', 'position', 'command',
    'actor', TRUE, TRUE, TRUE,
    ARRAY['approval_id', 'authority', 'break_glass', 'from_burst', 'from_mode', 'from_rate',
          'login', 'relaxes', 'symbol', 'to_burst', 'to_mode', 'to_rate', 'version',
          'withdrawals_halted'],
    '{"break_glass": false}');
SELECT tradepulse_register_control('scope', 'scope_events', 'position', 'action',
    'actor', TRUE, TRUE, TRUE,
    ARRAY['approval_id', 'authority', 'break_glass', 'from_mode', 'login', 'path', 'to_mode',
          'version'],
    '{"break_glass": false}');
SELECT tradepulse_register_control('approvals', 'approval_events', 'position', 'event',
    'actor', TRUE, TRUE, TRUE,
    ARRAY['action', 'detail', 'login', 'what'],
    '{}');
-- The approval policy's changes are approval requests too; its events are approvals'.
SELECT tradepulse_register_control('approval_policy');

-- An approval request names a registered control: a control that registers is
-- accepted with no change to this table.
ALTER TABLE approval_requests DROP CONSTRAINT IF EXISTS approval_requests_control_check;
ALTER TABLE approval_requests DROP CONSTRAINT IF EXISTS approval_requests_control_fkey;
ALTER TABLE approval_requests ADD CONSTRAINT approval_requests_control_fkey
    FOREIGN KEY (control) REFERENCES tradepulse_controls (control);

DO $grants$
BEGIN
    -- CREATE OR REPLACE resets these: the trigger's append writes as the owner.
    EXECUTE format('ALTER FUNCTION tradepulse_audit_append_row(TEXT, JSONB) SECURITY DEFINER SET search_path = %I, pg_temp', current_schema());
END
$grants$;
REVOKE ALL ON FUNCTION tradepulse_register_control(TEXT, TEXT, TEXT, TEXT, TEXT, BOOLEAN, BOOLEAN, BOOLEAN, TEXT[], JSONB) FROM PUBLIC;
REVOKE ALL ON tradepulse_controls FROM PUBLIC;
GRANT SELECT ON tradepulse_controls TO tradepulse_viewer;
