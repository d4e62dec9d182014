-- Scoped controls: halt a desk, a strategy, an account or a venue.
--
--   scopes             one row per node of the firm's trees, named by its path
--                      (`acme/equities/mm-1`); its own mode and its last change.
--                      The root of every tree is the kill switch (kill_switch_state):
--                      engaged, every scope is effectively HALTED.
--   scope_events       the append-only trail, one row per applied change, each an
--                      entry of the audit log (control `scope`).
--   scope_store_state  one row: the store's version (changes its history holds) and
--                      the position of its newest change. Every change locks it, so
--                      changes take versions and positions in commit order.
--
-- scope_apply decides everything inside its transaction against the locked rows:
-- authority (tradepulse_authority), replays, the ticket and the step rule of a
-- relaxation, its precondition, the approval gate, the new position, the event, and
-- one NOTIFY scope_changed carrying the delta of this change. scope_effective reads
-- the kill switch and a node's ancestors in one statement.

CREATE TABLE IF NOT EXISTS scope_store_state (
    id       SMALLINT PRIMARY KEY CHECK (id = 1),
    version  BIGINT   NOT NULL CHECK (version >= 0),
    position BIGINT   NOT NULL CHECK (position >= 0)
);
INSERT INTO scope_store_state (id, version, position) VALUES (1, 0, 0) ON CONFLICT (id) DO NOTHING;

CREATE TABLE IF NOT EXISTS scopes (
    path       TEXT        PRIMARY KEY
               CHECK (path ~ '^[a-z0-9][a-z0-9._-]{0,63}(/[a-z0-9][a-z0-9._-]{0,63}){0,7}$'),
    parent     TEXT        REFERENCES scopes (path),
    tree       TEXT        NOT NULL,
    -- Two paths that read alike (case, and - _ . taken as one) cannot both exist.
    fold_key   TEXT        NOT NULL UNIQUE,
    mode       TEXT        NOT NULL CHECK (mode IN ('NORMAL', 'REDUCE_ONLY', 'CANCEL_ONLY', 'HALTED')),
    reason     TEXT        NOT NULL,
    updated_by TEXT        NOT NULL,
    ticket     TEXT,
    updated_at TIMESTAMPTZ NOT NULL,
    created_by TEXT        NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    -- The position of the node's last change (what a relaxation names) and the store
    -- version it was made at (what changes_since filters on).
    position   BIGINT      NOT NULL CHECK (position > 0),
    version    BIGINT      NOT NULL CHECK (version > 0)
);
CREATE INDEX IF NOT EXISTS scopes_version ON scopes (version);

CREATE TABLE IF NOT EXISTS scope_events (
    position    BIGINT      PRIMARY KEY CHECK (position > 0),
    version     BIGINT      NOT NULL CHECK (version > 0),
    request_id  UUID        NOT NULL UNIQUE,
    path        TEXT        NOT NULL,
    action      TEXT        NOT NULL CHECK (action IN ('create', 'set_mode')),
    from_mode   TEXT,
    to_mode     TEXT        NOT NULL,
    reason      TEXT        NOT NULL,
    actor       TEXT        NOT NULL,
    ticket      TEXT,
    at          TIMESTAMPTZ NOT NULL,
    login       TEXT,
    authority   TEXT,
    approval_id UUID,
    break_glass BOOLEAN     NOT NULL DEFAULT FALSE
);
CREATE INDEX IF NOT EXISTS scope_events_path ON scope_events (path, position DESC);
CREATE INDEX IF NOT EXISTS scope_events_version ON scope_events (version);

SELECT tradepulse_make_append_only('scope_events');
SELECT tradepulse_audit_attach('scope_events', 'scope', 'position');

-- The strictness of a mode: NORMAL 0 < REDUCE_ONLY 1 < CANCEL_ONLY 2 < HALTED 3.
CREATE OR REPLACE FUNCTION scope_mode_rank(p_mode TEXT) RETURNS INT
LANGUAGE sql IMMUTABLE STRICT AS $$
    SELECT CASE p_mode WHEN 'NORMAL' THEN 0 WHEN 'REDUCE_ONLY' THEN 1
                       WHEN 'CANCEL_ONLY' THEN 2 WHEN 'HALTED' THEN 3 END
$$;

-- The key two paths that read alike share.
CREATE OR REPLACE FUNCTION scope_fold(p_path TEXT) RETURNS TEXT
LANGUAGE sql IMMUTABLE STRICT AS $$
    SELECT translate(lower(p_path), '_.', '--')
