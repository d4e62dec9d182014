-- Leases: one row per resource, kept after release and expiry so that the next
-- token is higher than every token issued before.
--
-- Token scheme: token = (timeline << 40) | counter, as one BIGINT.
--   timeline: the server's WAL timeline when the token was issued. Every promotion
--             of a replica starts a higher timeline, so a token issued after a
--             failover is above every token the old primary issued, including the
--             ones an asynchronous replica never received.
--   counter:  counts grants per resource within the timeline (40 bits).
-- New token = greatest(last token + 1, (timeline << 40) + 1): monotonic on one server
-- whatever the timeline, and jumping above the old timeline after a promotion.
CREATE TABLE IF NOT EXISTS fencing_leases (
    resource    TEXT        PRIMARY KEY,
    holder      TEXT,                       -- NULL once released
    token       BIGINT      NOT NULL CHECK (token >= 0),
    ttl         INTERVAL    NOT NULL,
    acquired_at TIMESTAMPTZ NOT NULL,
    renewed_at  TIMESTAMPTZ NOT NULL,
    expires_at  TIMESTAMPTZ NOT NULL        -- judged by this server's clock
);

-- Append-only evidence of who held which token (runbook: preserve lease logs).
CREATE TABLE IF NOT EXISTS fencing_lease_events (
    id       BIGSERIAL   PRIMARY KEY,
    resource TEXT        NOT NULL,
    token    BIGINT      NOT NULL,
    holder   TEXT        NOT NULL,
    event    TEXT        NOT NULL CHECK (event IN ('acquire', 'release')),
    ttl      INTERVAL    NOT NULL,
    at       TIMESTAMPTZ NOT NULL
);
CREATE INDEX IF NOT EXISTS fencing_lease_events_resource ON fencing_lease_events (resource, token);

CREATE OR REPLACE FUNCTION fencing_lease_events_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'fencing_lease_events is append-only: % is not allowed', TG_OP
        USING ERRCODE = 'P0001';
END
$$;

DROP TRIGGER IF EXISTS fencing_lease_events_no_update ON fencing_lease_events;
CREATE TRIGGER fencing_lease_events_no_update
    BEFORE UPDATE OR DELETE ON fencing_lease_events
    FOR EACH ROW EXECUTE FUNCTION fencing_lease_events_append_only();

DROP TRIGGER IF EXISTS fencing_lease_events_no_truncate ON fencing_lease_events;
CREATE TRIGGER fencing_lease_events_no_truncate
    BEFORE TRUNCATE ON fencing_lease_events
    FOR EACH STATEMENT EXECUTE FUNCTION fencing_lease_events_append_only();

-- The server's current WAL timeline (pg_control_checkpoint() can lag until the
-- first checkpoint after a promotion; the WAL file name cannot).
CREATE OR REPLACE FUNCTION fencing_timeline() RETURNS BIGINT
LANGUAGE sql VOLATILE AS $$
    SELECT ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::bigint
$$;

-- Grants the resource to p_holder unless another holder's lease is unexpired.
-- The row lock comes first, so on a standby this fails with 25006 (retryable).
CREATE OR REPLACE FUNCTION fencing_acquire(p_resource TEXT, p_holder TEXT, p_ttl_us BIGINT)
RETURNS TABLE (o_granted BOOLEAN, o_holder TEXT, o_token BIGINT, o_expires_in_us BIGINT)
LANGUAGE plpgsql AS $$
DECLARE
    l          fencing_leases%ROWTYPE;
    v_ttl      INTERVAL := p_ttl_us * INTERVAL '1 microsecond';
    v_now      TIMESTAMPTZ;
    v_timeline BIGINT;
    v_token    BIGINT;
