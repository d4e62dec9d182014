-- The receipt: which running processes applied which position of a control.
--
-- Every hot-path handle reports, off the order path, the newest position it has
-- applied; its process flushes the changed reports in one statement every few tens of
-- milliseconds and all of them every second (the heartbeat that says the process is
-- alive). `safetyctl … --wait` and the admin routes read the table to say how many
-- live processes confirmed a change and which did not.
--
-- Live status, not audit: rows are updated in place, and rows of processes that have
-- not reported for a day are removed by the reports of the others.
CREATE TABLE IF NOT EXISTS handle_receipts (
    process_id       UUID        NOT NULL,
    host             TEXT        NOT NULL,
    pid              INT         NOT NULL,
    process_name     TEXT        NOT NULL,
    -- kill_switch, symbol_mode, scope …
    component        TEXT        NOT NULL,
    -- what the handle watches; '' for a global control
    target           TEXT        NOT NULL DEFAULT '',
    applied_position BIGINT      NOT NULL CHECK (applied_position >= 0),
    -- when the process applied that position (the process's clock)
    applied_at       TIMESTAMPTZ NOT NULL,
    -- when the database last heard from the process (the database's clock)
    reported_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- the database login that reported
    login            TEXT        NOT NULL DEFAULT session_user,
    PRIMARY KEY (process_id, component, target)
);
CREATE INDEX IF NOT EXISTS handle_receipts_by_target ON handle_receipts (component, target);
CREATE INDEX IF NOT EXISTS handle_receipts_by_age ON handle_receipts (reported_at);

-- Upserts one process's batch of reports in one statement:
--   p_batch = [{"component": "kill_switch", "target": "", "position": 1099511627777,
--               "applied_at": "2026-12-06T18:00:00.000001Z"}, …]
-- A position never moves backwards (a late or replayed batch leaves the newer one);
-- every row of the batch is marked seen now. Returns how many rows it wrote.
CREATE OR REPLACE FUNCTION tradepulse_report_receipts(
    p_process_id UUID, p_host TEXT, p_pid INT, p_process_name TEXT, p_batch JSONB
) RETURNS INT
LANGUAGE sql AS $$
    WITH input AS (
        SELECT DISTINCT ON (r.component, coalesce(r.target, ''))
               r.component, coalesce(r.target, '') AS target, r.position, r.applied_at
          FROM jsonb_to_recordset(p_batch)
               AS r(component TEXT, target TEXT, position BIGINT, applied_at TIMESTAMPTZ)
         WHERE r.component IS NOT NULL AND r.position IS NOT NULL AND r.position >= 0
         ORDER BY r.component, coalesce(r.target, ''), r.position DESC
    ), pruned AS (
        DELETE FROM handle_receipts WHERE reported_at < now() - interval '1 day'
    ), written AS (
        INSERT INTO handle_receipts AS h
               (process_id, host, pid, process_name, component, target,
                applied_position, applied_at, reported_at, login)
        SELECT p_process_id, p_host, p_pid, p_process_name, i.component, i.target,
               i.position, coalesce(i.applied_at, now()), now(), session_user
          FROM input i
        ON CONFLICT (process_id, component, target) DO UPDATE
           SET applied_position = greatest(h.applied_position, EXCLUDED.applied_position),
               applied_at = CASE WHEN EXCLUDED.applied_position > h.applied_position
                                 THEN EXCLUDED.applied_at ELSE h.applied_at END,
               host = EXCLUDED.host,
               pid = EXCLUDED.pid,
               process_name = EXCLUDED.process_name,
               reported_at = now(),
               login = EXCLUDED.login
        RETURNING 1
    )
    SELECT count(*)::INT FROM written
$$;

-- Only the function writes, as its owner with a search_path fixed to this schema.
-- Every process that runs a handle reads the controls (tradepulse_viewer, which the
-- operator, supervisor and service roles are members of), so that is the role that
-- reports; readers read.
DO $grants$
BEGIN
    EXECUTE format('ALTER FUNCTION tradepulse_report_receipts(UUID, TEXT, INT, TEXT, JSONB) SECURITY DEFINER SET search_path = %I, pg_temp', current_schema());
END
$grants$;
REVOKE ALL ON handle_receipts FROM PUBLIC;
REVOKE ALL ON FUNCTION tradepulse_report_receipts(UUID, TEXT, INT, TEXT, JSONB) FROM PUBLIC;
GRANT SELECT ON handle_receipts TO tradepulse_viewer;
GRANT EXECUTE ON FUNCTION tradepulse_report_receipts(UUID, TEXT, INT, TEXT, JSONB) TO tradepulse_viewer;
