-- Every symbol_mode_events row is an entry of the tamper-evident audit log (failover-core's
-- audit_log migration): the rows already there are appended in position order, then
-- each new row by an AFTER INSERT trigger, in commit order across every control.
SELECT tradepulse_audit_attach('symbol_mode_events', 'symbol_mode', 'position');