$$;

-- What an event did, as refusals name it (the library's ScopeEvent::describe).
CREATE OR REPLACE FUNCTION scope_event_what(e scope_events) RETURNS TEXT
LANGUAGE sql STABLE AS $$
    SELECT CASE WHEN e.action = 'create' THEN 'create ' || e.path
                ELSE format('set_mode %s %s -> %s', e.path, e.from_mode, e.to_mode) END
$$;

-- The effective mode of a node, read in one statement with the kill switch: the
-- strictest of the root (engaged: HALTED), every ancestor and the node itself, and
-- who/why/when of what decides it (the root when engaged, otherwise the node closest
-- to the root holding the strictest mode). No row when the node does not exist.
CREATE OR REPLACE FUNCTION scope_effective(p_path TEXT)
RETURNS TABLE (
    o_path TEXT, o_own TEXT, o_effective TEXT, o_root BOOLEAN, o_decided_by TEXT,
    o_actor TEXT, o_reason TEXT, o_at TIMESTAMPTZ, o_position BIGINT
)
LANGUAGE sql STABLE AS $$
    WITH me AS (
        SELECT * FROM scopes WHERE path = p_path
    ), chain AS (
        SELECT s.*, scope_mode_rank(s.mode) AS rank, cardinality(string_to_array(s.path, '/')) AS depth
          FROM scopes s, me
         WHERE s.path = me.path OR starts_with(me.path, s.path || '/')
    ), best AS (
        SELECT * FROM chain ORDER BY rank DESC, depth ASC LIMIT 1
    )
    SELECT me.path, me.mode,
           CASE WHEN k.engaged THEN 'HALTED' ELSE best.mode END,
           coalesce(k.engaged, FALSE),
           CASE WHEN k.engaged THEN NULL ELSE best.path END,
           CASE WHEN k.engaged THEN k.updated_by ELSE best.updated_by END,
           CASE WHEN k.engaged THEN k.reason ELSE best.reason END,
           CASE WHEN k.engaged THEN k.updated_at ELSE best.updated_at END,
           CASE WHEN k.engaged THEN k.position ELSE best.position END
      FROM me CROSS JOIN best LEFT JOIN kill_switch_state k ON k.id = 1
$$;

CREATE OR REPLACE FUNCTION scope_apply(
    p_request_id       UUID,
    p_action           TEXT,
    p_path             TEXT,
    p_mode             TEXT,
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
    o_path           TEXT,
    o_mode           TEXT,
    o_reason         TEXT,
    o_updated_by     TEXT,
    o_ticket         TEXT,
    o_updated_at     TIMESTAMPTZ,
    o_created_by     TEXT,
    o_position       BIGINT,
    o_other_position BIGINT,
    o_other_actor    TEXT,
    o_other_what     TEXT,
    o_other_at       TIMESTAMPTZ,
    o_approval_id    UUID,
    o_expires_at     TIMESTAMPTZ,
    o_break_glass    BOOLEAN,
    o_version        BIGINT,
    o_since_event    UUID
)
LANGUAGE plpgsql AS $$
DECLARE
    st scope_store_state%ROWTYPE;
    sc scopes%ROWTYPE;
    e scope_events%ROWTYPE;
    l scope_events%ROWTYPE;
    g RECORD;
    v_authority TEXT;
    v_from TEXT;
    v_what TEXT;
    v_near TEXT;
    v_prev UUID;
    v_parent TEXT;
    v_break_glass BOOLEAN := FALSE;
BEGIN
    IF p_action NOT IN ('create', 'set_mode') THEN
        RAISE EXCEPTION 'unknown scope action %: create or set_mode', p_action USING ERRCODE = '22023';
    END IF;
    IF scope_mode_rank(p_mode) IS NULL THEN
        RAISE EXCEPTION 'unknown scope mode %: NORMAL, REDUCE_ONLY, CANCEL_ONLY or HALTED', p_mode
            USING ERRCODE = '22023';
    END IF;
    IF p_approving IS NOT NULL THEN
        -- The approving supervisor's authority was decided by tradepulse_approve;
        -- the actor is the requester's.
        PERFORM tradepulse_approval_verify(p_approving, 'scope');
        v_authority := 'supervisor';
    ELSE
        v_authority := tradepulse_authority(p_authority, p_actor);
    END IF;
    PERFORM tradepulse_bound_lock_wait();
    SELECT * INTO st FROM scope_store_state WHERE id = 1 FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'scope_store_state row id = 1 is missing: run killswitch migrations'
            USING ERRCODE = '42P01';
    END IF;

    SELECT * INTO e FROM scope_events WHERE request_id = p_request_id;
    IF FOUND THEN
        SELECT * INTO sc FROM scopes WHERE path = e.path;
        IF e.action <> p_action OR e.actor <> p_actor OR e.path <> p_path
           OR (p_action = 'set_mode' AND e.to_mode <> p_mode) THEN
            RETURN QUERY SELECT 'request_reused'::TEXT, sc.path, sc.mode, sc.reason, sc.updated_by,
                sc.ticket, sc.updated_at, sc.created_by, sc.position,
                e.position, e.actor, scope_event_what(e), e.at, NULL::UUID, NULL::TIMESTAMPTZ, FALSE, NULL::BIGINT, NULL::UUID;
        ELSIF e.position <> sc.position THEN
            SELECT * INTO l FROM scope_events WHERE position = sc.position;
            RETURN QUERY SELECT 'superseded'::TEXT, sc.path, sc.mode, sc.reason, sc.updated_by,
                sc.ticket, sc.updated_at, sc.created_by, sc.position,
                l.position, l.actor, scope_event_what(l), l.at, NULL::UUID, NULL::TIMESTAMPTZ, FALSE, NULL::BIGINT, NULL::UUID;
        ELSE
            RETURN QUERY SELECT 'replayed'::TEXT, sc.path, sc.mode, sc.reason, sc.updated_by,
                sc.ticket, sc.updated_at, sc.created_by, sc.position,
                NULL::BIGINT, NULL::TEXT, NULL::TEXT, NULL::TIMESTAMPTZ,
                e.approval_id, NULL::TIMESTAMPTZ, e.break_glass, NULL::BIGINT, NULL::UUID;
        END IF;
        RETURN;
    END IF;

    IF p_action = 'create' THEN
        IF EXISTS (SELECT 1 FROM scopes WHERE path = p_path) THEN
            RETURN QUERY SELECT 'already_exists'::TEXT, p_path, NULL::TEXT, NULL::TEXT, NULL::TEXT,
                NULL::TEXT, NULL::TIMESTAMPTZ, NULL::TEXT, NULL::BIGINT, NULL::BIGINT, NULL::TEXT,
                NULL::TEXT, NULL::TIMESTAMPTZ, NULL::UUID, NULL::TIMESTAMPTZ, FALSE, NULL::BIGINT, NULL::UUID;
            RETURN;
        END IF;
        SELECT path INTO v_near FROM scopes WHERE fold_key = scope_fold(p_path);
        IF FOUND THEN
            RETURN QUERY SELECT 'near_miss'::TEXT, p_path, NULL::TEXT, NULL::TEXT, NULL::TEXT,
                NULL::TEXT, NULL::TIMESTAMPTZ, NULL::TEXT, NULL::BIGINT, NULL::BIGINT, NULL::TEXT,
                v_near, NULL::TIMESTAMPTZ, NULL::UUID, NULL::TIMESTAMPTZ, FALSE, NULL::BIGINT, NULL::UUID;
            RETURN;
        END IF;
        IF position('/' IN p_path) > 0 THEN
            v_parent := regexp_replace(p_path, '/[^/]*$', '');
            IF NOT EXISTS (SELECT 1 FROM scopes WHERE path = v_parent) THEN
                RETURN QUERY SELECT 'parent_missing'::TEXT, p_path, NULL::TEXT, NULL::TEXT, NULL::TEXT,
                    NULL::TEXT, NULL::TIMESTAMPTZ, NULL::TEXT, NULL::BIGINT, NULL::BIGINT, NULL::TEXT,
                    v_parent, NULL::TIMESTAMPTZ, NULL::UUID, NULL::TIMESTAMPTZ, FALSE, NULL::BIGINT, NULL::UUID;
                RETURN;
            END IF;
        END IF;
        v_from := NULL;
    ELSE
        SELECT * INTO sc FROM scopes WHERE path = p_path FOR UPDATE;
        IF NOT FOUND THEN
            RETURN QUERY SELECT 'unknown_scope'::TEXT, p_path, NULL::TEXT, NULL::TEXT, NULL::TEXT,
                NULL::TEXT, NULL::TIMESTAMPTZ, NULL::TEXT, NULL::BIGINT, NULL::BIGINT, NULL::TEXT,
                NULL::TEXT, NULL::TIMESTAMPTZ, NULL::UUID, NULL::TIMESTAMPTZ, FALSE, NULL::BIGINT, NULL::UUID;
            RETURN;
        END IF;
        v_from := sc.mode;
        SELECT * INTO l FROM scope_events WHERE position = sc.position;
        IF scope_mode_rank(p_mode) < scope_mode_rank(sc.mode) THEN
            v_what := format('relax scope %s from %s to %s', p_path, sc.mode, p_mode);
            IF p_ticket IS NULL OR btrim(p_ticket) = '' THEN
                RETURN QUERY SELECT 'ticket_required'::TEXT, sc.path, sc.mode, sc.reason, sc.updated_by,
                    sc.ticket, sc.updated_at, sc.created_by, sc.position, NULL::BIGINT, NULL::TEXT,
                    v_what, NULL::TIMESTAMPTZ, NULL::UUID, NULL::TIMESTAMPTZ, FALSE, NULL::BIGINT, NULL::UUID;
                RETURN;
            END IF;
            IF v_authority <> 'supervisor' THEN
                RAISE EXCEPTION '% relaxes safety and needs supervisor authority; % acts as operator (login %)',
                    v_what, p_actor, session_user
                    USING ERRCODE = '42501',
                          HINT = 'a supervisor relaxes (login with tradepulse_supervisor)';
            END IF;
            IF sc.mode = 'HALTED' AND p_mode <> 'CANCEL_ONLY' THEN
                RETURN QUERY SELECT 'step_too_large'::TEXT, sc.path, sc.mode, sc.reason, sc.updated_by,
                    sc.ticket, sc.updated_at, sc.created_by, sc.position, NULL::BIGINT, NULL::TEXT,
                    NULL::TEXT, NULL::TIMESTAMPTZ, NULL::UUID, NULL::TIMESTAMPTZ, FALSE, NULL::BIGINT, NULL::UUID;
                RETURN;
            END IF;
            IF (p_expected IS NULL AND p_require_expected)
               OR (p_expected IS NOT NULL AND p_expected <> sc.position) THEN
                RETURN QUERY SELECT CASE WHEN p_expected IS NULL THEN 'precondition_required'
                                         ELSE 'precondition_failed' END,
                    sc.path, sc.mode, sc.reason, sc.updated_by, sc.ticket, sc.updated_at,
                    sc.created_by, sc.position, l.position, l.actor, scope_event_what(l), l.at,
                    NULL::UUID, NULL::TIMESTAMPTZ, FALSE, NULL::BIGINT, NULL::UUID;
                RETURN;
            END IF;
            IF p_approving IS NULL THEN
                SELECT * INTO g FROM tradepulse_approval_gate(p_request_id, 'scope.relax', 'scope',
                    p_path, v_what, jsonb_build_object('path', p_path, 'mode', p_mode),
                    p_reason, p_ticket, p_actor, sc.position, p_break_glass);
                IF g.o_gate IN ('pending', 'closed') THEN
                    RETURN QUERY SELECT CASE WHEN g.o_gate = 'pending' THEN 'pending' ELSE 'request_closed' END,
                        sc.path, sc.mode, sc.reason, sc.updated_by, sc.ticket, sc.updated_at,
                        sc.created_by, sc.position, NULL::BIGINT, NULL::TEXT, g.o_status,
                        NULL::TIMESTAMPTZ, g.o_id, g.o_expires_at, FALSE, NULL::BIGINT, NULL::UUID;
                    RETURN;
                END IF;
                v_break_glass := g.o_gate = 'break_glass';
            END IF;
        END IF;
    END IF;

    SELECT request_id INTO v_prev FROM scope_events WHERE position = st.position;
    UPDATE scope_store_state
       SET version = st.version + 1, position = failover_next_position(st.position)
     WHERE id = 1
    RETURNING * INTO st;
    IF p_action = 'create' THEN
        INSERT INTO scopes (path, parent, tree, fold_key, mode, reason, updated_by, ticket,
                            updated_at, created_by, created_at, position, version)
        VALUES (p_path, v_parent, split_part(p_path, '/', 1), scope_fold(p_path), 'NORMAL',
                p_reason, p_actor, p_ticket, now(), p_actor, now(), st.position, st.version)
        RETURNING * INTO sc;
    ELSE
        UPDATE scopes
           SET mode = p_mode, reason = p_reason, updated_by = p_actor, ticket = p_ticket,
               updated_at = now(), position = st.position, version = st.version
         WHERE path = p_path
        RETURNING * INTO sc;
    END IF;
    INSERT INTO scope_events (position, version, request_id, path, action, from_mode, to_mode,
                              reason, actor, ticket, at, login, authority, approval_id, break_glass)
    VALUES (st.position, st.version, p_request_id, p_path, p_action, v_from, sc.mode, p_reason,
            p_actor, p_ticket, sc.updated_at, session_user, v_authority, p_approving, v_break_glass)
    RETURNING * INTO e;
    PERFORM tradepulse_approval_applied('scope', p_path, st.position, p_actor, scope_event_what(e),
                                        p_approving);
    -- The payload carries the delta of this change, so that a reader at the previous
    -- version applies it without a read (one NOTIFY per change, not one SELECT per
    -- process). Paths are at most 8 × 64 characters: it always fits.
    PERFORM pg_notify('scope_changed', json_build_object(
        'position', st.position, 'version', st.version,
        'since_event', v_prev, 'head_event', p_request_id,
        'path', sc.path, 'mode', sc.mode)::TEXT);
    RETURN QUERY SELECT 'applied'::TEXT, sc.path, sc.mode, sc.reason, sc.updated_by, sc.ticket,
        sc.updated_at, sc.created_by, sc.position, NULL::BIGINT, NULL::TEXT, NULL::TEXT,
        NULL::TIMESTAMPTZ, p_approving, NULL::TIMESTAMPTZ, v_break_glass, st.version, v_prev;
END
$$;

-- A second supervisor's approval of a pending scope relaxation (called by
-- tradepulse_approve): the store's row is locked first, then the request is claimed
-- (not self-approved, not expired) and applied with the position it was made
-- against as the precondition; a scope that moved closes it as stale.
CREATE OR REPLACE FUNCTION scope_approve(p_id UUID, p_actor TEXT)
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
    PERFORM 1 FROM scope_store_state WHERE id = 1 FOR UPDATE;
    SELECT * INTO c FROM tradepulse_approval_claim(p_id, p_actor);
    r := c.o_request;
    IF c.o_verdict <> 'ok' THEN
        RETURN QUERY SELECT * FROM tradepulse_approval_unclaimed(c.o_verdict, r);
        RETURN;
    END IF;
    SELECT * INTO a FROM scope_apply(r.id, 'set_mode', r.params->>'path', r.params->>'mode',
        r.reason, r.requested_by, r.ticket, 'supervisor', r.expected_position, FALSE, FALSE, r.id);
    RETURN QUERY SELECT * FROM tradepulse_approval_close(p_id, a.o_status, p_actor, a.o_position,
        a.o_other_position, a.o_other_actor, a.o_other_what, a.o_other_at);