BEGIN
    SELECT * INTO l FROM fencing_leases WHERE resource = p_resource FOR UPDATE;
    IF NOT FOUND THEN
        INSERT INTO fencing_leases (resource, holder, token, ttl, acquired_at, renewed_at, expires_at)
        VALUES (p_resource, NULL, 0, v_ttl, '-infinity', '-infinity', '-infinity')
        ON CONFLICT (resource) DO NOTHING;
        SELECT * INTO l FROM fencing_leases WHERE resource = p_resource FOR UPDATE;
    END IF;
    v_now := clock_timestamp();
    IF l.holder IS NOT NULL AND l.holder <> p_holder AND l.expires_at > v_now THEN
        RETURN QUERY SELECT FALSE, l.holder, l.token,
            (extract(epoch FROM l.expires_at - v_now) * 1000000)::BIGINT;
        RETURN;
    END IF;
    v_timeline := fencing_timeline();
    IF v_timeline >= (1::BIGINT << 23) THEN
        RAISE EXCEPTION 'fencing: WAL timeline % does not fit the 23 timeline bits of a token', v_timeline
            USING ERRCODE = '22003';
    END IF;
    v_token := greatest(l.token + 1, (v_timeline << 40) + 1);
    IF (v_token >> 40) > greatest(v_timeline, l.token >> 40) THEN
        RAISE EXCEPTION 'fencing: the token counter of resource % is exhausted on timeline %', p_resource, v_timeline
            USING ERRCODE = '22003';
    END IF;
    -- A token must never be acknowledged before it is durable on this server.
    IF current_setting('synchronous_commit') = 'off' THEN
        PERFORM set_config('synchronous_commit', 'local', true);
    END IF;
    UPDATE fencing_leases
       SET holder = p_holder, token = v_token, ttl = v_ttl,
           acquired_at = v_now, renewed_at = v_now, expires_at = v_now + v_ttl
     WHERE resource = p_resource;
    INSERT INTO fencing_lease_events (resource, token, holder, event, ttl, at)
    VALUES (p_resource, v_token, p_holder, 'acquire', v_ttl, v_now);
    RETURN QUERY SELECT TRUE, p_holder, v_token, p_ttl_us;
END
$$;

-- Compare-and-set on holder and token; extends an unexpired lease by its ttl from
-- now. When refused, returns the row's holder and token so the caller can say why.
CREATE OR REPLACE FUNCTION fencing_renew(p_resource TEXT, p_holder TEXT, p_token BIGINT, p_ttl_us BIGINT)
RETURNS TABLE (o_renewed BOOLEAN, o_holder TEXT, o_token BIGINT, o_expired BOOLEAN)
LANGUAGE plpgsql AS $$
DECLARE
    l     fencing_leases%ROWTYPE;
    v_now TIMESTAMPTZ;
BEGIN
    SELECT * INTO l FROM fencing_leases WHERE resource = p_resource FOR UPDATE;
    IF NOT FOUND THEN
        RETURN QUERY SELECT FALSE, NULL::TEXT, 0::BIGINT, FALSE;
        RETURN;
    END IF;
    v_now := clock_timestamp();
    IF l.token = p_token AND l.holder = p_holder AND l.expires_at > v_now THEN
        UPDATE fencing_leases
           SET renewed_at = v_now, expires_at = v_now + p_ttl_us * INTERVAL '1 microsecond'
         WHERE resource = p_resource;
        RETURN QUERY SELECT TRUE, l.holder, l.token, FALSE;
        RETURN;
    END IF;
    RETURN QUERY SELECT FALSE, l.holder, l.token, l.expires_at <= v_now;
END
$$;

-- Frees the resource if this lease is still the current one; otherwise does nothing.
CREATE OR REPLACE FUNCTION fencing_release(p_resource TEXT, p_holder TEXT, p_token BIGINT)
RETURNS BOOLEAN
LANGUAGE plpgsql AS $$
DECLARE
    v_now TIMESTAMPTZ := clock_timestamp();
    v_ttl INTERVAL;
BEGIN
    UPDATE fencing_leases
       SET holder = NULL, expires_at = least(expires_at, v_now)
     WHERE resource = p_resource AND holder = p_holder AND token = p_token
    RETURNING ttl INTO v_ttl;
    IF NOT FOUND THEN
        RETURN FALSE;
    END IF;
    INSERT INTO fencing_lease_events (resource, token, holder, event, ttl, at)
    VALUES (p_resource, p_token, p_holder, 'release', v_ttl, v_now);
    RETURN TRUE;
END
$$;
