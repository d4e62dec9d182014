-- The tamper-evident audit log: one Merkle tree (RFC 9162 hashing) over every
-- control's audit events, in commit order.
--
--   audit_log       one row per event: its index in the tree, the control and the
--                   event's position, the canonical entry (encoding tp-audit-v1, built
--                   by tradepulse_audit_entry) and its leaf hash SHA-256(0x00 ‖ entry).
--   audit_log_head  one row: the tree size and its right edge, the roots of the
--                   perfect subtrees (largest first, one per set bit of the size); the
--                   root folds the edge from the right: H(e1, H(e2, … H(ek-1, ek))),
--                   node hash SHA-256(0x01 ‖ left ‖ right).
--
-- A control attaches its events table with tradepulse_audit_attach, which back-fills
-- the events already there (in position order) and adds an AFTER INSERT trigger.
-- Appending locks the head row until the transaction ends, so entries take indices in
-- commit order; the lock wait is bounded like every control's (tradepulse_bound_lock_wait).
-- Only the trigger writes (SECURITY DEFINER, fixed search_path); viewers read.

CREATE TABLE IF NOT EXISTS audit_log (
    idx       BIGINT      PRIMARY KEY CHECK (idx >= 0),
    control   TEXT        NOT NULL,
    position  BIGINT      NOT NULL,
    entry     BYTEA       NOT NULL,
    leaf_hash BYTEA       NOT NULL CHECK (octet_length(leaf_hash) = 32),
    at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (control, position)
);

CREATE TABLE IF NOT EXISTS audit_log_head (
    id   SMALLINT PRIMARY KEY CHECK (id = 1),
    size BIGINT   NOT NULL CHECK (size >= 0),
    edge BYTEA[]  NOT NULL
);
INSERT INTO audit_log_head (id, size, edge) VALUES (1, 0, '{}') ON CONFLICT (id) DO NOTHING;

SELECT tradepulse_make_append_only('audit_log');

