-- Positions: the identity of every change of every control (see failover_core::position).
-- position = (timeline << 40) | counter, as one BIGINT.
--   timeline: the server's WAL timeline when the change was committed. Every promotion
--             of a replica starts a higher timeline, so a change made after a failover
--             is above every change the old primary made, including the ones an
--             asynchronous replica never received.
--   counter:  counts changes within the timeline (40 bits).

-- The server's current WAL timeline (pg_control_checkpoint() can lag until the first
-- checkpoint after a promotion; the WAL file name cannot).
CREATE OR REPLACE FUNCTION failover_timeline() RETURNS BIGINT
LANGUAGE sql VOLATILE AS $$
    SELECT ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::bigint
$$;

-- The position of the change after p_prev: monotonic on one server whatever the
-- timeline, and jumping above the old timeline after a promotion.
CREATE OR REPLACE FUNCTION failover_next_position(p_prev BIGINT) RETURNS BIGINT
LANGUAGE sql VOLATILE AS $$
    SELECT greatest(p_prev + 1, (failover_timeline() << 40) + 1)
$$;
