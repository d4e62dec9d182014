-- Scoped controls (the killswitch crate's `scopes` and `scope_events`) join the
-- family: their events are entries of the audit log (control `scope`), and their
-- relaxations can wait for a second supervisor (approval requests of control
-- `scope`, action `scope.relax`).

CREATE OR REPLACE FUNCTION tradepulse_audit_entry(p_control TEXT, r JSONB) RETURNS TEXT
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_position TEXT;
    v_action   TEXT;
    v_actor    TEXT;
    v_reason   TEXT := 'null';
    v_request  TEXT := 'null';
    v_ticket   TEXT := 'null';
    v_details  TEXT;
BEGIN
    IF p_control = 'kill_switch' THEN
        v_position := r->>'position';
        v_action := r->'action';
        v_actor := r->'actor';
        v_reason := coalesce((r->'reason')::TEXT, 'null');
        v_request := coalesce((r->'request_id')::TEXT, 'null');
        v_ticket := coalesce((r->'ticket')::TEXT, 'null');
        v_details := '"approval_id":' || coalesce((r->'approval_id')::TEXT, 'null')
            || ',"authority":' || coalesce((r->'authority')::TEXT, 'null')
            || ',"break_glass":' || coalesce((r->'break_glass')::TEXT, 'false')
            || ',"engaged":' || coalesce((r->'engaged')::TEXT, 'null')
            || ',"login":' || coalesce((r->'login')::TEXT, 'null')
            || ',"version":' || coalesce((r->'version')::TEXT, 'null');
    ELSIF p_control = 'symbol_mode' THEN
        v_position := r->>'position';
        v_action := r->'command';
        v_actor := r->'actor';
        v_reason := coalesce((r->'reason')::TEXT, 'null');
        v_request := coalesce((r->'request_id')::TEXT, 'null');
        v_ticket := coalesce((r->'ticket')::TEXT, 'null');
        v_details := '"approval_id":' || coalesce((r->'approval_id')::TEXT, 'null')
            || ',"authority":' || coalesce((r->'authority')::TEXT, 'null')
            || ',"break_glass":' || coalesce((r->'break_glass')::TEXT, 'false')
            || ',"from_burst":' || coalesce((r->'from_burst')::TEXT, 'null')
            || ',"from_mode":' || coalesce((r->'from_mode')::TEXT, 'null')
            || ',"from_rate":' || coalesce((r->'from_rate')::TEXT, 'null')
            || ',"login":' || coalesce((r->'login')::TEXT, 'null')
            || ',"relaxes":' || coalesce((r->'relaxes')::TEXT, 'null')
            || ',"symbol":' || coalesce((r->'symbol')::TEXT, 'null')
            || ',"to_burst":' || coalesce((r->'to_burst')::TEXT, 'null')
            || ',"to_mode":' || coalesce((r->'to_mode')::TEXT, 'null')
            || ',"to_rate":' || coalesce((r->'to_rate')::TEXT, 'null')
            || ',"version":' || coalesce((r->'version')::TEXT, 'null')
            || ',"withdrawals_halted":' || coalesce((r->'withdrawals_halted')::TEXT, 'null');
    ELSIF p_control = 'approvals' THEN
        v_position := r->>'position';
        v_action := r->'event';
        v_actor := r->'actor';
        v_reason := coalesce((r->'reason')::TEXT, 'null');
        v_request := coalesce((r->'request_id')::TEXT, 'null');
        v_ticket := coalesce((r->'ticket')::TEXT, 'null');
        v_details := '"action":' || coalesce((r->'action')::TEXT, 'null')
            || ',"detail":' || coalesce((r->'detail')::TEXT, 'null')
            || ',"login":' || coalesce((r->'login')::TEXT, 'null')
            || ',"what":' || coalesce((r->'what')::TEXT, 'null');
    ELSIF p_control = 'scope' THEN
        v_position := r->>'position';
        v_action := r->'action';
        v_actor := r->'actor';
        v_reason := coalesce((r->'reason')::TEXT, 'null');
        v_request := coalesce((r->'request_id')::TEXT, 'null');
        v_ticket := coalesce((r->'ticket')::TEXT, 'null');
        v_details := '"approval_id":' || coalesce((r->'approval_id')::TEXT, 'null')
            || ',"authority":' || coalesce((r->'authority')::TEXT, 'null')
            || ',"break_glass":' || coalesce((r->'break_glass')::TEXT, 'false')
            || ',"from_mode":' || coalesce((r->'from_mode')::TEXT, 'null')
            || ',"login":' || coalesce((r->'login')::TEXT, 'null')
            || ',"path":' || coalesce((r->'path')::TEXT, 'null')
            || ',"to_mode":' || coalesce((r->'to_mode')::TEXT, 'null')
            || ',"version":' || coalesce((r->'version')::TEXT, 'null');
    ELSIF p_control = 'lease' THEN
        v_position := r->>'id';
        v_action := r->'event';
        v_actor := r->'holder';
        v_details := '"resource":' || coalesce((r->'resource')::TEXT, 'null')
            || ',"token":' || coalesce((r->'token')::TEXT, 'null')
            || ',"ttl_us":' || coalesce(
                (extract(epoch FROM (r->>'ttl')::INTERVAL) * 1000000)::BIGINT::TEXT, 'null');
    ELSE
        RAISE EXCEPTION 'audit log: unknown control %', p_control
            USING ERRCODE = '22023',
                  HINT = 'the canonical encoding knows kill_switch, symbol_mode, scope, approvals and lease';
    END IF;
    RETURN 'tp-audit-v1 {"action":' || coalesce(v_action, 'null')
        || ',"actor":' || coalesce(v_actor, 'null')
        || ',"at":' || coalesce(to_json(tradepulse_audit_time((r->>'at')::TIMESTAMPTZ))::TEXT, 'null')
        || ',"control":' || to_json(p_control)::TEXT
        || ',"details":{' || v_details || '}'
        || ',"position":' || v_position
        || ',"reason":' || v_reason
        || ',"request_id":' || v_request
        || ',"ticket":' || v_ticket
        || '}';
END
$$;

-- Approval requests may belong to scoped controls.
ALTER TABLE approval_requests DROP CONSTRAINT IF EXISTS approval_requests_control_check;
ALTER TABLE approval_requests ADD CONSTRAINT approval_requests_control_check
    CHECK (control IN ('kill_switch', 'symbol_mode', 'approval_policy', 'scope'));
