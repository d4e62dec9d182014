-- Four eyes before a safety control is relaxed. Tightening never waits; relaxing
-- an action the policy marks `required` waits for a second supervisor.
--
--   * approval_policy: one row per action that can require approval
--     (kill-switch.disengage, global-mode.relax, mode.relax, withdrawals.lift,
--     throttle.relax, and scope.relax, reserved for scoped controls so that they
--     need no migration to be covered), whether it is required and how long a
--     request stays open (`expiry`, 15 minutes unless set).
--   * approval_requests: a relaxation a supervisor asked for while its action
--     was required: the exact command (control, target, parameters, reason,
--     ticket, actor, login) and the position of the state it was made against.
--     It changed nothing. A different principal — another database login AND
--     another actor (behind a service login, which authenticated the callers it
--     acts for, another actor) — holding supervisor authority approves it; the control's
--     apply function then runs inside the approving transaction under the
--     control's row lock, with the request's position as its precondition.
--   * approval_events: the append-only trail of requests, approvals,
--     rejections, expiries, supersessions, break-glass applications,
--     acknowledgements and policy changes (UPDATE, DELETE, TRUNCATE refused).
--
-- Each control's apply function calls tradepulse_approval_gate when a supervisor
-- relaxes, and tradepulse_approval_applied after every change it applies (a
-- change of a target closes the requests pending against it as superseded).
-- Approving dispatches to the control's `<control>_approve(id, actor)`, which
-- locks the control's row first, then claims the request
-- (tradepulse_approval_claim), applies, and closes it
-- (tradepulse_approval_close).

CREATE TABLE IF NOT EXISTS approval_policy (
    action        TEXT        PRIMARY KEY CHECK (action IN (
                      'kill-switch.disengage', 'global-mode.relax', 'mode.relax',
                      'withdrawals.lift', 'throttle.relax', 'scope.relax')),
    required      BOOLEAN     NOT NULL DEFAULT FALSE,
    expiry        INTERVAL    NOT NULL DEFAULT interval '15 minutes'
                  CHECK (expiry BETWEEN interval '1 second' AND interval '24 hours'),
    updated_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_by    TEXT        NOT NULL DEFAULT '',
    updated_login TEXT
);

INSERT INTO approval_policy (action)
VALUES ('kill-switch.disengage'), ('global-mode.relax'), ('mode.relax'),
       ('withdrawals.lift'), ('throttle.relax'), ('scope.relax')
ON CONFLICT (action) DO NOTHING;

-- The policy's own lock and position: changes serialise on this row, and a
-- pending waiver is conditional on its position.
CREATE TABLE IF NOT EXISTS approval_policy_state (
    id       SMALLINT PRIMARY KEY CHECK (id = 1),
    position BIGINT   NOT NULL CHECK (position >= 0)
);
INSERT INTO approval_policy_state (id, position) VALUES (1, 0) ON CONFLICT (id) DO NOTHING;

CREATE TABLE IF NOT EXISTS approval_requests (
    id                UUID        PRIMARY KEY,
    action            TEXT        NOT NULL,
    control           TEXT        NOT NULL CHECK (control IN ('kill_switch', 'symbol_mode', 'approval_policy')),
    target            TEXT        NOT NULL,
    what              TEXT        NOT NULL,
    params            JSONB       NOT NULL,
    reason            TEXT        NOT NULL,
    ticket            TEXT,
    expected_position BIGINT      NOT NULL,
    requested_by      TEXT        NOT NULL,
    requested_login   TEXT        NOT NULL,
    requested_at      TIMESTAMPTZ NOT NULL,
    expires_at        TIMESTAMPTZ NOT NULL,
    status            TEXT        NOT NULL CHECK (status IN (
                          'pending', 'applied', 'rejected', 'stale', 'expired',
                          'superseded', 'break_glass', 'acknowledged')),
    decided_by        TEXT,
    decided_login     TEXT,
    decided_at        TIMESTAMPTZ,
    decision          TEXT,
    applied_position  BIGINT,
    -- The change that made it stale or superseded it: what an approval names.
    moved_position    BIGINT,
    moved_actor       TEXT,
    moved_what        TEXT,
    moved_at          TIMESTAMPTZ,
    -- The transaction that claimed it for approval: the control's apply function
    -- accepts an approval only from the transaction that claimed it.
    claimed_txid      BIGINT
);
CREATE INDEX IF NOT EXISTS approval_requests_pending
    ON approval_requests (control, target) WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS approval_requests_break_glass
    ON approval_requests (requested_at) WHERE status = 'break_glass';

