-- Expiries are entries of the audit log.
--
-- A pending request past its expiry can never be approved. Until now that was only
-- recorded when someone tried to approve or reject it; tradepulse_approval_expire_due
-- closes every such request as 'expired' at once and writes its 'expired' approval
-- event, which the audit log appends like every other event. safetyctl calls it
-- before `approvals list` and `approvals approve`; a service calls it on a schedule
-- (failover_core::approvals::run_expiry_sweep).
--
-- Requests another transaction holds locked (an approval in flight) are skipped, so
-- the sweep never waits on one: that approval sees the expiry itself when it claims
-- the request, and the next sweep closes whatever is left.

CREATE OR REPLACE FUNCTION tradepulse_approval_expire_due(p_actor TEXT)
RETURNS SETOF approval_requests
LANGUAGE plpgsql AS $$
DECLARE
    r approval_requests%ROWTYPE;
BEGIN
    IF p_actor IS NULL OR btrim(p_actor) = '' THEN
        RAISE EXCEPTION 'the expiry sweep needs an actor'
            USING ERRCODE = '22023', HINT = 'pass who runs the sweep, e.g. the service''s name';
    END IF;
    FOR r IN
        SELECT * FROM approval_requests
         WHERE status = 'pending' AND expires_at <= now()
         ORDER BY expires_at, id
         FOR UPDATE SKIP LOCKED
    LOOP
        UPDATE approval_requests
           SET status = 'expired', decided_by = p_actor, decided_login = session_user,
               decided_at = now(),
               decision = format('expired at %s, before it was approved', r.expires_at)
         WHERE id = r.id RETURNING * INTO r;
        PERFORM tradepulse_approval_event(r.id, 'expired', r.action, r.what, p_actor, NULL, NULL,
            format('expired at %s; closed by the expiry sweep run by %s', r.expires_at, p_actor));
        RETURN NEXT r;
    END LOOP;
END
$$;

ALTER FUNCTION tradepulse_approval_expire_due(TEXT) SECURITY DEFINER;
DO $grants$
BEGIN
    EXECUTE format('ALTER FUNCTION tradepulse_approval_expire_due(TEXT) SET search_path = %I, pg_temp',
                   current_schema());
END
$grants$;
REVOKE ALL ON FUNCTION tradepulse_approval_expire_due(TEXT) FROM PUBLIC;
-- Closing what already expired relaxes nothing: whoever may read the requests may
-- record that they expired.
GRANT EXECUTE ON FUNCTION tradepulse_approval_expire_due(TEXT)
    TO tradepulse_viewer, tradepulse_operator, tradepulse_service;
