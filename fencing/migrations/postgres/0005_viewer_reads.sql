-- Viewers (and so operators and supervisors) read the leases and their trail, as they
-- read every other control's state and trail: an operator's audit export, `lease`
-- commands and dashboards need them. Writing stays with the fencing functions.
GRANT SELECT ON fencing_leases, fencing_lease_events, fencing_highest TO tradepulse_viewer;