CREATE TABLE IF NOT EXISTS approval_events (
    position   BIGINT      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    request_id UUID        NOT NULL,
    event      TEXT        NOT NULL CHECK (event IN (
                   'requested', 'approved', 'rejected', 'stale', 'expired', 'superseded',
                   'break_glass', 'acknowledged', 'required', 'waived')),
    action     TEXT        NOT NULL,
    what       TEXT        NOT NULL,
    actor      TEXT        NOT NULL CHECK (btrim(actor) <> ''),
    login      TEXT        NOT NULL,
    reason     TEXT,
    ticket     TEXT,
    detail     TEXT,
    at         TIMESTAMPTZ NOT NULL
);
CREATE INDEX IF NOT EXISTS approval_events_request ON approval_events (request_id);

SELECT tradepulse_make_append_only('approval_events');
-- Every request, approval, rejection, expiry, supersession, break-glass and
-- acknowledgement is also a leaf of the tamper-evident audit log.
SELECT tradepulse_audit_attach('approval_events', 'approvals', 'position');

CREATE OR REPLACE FUNCTION tradepulse_approval_event(
    p_request_id UUID, p_event TEXT, p_action TEXT, p_what TEXT, p_actor TEXT,
    p_reason TEXT, p_ticket TEXT, p_detail TEXT
) RETURNS VOID
LANGUAGE sql AS $$
    INSERT INTO approval_events (request_id, event, action, what, actor, login, reason, ticket, detail, at)
    VALUES (p_request_id, p_event, p_action, p_what, p_actor, session_user, p_reason, p_ticket, p_detail,
            clock_timestamp())
$$;

