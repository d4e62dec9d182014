-- One append-only rule for every control's audit trail: UPDATE, DELETE and TRUNCATE
-- of an events table are refused, naming the table and the operation. A control
-- makes its table append-only with one call:
--     SELECT tradepulse_make_append_only('kill_switch_events');
-- (which replaces whatever triggers of the same names the table had).

CREATE OR REPLACE FUNCTION tradepulse_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only: % is not allowed', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'P0001';
END
$$;

CREATE OR REPLACE FUNCTION tradepulse_make_append_only(p_table REGCLASS) RETURNS VOID
LANGUAGE plpgsql AS $$
DECLARE
    v_name TEXT := (SELECT c.relname FROM pg_class c WHERE c.oid = p_table);
BEGIN
    EXECUTE format('DROP TRIGGER IF EXISTS %I ON %s', v_name || '_no_update', p_table);
    EXECUTE format('CREATE TRIGGER %I BEFORE UPDATE OR DELETE ON %s '
                   'FOR EACH ROW EXECUTE FUNCTION tradepulse_append_only()',
                   v_name || '_no_update', p_table);
    EXECUTE format('DROP TRIGGER IF EXISTS %I ON %s', v_name || '_no_truncate', p_table);
    EXECUTE format('CREATE TRIGGER %I BEFORE TRUNCATE ON %s '
                   'FOR EACH STATEMENT EXECUTE FUNCTION tradepulse_append_only()',
                   v_name || '_no_truncate', p_table);
END
$$;