END
$$;

-- Only the functions write; they run as their owner with a search_path fixed to the
-- schema they were created in. Viewers read.
DO $grants$
BEGIN
    EXECUTE format('ALTER FUNCTION scope_apply(UUID, TEXT, TEXT, TEXT, TEXT, TEXT, TEXT, TEXT, BIGINT, BOOLEAN, BOOLEAN, UUID) SECURITY DEFINER SET search_path = %I, pg_temp', current_schema());
    EXECUTE format('ALTER FUNCTION scope_approve(UUID, TEXT) SECURITY DEFINER SET search_path = %I, pg_temp', current_schema());
END
$grants$;
REVOKE ALL ON scope_store_state, scopes, scope_events FROM PUBLIC;
GRANT SELECT ON scope_store_state, scopes, scope_events TO tradepulse_viewer;
REVOKE ALL ON FUNCTION scope_apply(UUID, TEXT, TEXT, TEXT, TEXT, TEXT, TEXT, TEXT, BIGINT, BOOLEAN, BOOLEAN, UUID) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION scope_apply(UUID, TEXT, TEXT, TEXT, TEXT, TEXT, TEXT, TEXT, BIGINT, BOOLEAN, BOOLEAN, UUID)
    TO tradepulse_operator, tradepulse_service;
-- Reached only through tradepulse_approve, which decides the approver's authority.
REVOKE ALL ON FUNCTION scope_approve(UUID, TEXT) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION scope_effective(TEXT) TO tradepulse_viewer;
