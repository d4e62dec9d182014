-- The audit trail's append-only rule is failover-core's, shared by every control.
SELECT tradepulse_make_append_only('kill_switch_events');
DROP FUNCTION IF EXISTS kill_switch_events_append_only();