-- A timestamp as the encoding writes it: UTC, RFC 3339, six fractional digits,
-- whatever the session's TimeZone.
CREATE OR REPLACE FUNCTION tradepulse_audit_time(p_at TIMESTAMPTZ) RETURNS TEXT
LANGUAGE sql STABLE STRICT AS $$
    SELECT to_char(p_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')
$$;

-- The canonical entry (encoding tp-audit-v1) of an event row given as JSONB
-- (to_jsonb of the row): the version tag, a space, and a JSON object with keys in
-- byte order and no whitespace; strings escaped as JSON requires (what to_json
-- writes), integers in decimal, booleans, null; timestamps by tradepulse_audit_time;
-- durations in microseconds. failover_core::audit_log::AuditRecord::canonical writes
-- the same bytes from an export's fields.
CREATE OR REPLACE FUNCTION tradepulse_audit_entry(p_control TEXT, r JSONB) RETURNS TEXT
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_position TEXT;
    v_action   TEXT;
    v_actor    TEXT;
    v_reason   TEXT := 'null';
    v_request  TEXT := 'null';
    v_ticket   TEXT := 'null';
    v_details  TEXT;
BEGIN
    IF p_control = 'kill_switch' THEN
        v_position := r->>'position';
        v_action := r->'action';
        v_actor := r->'actor';
        v_reason := coalesce((r->'reason')::TEXT, 'null');
        v_request := coalesce((r->'request_id')::TEXT, 'null');
        v_ticket := coalesce((r->'ticket')::TEXT, 'null');
        v_details := '"approval_id":' || coalesce((r->'approval_id')::TEXT, 'null')
            || ',"authority":' || coalesce((r->'authority')::TEXT, 'null')
            || ',"break_glass":' || coalesce((r->'break_glass')::TEXT, 'false')
            || ',"engaged":' || coalesce((r->'engaged')::TEXT, 'null')
            || ',"login":' || coalesce((r->'login')::TEXT, 'null')
            || ',"version":' || coalesce((r->'version')::TEXT, 'null');
    ELSIF p_control = 'symbol_mode' THEN
        v_position := r->>'position';
        v_action := r->'command';
        v_actor := r->'actor';
        v_reason := coalesce((r->'reason')::TEXT, 'null');
        v_request := coalesce((r->'request_id')::TEXT, 'null');
        v_ticket := coalesce((r->'ticket')::TEXT, 'null');
        v_details := '"approval_id":' || coalesce((r->'approval_id')::TEXT, 'null')
            || ',"authority":' || coalesce((r->'authority')::TEXT, 'null')
            || ',"break_glass":' || coalesce((r->'break_glass')::TEXT, 'false')
            || ',"from_burst":' || coalesce((r->'from_burst')::TEXT, 'null')
            || ',"from_mode":' || coalesce((r->'from_mode')::TEXT, 'null')
            || ',"from_rate":' || coalesce((r->'from_rate')::TEXT, 'null')
            || ',"login":' || coalesce((r->'login')::TEXT, 'null')
            || ',"relaxes":' || coalesce((r->'relaxes')::TEXT, 'null')
            || ',"symbol":' || coalesce((r->'symbol')::TEXT, 'null')
            || ',"to_burst":' || coalesce((r->'to_burst')::TEXT, 'null')
            || ',"to_mode":' || coalesce((r->'to_mode')::TEXT, 'null')
            || ',"to_rate":' || coalesce((r->'to_rate')::TEXT, 'null')
            || ',"version":' || coalesce((r->'version')::TEXT, 'null')
            || ',"withdrawals_halted":' || coalesce((r->'withdrawals_halted')::TEXT, 'null');
    ELSIF p_control = 'approvals' THEN
        v_position := r->>'position';
        v_action := r->'event';
        v_actor := r->'actor';
        v_reason := coalesce((r->'reason')::TEXT, 'null');
        v_request := coalesce((r->'request_id')::TEXT, 'null');
        v_ticket := coalesce((r->'ticket')::TEXT, 'null');
        v_details := '"action":' || coalesce((r->'action')::TEXT, 'null')
            || ',"detail":' || coalesce((r->'detail')::TEXT, 'null')
            || ',"login":' || coalesce((r->'login')::TEXT, 'null')
            || ',"what":' || coalesce((r->'what')::TEXT, 'null');
    ELSIF p_control = 'lease' THEN
        v_position := r->>'id';
        v_action := r->'event';
        v_actor := r->'holder';
        v_details := '"resource":' || coalesce((r->'resource')::TEXT, 'null')
            || ',"token":' || coalesce((r->'token')::TEXT, 'null')
            || ',"ttl_us":' || coalesce(
                (extract(epoch FROM (r->>'ttl')::INTERVAL) * 1000000)::BIGINT::TEXT, 'null');
    ELSE
        RAISE EXCEPTION 'audit log: unknown control %', p_control
            USING ERRCODE = '22023',
                  HINT = 'the canonical encoding knows kill_switch, symbol_mode, approvals and lease';
    END IF;
    RETURN 'tp-audit-v1 {"action":' || coalesce(v_action, 'null')
        || ',"actor":' || coalesce(v_actor, 'null')
        || ',"at":' || coalesce(to_json(tradepulse_audit_time((r->>'at')::TIMESTAMPTZ))::TEXT, 'null')
        || ',"control":' || to_json(p_control)::TEXT
        || ',"details":{' || v_details || '}'
        || ',"position":' || v_position
        || ',"reason":' || v_reason
        || ',"request_id":' || v_request
        || ',"ticket":' || v_ticket
        || '}';
END
$$;

-- The root of a tree from its right edge (the empty tree's root is SHA-256 of nothing).
CREATE OR REPLACE FUNCTION tradepulse_audit_root(p_edge BYTEA[]) RETURNS BYTEA
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    v_root BYTEA;
    i      INT;
BEGIN
    IF coalesce(array_length(p_edge, 1), 0) = 0 THEN
        RETURN sha256(''::BYTEA);
    END IF;
    v_root := p_edge[array_upper(p_edge, 1)];
    FOR i IN REVERSE array_upper(p_edge, 1) - 1 .. 1 LOOP
        v_root := sha256(decode('01', 'hex') || p_edge[i] || v_root);
    END LOOP;
    RETURN v_root;
END
$$;

-- Appends one event (a row as JSONB) to the log: encodes it, locks the head, takes the
-- next index, stores the leaf and carries it up the right edge. Returns the index.
CREATE OR REPLACE FUNCTION tradepulse_audit_append_row(p_control TEXT, r JSONB) RETURNS BIGINT
LANGUAGE plpgsql AS $$
DECLARE
    v_entry BYTEA := convert_to(tradepulse_audit_entry(p_control, r), 'UTF8');
    v_leaf  BYTEA;
    v_carry BYTEA;
    v_edge  BYTEA[];
    v_n     BIGINT;
    h       audit_log_head%ROWTYPE;
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
    VALUES (h.size, p_control,
            (CASE WHEN p_control = 'lease' THEN r->>'id' ELSE r->>'position' END)::BIGINT,
            v_entry, v_leaf);
    UPDATE audit_log_head SET size = h.size + 1, edge = array_append(v_edge, v_carry) WHERE id = 1;
    RETURN h.size;
END
$$;

-- AFTER INSERT FOR EACH ROW on an events table; TG_ARGV[0] names the control.
CREATE OR REPLACE FUNCTION tradepulse_audit_append() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM tradepulse_audit_append_row(TG_ARGV[0], to_jsonb(NEW));
    RETURN NULL;
END
$$;

-- Attaches an events table to the log: appends the rows not yet in it, in the order of
-- p_order_by (position, or id for leases), then appends every new row by trigger.
-- Returns how many rows it back-filled. Safe to run again.
CREATE OR REPLACE FUNCTION tradepulse_audit_attach(p_table REGCLASS, p_control TEXT, p_order_by TEXT)
RETURNS BIGINT
LANGUAGE plpgsql AS $$
DECLARE
    r RECORD;
    n BIGINT := 0;
BEGIN
    -- No insert may slip between the back-fill and the trigger.
    EXECUTE format('LOCK TABLE %s IN SHARE ROW EXCLUSIVE MODE', p_table);
    FOR r IN EXECUTE format(
        'SELECT to_jsonb(t) AS j FROM %s t WHERE NOT EXISTS '
        '(SELECT 1 FROM audit_log l WHERE l.control = $1 AND l.position = t.%I) ORDER BY t.%I',
        p_table, p_order_by, p_order_by) USING p_control
    LOOP
        PERFORM tradepulse_audit_append_row(p_control, r.j);
        n := n + 1;
    END LOOP;
    EXECUTE format('DROP TRIGGER IF EXISTS audit_log_append ON %s', p_table);
    EXECUTE format('CREATE TRIGGER audit_log_append AFTER INSERT ON %s FOR EACH ROW '
                   'EXECUTE FUNCTION tradepulse_audit_append(%L)', p_table, p_control);
    RETURN n;
END
$$;

DO $grants$
BEGIN
    EXECUTE format('ALTER FUNCTION tradepulse_audit_append_row(TEXT, JSONB) SECURITY DEFINER SET search_path = %I, pg_temp', current_schema());
    EXECUTE format('ALTER FUNCTION tradepulse_audit_append() SECURITY DEFINER SET search_path = %I, pg_temp', current_schema());
END
$grants$;
REVOKE ALL ON audit_log, audit_log_head FROM PUBLIC;
GRANT SELECT ON audit_log, audit_log_head TO tradepulse_viewer;
REVOKE ALL ON FUNCTION tradepulse_audit_append_row(TEXT, JSONB) FROM PUBLIC;
REVOKE ALL ON FUNCTION tradepulse_audit_attach(REGCLASS, TEXT, TEXT) FROM PUBLIC;
