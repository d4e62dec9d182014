-- The audit trail's append-only rule is failover-core's, shared by every control.
SELECT tradepulse_make_append_only('symbol_mode_events');
DROP FUNCTION IF EXISTS symbol_mode_events_append_only();
