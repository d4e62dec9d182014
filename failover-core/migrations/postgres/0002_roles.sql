-- Roles of the operators' authority model, shared by every control of a cluster.
--
--   tradepulse_viewer      reads the controls' state and audit trails
--   tradepulse_operator    may tighten: engage, halt, CancelAll (member of viewer)
--   tradepulse_supervisor  may also relax: disengage, lift, de-escalate (member of operator)
--   tradepulse_service     a service login that authenticated its own callers: it may name
--                          them as the actor, and acts with the lesser of its own
--                          authority and the caller's (member of viewer)
--
-- The roles are NOLOGIN: grant them to logins (GRANT tradepulse_operator TO alice).
-- Creating them needs CREATEROLE (or a superuser); a DBA can instead run this file once
-- per cluster (`safetyctl migrate --print-roles` prints it), after which a login without
-- CREATEROLE can migrate. Roles belong to the cluster, so several databases (and several
-- nodes migrating at once) share them: an existing role is left as it is.
DO $roles$
DECLARE
    r RECORD;
BEGIN
    FOR r IN SELECT * FROM (VALUES
        ('tradepulse_viewer', NULL),
        ('tradepulse_operator', 'tradepulse_viewer'),
        ('tradepulse_supervisor', 'tradepulse_operator'),
        ('tradepulse_service', 'tradepulse_viewer')) AS t(name, member_of)
    LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r.name) THEN
            BEGIN
                EXECUTE format('CREATE ROLE %I NOLOGIN', r.name);
                IF r.member_of IS NOT NULL THEN
                    EXECUTE format('GRANT %I TO %I', r.member_of, r.name);
                END IF;
            EXCEPTION
                WHEN duplicate_object OR unique_violation THEN
                    NULL; -- another database or node created it at the same moment
                WHEN insufficient_privilege THEN
                    RAISE EXCEPTION 'role % is missing and login % may not create roles', r.name, session_user
                        USING ERRCODE = '42501',
                              HINT = 'grant CREATEROLE to the migrating login, or have a DBA run the SQL that `safetyctl migrate --print-roles` prints, then migrate again';
            END;
        END IF;
    END LOOP;
END
$roles$;

-- The authority a command is applied with, decided inside the transaction that writes
-- it: the lesser of the authority the caller claims (`operator` or `supervisor`, as its
-- front end authenticated it) and what the database login holds. A login that is not a
-- service acts in its own name only: the actor must be the login. Superusers hold every
-- role. Refusals are SQLSTATE 42501 (insufficient_privilege) and change nothing.
CREATE OR REPLACE FUNCTION tradepulse_authority(p_claimed TEXT, p_actor TEXT) RETURNS TEXT
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_login TEXT;
BEGIN
    IF pg_has_role(session_user, 'tradepulse_supervisor', 'MEMBER') THEN
        v_login := 'supervisor';
    ELSIF pg_has_role(session_user, 'tradepulse_operator', 'MEMBER') THEN
        v_login := 'operator';
    ELSE
        RAISE EXCEPTION 'login % may not change safety controls', session_user
            USING ERRCODE = '42501',
                  HINT = 'grant tradepulse_operator (tighten) or tradepulse_supervisor (relax) to the login';
    END IF;
    IF p_actor IS DISTINCT FROM session_user::TEXT
       AND NOT pg_has_role(session_user, 'tradepulse_service', 'MEMBER') THEN
        RAISE EXCEPTION 'login % acts in its own name only: actor "%" refused', session_user, p_actor
            USING ERRCODE = '42501',
                  HINT = 'omit the actor (it is the login), or grant tradepulse_service to a login that authenticates the callers it acts for';
    END IF;
    IF p_claimed = 'supervisor' AND v_login = 'supervisor' THEN
        RETURN 'supervisor';
    END IF;
    RETURN 'operator';
END
$$;

-- Bounds the lock waits of the calling transaction when the caller set no bound of its
-- own: a lock held by another session (a transaction left open in psql, an
-- application idle in transaction) must not make an emergency command wait out the
-- caller's whole budget. Every control's apply function calls it before it locks.
CREATE OR REPLACE FUNCTION tradepulse_bound_lock_wait() RETURNS VOID
LANGUAGE plpgsql AS $$
BEGIN
    IF current_setting('lock_timeout') IN ('0', '0ms') THEN
        PERFORM set_config('lock_timeout', '500ms', true);
    END IF;
END
$$;
