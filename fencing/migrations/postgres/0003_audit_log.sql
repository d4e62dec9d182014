-- Every fencing_lease_events row is an entry of the tamper-evident audit log (failover-core's
-- audit_log migration): the rows already there are appended in id order, then
-- each new row by an AFTER INSERT trigger, in commit order across every control.
SELECT tradepulse_audit_attach('fencing_lease_events', 'lease', 'id');