-- Called by a control's apply function, under the control's row lock, when a
-- supervisor relaxes `p_action` on `p_target` (authority, ticket and precondition
-- already checked). Answers:
--   'apply'       the action is not required: apply now;
--   'pending'     required: a pending request now holds the exact command (o_id,
--                 o_expires_at); nothing is applied;
--   'break_glass' required, and the supervisor broke the glass: apply now; the
--                 request is recorded for a second supervisor to acknowledge;
--   'closed'      this request id is a request closed earlier (o_status says how):
--                 nothing is applied; a new command needs a new request id.
-- p_required overrides the policy (the policy's own waiver uses it).
CREATE OR REPLACE FUNCTION tradepulse_approval_gate(
    p_request_id  UUID,
    p_action      TEXT,
    p_control     TEXT,
    p_target      TEXT,
    p_what        TEXT,
    p_params      JSONB,
    p_reason      TEXT,
    p_ticket      TEXT,
    p_actor       TEXT,
    p_expected    BIGINT,
    p_break_glass BOOLEAN,
    p_required    BOOLEAN DEFAULT NULL
) RETURNS TABLE (o_gate TEXT, o_id UUID, o_expires_at TIMESTAMPTZ, o_status TEXT)
LANGUAGE plpgsql AS $$
DECLARE
    r        approval_requests%ROWTYPE;
    v_policy approval_policy%ROWTYPE;
    v_expiry INTERVAL := interval '15 minutes';
    v_required BOOLEAN := p_required;
BEGIN
    SELECT * INTO r FROM approval_requests WHERE id = p_request_id;
    IF FOUND THEN
        IF r.status = 'pending' AND r.action = p_action AND r.target = p_target
           AND r.requested_by = p_actor THEN
            RETURN QUERY SELECT 'pending'::TEXT, r.id, r.expires_at, r.status;
        ELSE
            RETURN QUERY SELECT 'closed'::TEXT, r.id, r.expires_at, r.status;
        END IF;
        RETURN;
    END IF;
    SELECT * INTO v_policy FROM approval_policy WHERE action = p_action;
    IF FOUND THEN
        v_expiry := v_policy.expiry;
        v_required := coalesce(v_required, v_policy.required);
    END IF;
    IF NOT coalesce(v_required, FALSE) THEN
        RETURN QUERY SELECT 'apply'::TEXT, NULL::UUID, NULL::TIMESTAMPTZ, NULL::TEXT;
        RETURN;
    END IF;
    INSERT INTO approval_requests (id, action, control, target, what, params, reason, ticket,
                                   expected_position, requested_by, requested_login, requested_at,
                                   expires_at, status)
    VALUES (p_request_id, p_action, p_control, p_target, p_what, p_params, p_reason, p_ticket,
            p_expected, p_actor, session_user, now(), now() + v_expiry,
            CASE WHEN p_break_glass THEN 'break_glass' ELSE 'pending' END)
    RETURNING * INTO r;
    IF p_break_glass THEN
        PERFORM tradepulse_approval_event(r.id, 'break_glass', p_action, p_what, p_actor, p_reason,
            p_ticket, format('applied at once without a second person: position %s', p_expected));
        RETURN QUERY SELECT 'break_glass'::TEXT, r.id, r.expires_at, r.status;
    ELSE
        PERFORM tradepulse_approval_event(r.id, 'requested', p_action, p_what, p_actor, p_reason,
            p_ticket, format('against position %s, expires %s', p_expected, r.expires_at));
        RETURN QUERY SELECT 'pending'::TEXT, r.id, r.expires_at, r.status;
    END IF;
END
$$;

-- Called by a control's apply function after every change it applied to
-- `p_target` (under the control's row lock): the requests pending against that
-- target were made against a state that is gone; they close as superseded, naming
-- the change. The approval being applied (p_approving) is not among them.
CREATE OR REPLACE FUNCTION tradepulse_approval_applied(
    p_control TEXT, p_target TEXT, p_position BIGINT, p_actor TEXT, p_what TEXT,
    p_approving UUID DEFAULT NULL
) RETURNS VOID
LANGUAGE plpgsql AS $$
DECLARE
    r approval_requests%ROWTYPE;
    v_by TEXT := format('%s by %s (position %s)', p_what, p_actor, p_position);
BEGIN
    FOR r IN UPDATE approval_requests
                SET status = 'superseded', decided_by = p_actor, decided_login = session_user,
                    decided_at = now(), decision = 'superseded by ' || v_by,
                    moved_position = p_position, moved_actor = p_actor, moved_what = p_what,
                    moved_at = now()
              WHERE control = p_control AND target = p_target AND status = 'pending'
                AND id IS DISTINCT FROM p_approving
             RETURNING *
    LOOP
        PERFORM tradepulse_approval_event(r.id, 'superseded', r.action, r.what, p_actor, NULL, NULL,
            'superseded by ' || v_by);
    END LOOP;
END
$$;

-- True when `p_actor` on this session is the principal who made request r: the
-- same actor, or the same login acting in its own name. A service login
-- (tradepulse_service) authenticated the callers it acts for, so behind it the
-- actor alone is the principal; any other login is the principal itself.
CREATE OR REPLACE FUNCTION tradepulse_same_principal(r approval_requests, p_actor TEXT) RETURNS BOOLEAN
LANGUAGE sql STABLE AS $$
    SELECT r.requested_by = p_actor
        OR (r.requested_login = session_user::TEXT
            AND NOT pg_has_role(session_user, 'tradepulse_service', 'MEMBER'))
$$;

-- Claims a request for approval by `p_actor` (the session's login is the other
-- half of the principal). The control's `<control>_approve` calls it holding the
-- control's row lock. Verdicts: 'ok' (claimed in this transaction), 'not_found',
-- 'not_pending' (o_request.status says what became of it), 'self_approval',
-- 'expired' (closed as expired now).
CREATE OR REPLACE FUNCTION tradepulse_approval_claim(p_id UUID, p_actor TEXT)
RETURNS TABLE (o_verdict TEXT, o_request approval_requests)
LANGUAGE plpgsql AS $$
DECLARE
    r approval_requests%ROWTYPE;
BEGIN
    SELECT * INTO r FROM approval_requests WHERE id = p_id FOR UPDATE;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 'not_found'::TEXT, r;
        RETURN;
    END IF;
    IF r.status <> 'pending' THEN
        RETURN QUERY SELECT 'not_pending'::TEXT, r;
        RETURN;
    END IF;
    IF tradepulse_same_principal(r, p_actor) THEN
        RETURN QUERY SELECT 'self_approval'::TEXT, r;
        RETURN;
    END IF;
    IF r.expires_at <= now() THEN
        UPDATE approval_requests
           SET status = 'expired', decided_by = p_actor, decided_login = session_user,
               decided_at = now(), decision = format('expired at %s, before it was approved', r.expires_at)
         WHERE id = p_id RETURNING * INTO r;
        PERFORM tradepulse_approval_event(r.id, 'expired', r.action, r.what, p_actor, NULL, NULL,
            format('expired at %s; observed when %s tried to approve it', r.expires_at, p_actor));
        RETURN QUERY SELECT 'expired'::TEXT, r;
        RETURN;
    END IF;
    UPDATE approval_requests SET claimed_txid = txid_current() WHERE id = p_id RETURNING * INTO r;
    RETURN QUERY SELECT 'ok'::TEXT, r;
END
$$;

-- What a control's apply function checks when it is called with p_approving: the
-- request was claimed by this very transaction (tradepulse_approval_claim), for
-- this control. Anything else is refused: p_approving is no way around authority.
CREATE OR REPLACE FUNCTION tradepulse_approval_verify(p_approving UUID, p_control TEXT)
RETURNS approval_requests
LANGUAGE plpgsql AS $$
DECLARE
    r approval_requests%ROWTYPE;
BEGIN
    SELECT * INTO r FROM approval_requests WHERE id = p_approving;
    IF NOT FOUND OR r.status <> 'pending' OR r.control <> p_control
       OR r.claimed_txid IS DISTINCT FROM txid_current() THEN
        RAISE EXCEPTION 'request % was not claimed for approval by this transaction', p_approving
            USING ERRCODE = '42501',
                  HINT = 'approve a pending request with tradepulse_approve (safetyctl approvals approve ID)';
    END IF;
    RETURN r;
END
$$;

-- Closes a claimed request with what the control's apply function answered:
-- 'applied' (approved and applied at p_position), 'precondition_failed' (the state
-- moved since the request: closed as stale, naming the change in between).
CREATE OR REPLACE FUNCTION tradepulse_approval_close(
    p_id UUID, p_apply_status TEXT, p_actor TEXT, p_position BIGINT,
    p_other_position BIGINT, p_other_actor TEXT, p_other_what TEXT, p_other_at TIMESTAMPTZ
) RETURNS TABLE (
    o_status TEXT, o_id UUID, o_action TEXT, o_what TEXT, o_requested_by TEXT,
    o_position BIGINT, o_other_position BIGINT, o_other_actor TEXT, o_other_what TEXT,
    o_other_at TIMESTAMPTZ, o_expires_at TIMESTAMPTZ
)
LANGUAGE plpgsql AS $$
DECLARE
    r approval_requests%ROWTYPE;
    v_change TEXT;
BEGIN
    IF p_apply_status = 'applied' THEN
        UPDATE approval_requests
           SET status = 'applied', decided_by = p_actor, decided_login = session_user,
               decided_at = now(), decision = format('approved and applied at position %s', p_position),
               applied_position = p_position
         WHERE id = p_id RETURNING * INTO r;
        PERFORM tradepulse_approval_event(r.id, 'approved', r.action, r.what, p_actor, NULL, NULL,
            format('requested by %s (login %s); applied at position %s', r.requested_by,
                   r.requested_login, p_position));
        RETURN QUERY SELECT 'applied'::TEXT, r.id, r.action, r.what, r.requested_by, p_position,
            NULL::BIGINT, NULL::TEXT, NULL::TEXT, NULL::TIMESTAMPTZ, r.expires_at;
    ELSIF p_apply_status = 'precondition_failed' THEN
        v_change := format('%s by %s at %s (position %s)', p_other_what, p_other_actor, p_other_at,
                           p_other_position);
        UPDATE approval_requests
           SET status = 'stale', decided_by = p_actor, decided_login = session_user,
               decided_at = now(),
               decision = format('the state moved since the request (position %s): %s',
                                 expected_position, v_change),
               moved_position = p_other_position, moved_actor = p_other_actor,
               moved_what = p_other_what, moved_at = p_other_at
         WHERE id = p_id RETURNING * INTO r;
        PERFORM tradepulse_approval_event(r.id, 'stale', r.action, r.what, p_actor, NULL, NULL,
            format('not applied: the state moved since position %s: %s', r.expected_position, v_change));
        RETURN QUERY SELECT 'stale_request'::TEXT, r.id, r.action, r.what, r.requested_by,
            r.expected_position, p_other_position, p_other_actor, p_other_what, p_other_at, r.expires_at;
    ELSE
        RAISE EXCEPTION 'approving request %: the control answered % instead of applying it', p_id, p_apply_status
            USING ERRCODE = 'P0001';
    END IF;
END
$$;

-- The answer row of a request that was not claimed. A request closed because its
-- target changed (superseded by a tightening, or stale) answers 'stale_request'
-- naming that change; other closed requests 'not_pending:<status>' with the
-- decision.
CREATE OR REPLACE FUNCTION tradepulse_approval_unclaimed(p_verdict TEXT, r approval_requests)
RETURNS TABLE (
    o_status TEXT, o_id UUID, o_action TEXT, o_what TEXT, o_requested_by TEXT,
    o_position BIGINT, o_other_position BIGINT, o_other_actor TEXT, o_other_what TEXT,
    o_other_at TIMESTAMPTZ, o_expires_at TIMESTAMPTZ
)
LANGUAGE sql AS $$
    SELECT CASE WHEN p_verdict = 'not_pending' AND r.status IN ('superseded', 'stale') THEN 'stale_request'
                WHEN p_verdict = 'not_pending' THEN 'not_pending:' || r.status
                ELSE p_verdict END,
        r.id, r.action, r.what, r.requested_by, r.expected_position,
        r.moved_position,
        CASE WHEN r.status IN ('superseded', 'stale') THEN r.moved_actor ELSE r.decided_by END,
        CASE WHEN r.status IN ('superseded', 'stale') THEN r.moved_what ELSE r.decision END,
        CASE WHEN r.status IN ('superseded', 'stale') THEN r.moved_at ELSE r.decided_at END,
        r.expires_at
$$;

-- Approves request p_id as p_actor: the login's authority (supervisor needed) is
-- decided here, then the control's own `<control>_approve` locks its row, claims
-- the request and applies it, all in this transaction. Statuses: 'applied',
-- 'stale_request', 'expired', 'self_approval', 'not_found', 'not_pending:<status>'.
CREATE OR REPLACE FUNCTION tradepulse_approve(p_id UUID, p_actor TEXT, p_authority TEXT DEFAULT 'supervisor')
RETURNS TABLE (
    o_status TEXT, o_id UUID, o_action TEXT, o_what TEXT, o_requested_by TEXT,
    o_position BIGINT, o_other_position BIGINT, o_other_actor TEXT, o_other_what TEXT,
    o_other_at TIMESTAMPTZ, o_expires_at TIMESTAMPTZ
)
LANGUAGE plpgsql AS $$
DECLARE
    v_control TEXT;
BEGIN
    IF tradepulse_authority(p_authority, p_actor) <> 'supervisor' THEN
        RAISE EXCEPTION 'approving request % relaxes safety and needs supervisor authority; % acts as operator (login %)',
            p_id, p_actor, session_user
            USING ERRCODE = '42501',
                  HINT = 'a second supervisor approves (login with tradepulse_supervisor)';
    END IF;
    SELECT control INTO v_control FROM approval_requests WHERE id = p_id;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 'not_found'::TEXT, p_id, NULL::TEXT, NULL::TEXT, NULL::TEXT, NULL::BIGINT,
            NULL::BIGINT, NULL::TEXT, NULL::TEXT, NULL::TIMESTAMPTZ, NULL::TIMESTAMPTZ;
        RETURN;
    END IF;
    PERFORM tradepulse_bound_lock_wait();
    RETURN QUERY EXECUTE format('SELECT * FROM %I($1, $2)', v_control || '_approve') USING p_id, p_actor;
END
$$;

-- Rejects a pending request: closing a relaxation tightens, so an operator may
-- (the requester too, withdrawing it). An expired request closes as expired.
CREATE OR REPLACE FUNCTION tradepulse_approval_reject(
    p_id UUID, p_actor TEXT, p_reason TEXT, p_authority TEXT DEFAULT 'supervisor'
) RETURNS TABLE (o_status TEXT, o_id UUID, o_action TEXT, o_what TEXT, o_decided_by TEXT, o_decision TEXT)
LANGUAGE plpgsql AS $$
DECLARE
    r approval_requests%ROWTYPE;
BEGIN
    PERFORM tradepulse_authority(p_authority, p_actor);
    IF p_reason IS NULL OR btrim(p_reason) = '' THEN
        RAISE EXCEPTION 'rejecting request % needs a reason', p_id USING ERRCODE = '22023';
    END IF;
    PERFORM tradepulse_bound_lock_wait();
    SELECT * INTO r FROM approval_requests WHERE id = p_id FOR UPDATE;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 'not_found'::TEXT, p_id, NULL::TEXT, NULL::TEXT, NULL::TEXT, NULL::TEXT;
        RETURN;
    END IF;
    IF r.status <> 'pending' THEN
        RETURN QUERY SELECT 'not_pending:' || r.status, r.id, r.action, r.what, r.decided_by, r.decision;
        RETURN;
    END IF;
    IF r.expires_at <= now() THEN
        UPDATE approval_requests
           SET status = 'expired', decided_by = p_actor, decided_login = session_user,
               decided_at = now(), decision = format('expired at %s', r.expires_at)
         WHERE id = p_id RETURNING * INTO r;
        PERFORM tradepulse_approval_event(r.id, 'expired', r.action, r.what, p_actor, p_reason, NULL,
            format('expired at %s; observed when %s tried to reject it', r.expires_at, p_actor));
        RETURN QUERY SELECT 'expired'::TEXT, r.id, r.action, r.what, r.decided_by, r.decision;
        RETURN;
    END IF;
    UPDATE approval_requests
       SET status = 'rejected', decided_by = p_actor, decided_login = session_user,
           decided_at = now(), decision = 'rejected: ' || p_reason
     WHERE id = p_id RETURNING * INTO r;
    PERFORM tradepulse_approval_event(r.id, 'rejected', r.action, r.what, p_actor, p_reason, NULL, NULL);
    RETURN QUERY SELECT 'rejected'::TEXT, r.id, r.action, r.what, r.decided_by, r.decision;
END
$$;

-- A second supervisor acknowledges a break-glass relaxation (the one who broke the
-- glass may not). Statuses: 'acknowledged', 'not_found', 'not_break_glass:<status>',
-- 'self_acknowledgement'.
CREATE OR REPLACE FUNCTION tradepulse_approval_acknowledge(
    p_id UUID, p_actor TEXT, p_authority TEXT DEFAULT 'supervisor'
) RETURNS TABLE (o_status TEXT, o_id UUID, o_action TEXT, o_what TEXT, o_decided_by TEXT, o_decision TEXT)
LANGUAGE plpgsql AS $$
DECLARE
    r approval_requests%ROWTYPE;
BEGIN
    IF tradepulse_authority(p_authority, p_actor) <> 'supervisor' THEN
        RAISE EXCEPTION 'acknowledging break-glass request % needs supervisor authority; % acts as operator (login %)',
            p_id, p_actor, session_user
            USING ERRCODE = '42501',
                  HINT = 'a second supervisor acknowledges (login with tradepulse_supervisor)';
    END IF;
    PERFORM tradepulse_bound_lock_wait();
    SELECT * INTO r FROM approval_requests WHERE id = p_id FOR UPDATE;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 'not_found'::TEXT, p_id, NULL::TEXT, NULL::TEXT, NULL::TEXT, NULL::TEXT;
        RETURN;
    END IF;
    IF r.status <> 'break_glass' THEN
        RETURN QUERY SELECT 'not_break_glass:' || r.status, r.id, r.action, r.what, r.decided_by, r.decision;
        RETURN;
    END IF;
    IF tradepulse_same_principal(r, p_actor) THEN
        RETURN QUERY SELECT 'self_acknowledgement'::TEXT, r.id, r.action, r.what, r.requested_by, NULL::TEXT;
        RETURN;
    END IF;
    UPDATE approval_requests
       SET status = 'acknowledged', decided_by = p_actor, decided_login = session_user,
           decided_at = now(), decision = 'break-glass acknowledged'
     WHERE id = p_id RETURNING * INTO r;
    PERFORM tradepulse_approval_event(r.id, 'acknowledged', r.action, r.what, p_actor, NULL, NULL,
        format('break-glass by %s (login %s) acknowledged', r.requested_by, r.requested_login));
    RETURN QUERY SELECT 'acknowledged'::TEXT, r.id, r.action, r.what, r.decided_by, r.decision;
END
$$;

-- Changes the policy. Requiring approval (p_required) tightens: an operator may, it
-- applies at once and closes pending waivers as superseded; p_expiry (when given)
-- sets how long the actions' requests stay open. Waiving relaxes: a supervisor with
-- a ticket, and while any action is required the waiver itself waits for a second
-- supervisor (a pending request, action 'approvals.waive'), or breaks the glass.
-- Statuses: 'applied', 'pending' (o_id, o_expires_at), 'replayed', 'closed'.
CREATE OR REPLACE FUNCTION tradepulse_approval_policy_set(
    p_request_id  UUID,
    p_actions     TEXT[],
    p_required    BOOLEAN,
    p_expiry      INTERVAL,
    p_reason      TEXT,
    p_ticket      TEXT,
    p_actor       TEXT,
    p_authority   TEXT    DEFAULT 'supervisor',
    p_break_glass BOOLEAN DEFAULT FALSE,
    p_approving   UUID    DEFAULT NULL
) RETURNS TABLE (o_status TEXT, o_id UUID, o_expires_at TIMESTAMPTZ, o_position BIGINT, o_break_glass BOOLEAN)
LANGUAGE plpgsql AS $$
DECLARE
    v_authority TEXT;
    v_state     approval_policy_state%ROWTYPE;
    v_unknown   TEXT;
    v_what      TEXT;
    g           RECORD;
    v_break     BOOLEAN := FALSE;
BEGIN
    SELECT a INTO v_unknown FROM unnest(p_actions) a
     WHERE a NOT IN (SELECT action FROM approval_policy) LIMIT 1;
    IF v_unknown IS NOT NULL OR coalesce(cardinality(p_actions), 0) = 0 THEN
        RAISE EXCEPTION 'unknown approval action %: one of kill-switch.disengage, global-mode.relax, mode.relax, withdrawals.lift, throttle.relax, scope.relax',
            coalesce(v_unknown, '(none given)') USING ERRCODE = '22023';
    END IF;
    IF p_reason IS NULL OR btrim(p_reason) = '' THEN
        RAISE EXCEPTION 'a reason is required to change the approval policy' USING ERRCODE = '22023';
    END IF;
    v_what := format('%s %s', CASE WHEN p_required THEN 'require' ELSE 'waive' END,
                     array_to_string(p_actions, ' '))
              || CASE WHEN p_expiry IS NOT NULL AND p_required THEN format(' (expiry %s)', p_expiry) ELSE '' END;
    IF p_approving IS NOT NULL THEN
        PERFORM tradepulse_approval_verify(p_approving, 'approval_policy');
        v_authority := 'supervisor';
    ELSE
        v_authority := tradepulse_authority(p_authority, p_actor);
    END IF;
    PERFORM tradepulse_bound_lock_wait();
    SELECT * INTO v_state FROM approval_policy_state WHERE id = 1 FOR UPDATE;

    IF EXISTS (SELECT 1 FROM approval_events WHERE request_id = p_request_id AND event IN ('required', 'waived')) THEN
        RETURN QUERY SELECT 'replayed'::TEXT, p_request_id, NULL::TIMESTAMPTZ, v_state.position, FALSE;
        RETURN;
    END IF;

    IF NOT p_required THEN
        IF v_authority <> 'supervisor' THEN
            RAISE EXCEPTION 'waiving approvals (%) relaxes safety and needs supervisor authority; % acts as operator (login %)',
                array_to_string(p_actions, ' '), p_actor, session_user
                USING ERRCODE = '42501',
                      HINT = 'a supervisor waives (login with tradepulse_supervisor)';
        END IF;
        IF p_ticket IS NULL OR btrim(p_ticket) = '' THEN
            RAISE EXCEPTION 'a ticket id is required to waive approvals: relaxing a safety control must be audited with reason + ticket id'
                USING ERRCODE = '22023';
        END IF;
        IF p_approving IS NULL THEN
            SELECT * INTO g FROM tradepulse_approval_gate(p_request_id, 'approvals.waive', 'approval_policy',
                'policy', v_what, jsonb_build_object('actions', to_jsonb(p_actions)), p_reason, p_ticket,
                p_actor, v_state.position, p_break_glass,
                EXISTS (SELECT 1 FROM approval_policy WHERE required));
            IF g.o_gate IN ('pending', 'closed') THEN
                RETURN QUERY SELECT CASE WHEN g.o_gate = 'pending' THEN 'pending' ELSE 'closed:' || g.o_status END,
                    g.o_id, g.o_expires_at, v_state.position, FALSE;
                RETURN;
            END IF;
            v_break := g.o_gate = 'break_glass';
        ELSIF v_state.position <> (SELECT expected_position FROM approval_requests WHERE id = p_approving) THEN
            RETURN QUERY SELECT 'precondition_failed'::TEXT, p_approving, NULL::TIMESTAMPTZ, v_state.position, FALSE;
            RETURN;
        END IF;
    END IF;

    UPDATE approval_policy_state SET position = position + 1 WHERE id = 1 RETURNING * INTO v_state;
    UPDATE approval_policy
       SET required = p_required,
           expiry = CASE WHEN p_required THEN coalesce(p_expiry, expiry) ELSE expiry END,
           updated_at = now(), updated_by = p_actor, updated_login = session_user
     WHERE action = ANY (p_actions);
    PERFORM tradepulse_approval_event(p_request_id, CASE WHEN p_required THEN 'required' ELSE 'waived' END,
        CASE WHEN p_required THEN 'approvals.require' ELSE 'approvals.waive' END, v_what, p_actor,
        p_reason, p_ticket,
        format('policy position %s%s%s', v_state.position,
               CASE WHEN p_approving IS NOT NULL THEN ', approved request ' || p_approving ELSE '' END,
               CASE WHEN v_break THEN ', BREAK-GLASS' ELSE '' END));
    PERFORM tradepulse_approval_applied('approval_policy', 'policy', v_state.position, p_actor, v_what, p_approving);
    RETURN QUERY SELECT 'applied'::TEXT, p_request_id, NULL::TIMESTAMPTZ, v_state.position, v_break;
END
$$;

-- The policy's approver: a pending waiver applied by a second supervisor.
CREATE OR REPLACE FUNCTION approval_policy_approve(p_id UUID, p_actor TEXT)
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
    e approval_events%ROWTYPE;
BEGIN
    PERFORM 1 FROM approval_policy_state WHERE id = 1 FOR UPDATE;
    SELECT * INTO c FROM tradepulse_approval_claim(p_id, p_actor);
    r := c.o_request;
    IF c.o_verdict <> 'ok' THEN
        RETURN QUERY SELECT * FROM tradepulse_approval_unclaimed(c.o_verdict, r);
        RETURN;
    END IF;
    SELECT * INTO a FROM tradepulse_approval_policy_set(p_id,
        ARRAY(SELECT jsonb_array_elements_text(r.params->'actions')), FALSE, NULL, r.reason, r.ticket,
        r.requested_by, 'supervisor', FALSE, p_id);
    IF a.o_status = 'precondition_failed' THEN
        SELECT * INTO e FROM approval_events
         WHERE event IN ('required', 'waived') ORDER BY position DESC LIMIT 1;
        RETURN QUERY SELECT * FROM tradepulse_approval_close(p_id, a.o_status, p_actor, a.o_position,
            a.o_position, e.actor, e.what, e.at);
    ELSE
        RETURN QUERY SELECT * FROM tradepulse_approval_close(p_id, a.o_status, p_actor, a.o_position,
            NULL, NULL, NULL, NULL);
    END IF;
END
$$;

-- Only the functions write; they run as their owner with a search_path fixed to the
-- schema they were created in. Viewers read.
DO $grants$
DECLARE
    f TEXT;
BEGIN
    FOREACH f IN ARRAY ARRAY[
        'tradepulse_approve(UUID, TEXT, TEXT)',
        'tradepulse_approval_reject(UUID, TEXT, TEXT, TEXT)',
        'tradepulse_approval_acknowledge(UUID, TEXT, TEXT)',
        'tradepulse_approval_policy_set(UUID, TEXT[], BOOLEAN, INTERVAL, TEXT, TEXT, TEXT, TEXT, BOOLEAN, UUID)',
        'approval_policy_approve(UUID, TEXT)']
    LOOP
        EXECUTE format('ALTER FUNCTION %s SECURITY DEFINER SET search_path = %I, pg_temp', f, current_schema());
        EXECUTE format('REVOKE ALL ON FUNCTION %s FROM PUBLIC', f);
    END LOOP;
    FOREACH f IN ARRAY ARRAY[
        'tradepulse_approval_event(UUID, TEXT, TEXT, TEXT, TEXT, TEXT, TEXT, TEXT)',
        'tradepulse_approval_gate(UUID, TEXT, TEXT, TEXT, TEXT, JSONB, TEXT, TEXT, TEXT, BIGINT, BOOLEAN, BOOLEAN)',
        'tradepulse_approval_applied(TEXT, TEXT, BIGINT, TEXT, TEXT, UUID)',
        'tradepulse_approval_claim(UUID, TEXT)',
        'tradepulse_same_principal(approval_requests, TEXT)',
        'tradepulse_approval_verify(UUID, TEXT)',
        'tradepulse_approval_close(UUID, TEXT, TEXT, BIGINT, BIGINT, TEXT, TEXT, TIMESTAMPTZ)']
    LOOP
        EXECUTE format('REVOKE ALL ON FUNCTION %s FROM PUBLIC', f);
    END LOOP;
END
$grants$;
REVOKE ALL ON approval_policy, approval_policy_state, approval_requests, approval_events FROM PUBLIC;
GRANT SELECT ON approval_policy, approval_requests, approval_events TO tradepulse_viewer;
GRANT EXECUTE ON FUNCTION tradepulse_approve(UUID, TEXT, TEXT),
                          tradepulse_approval_reject(UUID, TEXT, TEXT, TEXT),
                          tradepulse_approval_acknowledge(UUID, TEXT, TEXT),
                          tradepulse_approval_policy_set(UUID, TEXT[], BOOLEAN, INTERVAL, TEXT, TEXT, TEXT, TEXT, BOOLEAN, UUID)
    TO tradepulse_operator, tradepulse_service;
