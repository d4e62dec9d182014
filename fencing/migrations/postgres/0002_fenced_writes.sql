-- The resource side of fencing: the newest token each resource has accepted.
CREATE TABLE IF NOT EXISTS fencing_highest (
    resource   TEXT        PRIMARY KEY,
    highest    BIGINT      NOT NULL CHECK (highest > 0),
    updated_at TIMESTAMPTZ NOT NULL
);

-- Call inside the transaction that makes the write, before the write:
--   SELECT fencing_check('btc-usd', 42);
-- Refuses (SQLSTATE TF001, message 'FENCING_TOKEN: token 41 is older than 42 for
-- resource btc-usd') a token older than the resource's highest; otherwise records it
-- as the highest. Either way the resource's row stays locked until the transaction
-- ends, so fenced writes to one resource commit in token order, and a rolled-back
-- transaction leaves the highest as it was.
CREATE OR REPLACE FUNCTION fencing_check(p_resource TEXT, p_token BIGINT) RETURNS VOID
LANGUAGE plpgsql AS $$
DECLARE
    v_highest BIGINT;
BEGIN
    IF p_token IS NULL OR p_token <= 0 THEN
        RAISE EXCEPTION 'fencing_check: token % was never issued by a lease store', p_token
            USING ERRCODE = '22023';
    END IF;
    INSERT INTO fencing_highest AS f (resource, highest, updated_at)
    VALUES (p_resource, p_token, now())
    ON CONFLICT (resource) DO UPDATE
        SET highest = EXCLUDED.highest, updated_at = EXCLUDED.updated_at
        WHERE f.highest <= EXCLUDED.highest
    RETURNING f.highest INTO v_highest;
    IF FOUND THEN
        RETURN;
    END IF;
    -- Refused; ON CONFLICT locked the row all the same.
    SELECT highest INTO v_highest FROM fencing_highest WHERE resource = p_resource;
    RAISE EXCEPTION 'FENCING_TOKEN: token % is older than % for resource %', p_token, v_highest, p_resource
        USING ERRCODE = 'TF001',
              DETAIL = format('resource %s has accepted token %s; token %s belongs to a stale leader', p_resource, v_highest, p_token),
              HINT = 'stop writing, step down and campaign for the lease again';
END
$$;
