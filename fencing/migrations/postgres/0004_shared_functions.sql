-- The audit trail's append-only rule and the WAL timeline are failover-core's, shared
-- by every control: one copy of each. fencing_timeline() stays as a name the lease
-- functions call, defined by failover_timeline().
SELECT tradepulse_make_append_only('fencing_lease_events');
DROP FUNCTION IF EXISTS fencing_lease_events_append_only();
CREATE OR REPLACE FUNCTION fencing_timeline() RETURNS BIGINT
LANGUAGE sql VOLATILE AS $$
    SELECT failover_timeline()
$$;
