-- tenancy_saved and its table, when they exist, are the ones an earlier
-- DROP EXTENSION made: owned by a superuser, the table with no trigger,
-- rule or policy. Anything else is refused (42501) before it is written to
-- or read from as the superuser.
CREATE FUNCTION tenancy._check_saved_catalog() RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    bad text;
BEGIN
    SELECT CASE
             WHEN NOT r.rolsuper THEN format('schema tenancy_saved belongs to %s, not to a superuser', r.rolname)
           END INTO bad
    FROM pg_namespace n JOIN pg_roles r ON r.oid = n.nspowner WHERE n.nspname = 'tenancy_saved';
    IF bad IS NULL THEN
        SELECT CASE
                 WHEN NOT r.rolsuper THEN format('table tenancy_saved.%s belongs to %s, not to a superuser', c.relname, r.rolname)
                 WHEN c.relkind <> 'r' THEN format('tenancy_saved.%s is not a plain table', c.relname)
                 WHEN c.relhastriggers OR c.relhasrules OR c.relrowsecurity
                      OR EXISTS (SELECT 1 FROM pg_trigger t WHERE t.tgrelid = c.oid)
                      OR EXISTS (SELECT 1 FROM pg_rewrite w WHERE w.ev_class = c.oid)
                 THEN format('table tenancy_saved.%s has triggers, rules or row security', c.relname)
               END INTO bad
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace JOIN pg_roles r ON r.oid = c.relowner
        WHERE n.nspname = 'tenancy_saved'
        ORDER BY 1 NULLS LAST LIMIT 1;
    END IF;
    IF bad IS NOT NULL THEN
        RAISE EXCEPTION 'tenancy_saved was not made by tenancy: %', bad
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'Look at what is in schema tenancy_saved, remove it, and run the command again.';
    END IF;
END
$$;

-- Uninstalling never loses a tenant. Tenant schemas, shared tables and
-- tenant roles are not members of the extension, so DROP EXTENSION leaves
-- them; the catalog is, so an event trigger saves it first, outside the
-- extension, and tenancy.adopt_schemas() takes it back after a new
-- CREATE EXTENSION.

CREATE FUNCTION tenancy._save_catalog() RETURNS event_trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    schemas bigint;
    shared bigint;
BEGIN
    -- ddl_command_start does not say what is dropped: look at the statement.
    -- A wider match than needed only saves a snapshot nobody uses; a
    -- worker has no statement text (NULL) and never drops the extension.
    IF coalesce(current_query(), '') !~* '\mdrop\s+(extension|schema)\M[^;]*"?\mtenancy\M"?\s*(,|;|\mcascade\M|\mrestrict\M|$)' THEN
        RETURN;
    END IF;
    SELECT count(*) FILTER (WHERE isolation = 'schema' AND status <> 'dropped'),
           count(*) FILTER (WHERE isolation = 'shared' AND status <> 'dropped')
    INTO schemas, shared FROM tenancy.tenants;
    -- the superuser runs this: a schema or table someone else made (with a
    -- trigger in it) must not receive the catalog
    PERFORM tenancy._check_saved_catalog();
    CREATE SCHEMA IF NOT EXISTS tenancy_saved;
    CREATE TABLE IF NOT EXISTS tenancy_saved.catalog (
        kind     text        NOT NULL,
        data     jsonb       NOT NULL,
        saved_at timestamptz NOT NULL DEFAULT now()
    );
    COMMENT ON SCHEMA tenancy_saved IS
        'tenancy: the catalog saved by DROP EXTENSION tenancy; SELECT * FROM tenancy.adopt_schemas() takes it back';
    -- added to what an earlier drop saved and nobody adopted: never lost
    INSERT INTO tenancy_saved.catalog (kind, data)
    SELECT 'template', to_jsonb(t) FROM tenancy.templates t WHERE NOT t.shipped
    UNION ALL
    SELECT 'tenant', to_jsonb(t) FROM tenancy.tenants t
    UNION ALL
    SELECT 'pool_setting', to_jsonb(p) FROM tenancy.pool_settings p;
    RAISE NOTICE 'tenancy: % tenant schema(s) and % shared tenant(s) stay in place with their data and roles; the catalog is saved in tenancy_saved.catalog',
        schemas, shared
        USING HINT = 'After CREATE EXTENSION tenancy, SELECT * FROM tenancy.adopt_schemas() takes them back. '
                     'Shared tables lose their policies with the extension (CASCADE) and stay closed to tenant roles until then.';
END
$$;

CREATE EVENT TRIGGER tenancy_save_catalog ON ddl_command_start
    WHEN TAG IN ('DROP EXTENSION', 'DROP SCHEMA')
    EXECUTE FUNCTION tenancy._save_catalog();

-- Takes back the catalog saved by DROP EXTENSION: templates, tenants whose
-- schema (or shared schema) is still there, pool sizes; puts back the
-- shared tables' policies; drops the pool's leftover schemas (they hold no
-- tenant). Returns one row per saved tenant with what became of it.
CREATE FUNCTION tenancy.adopt_schemas()
RETURNS TABLE(slug text, isolation text, schema_name name, status tenancy.tenant_status, result text)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r record;
    t tenancy.tenants;
    present name;
    s name;
BEGIN
    IF to_regclass('tenancy_saved.catalog') IS NULL THEN
        RAISE EXCEPTION 'there is no saved catalog to adopt: tenancy_saved.catalog does not exist'
            USING ERRCODE = 'undefined_table',
                  HINT = 'DROP EXTENSION tenancy saves it; nothing was dropped here, or it was adopted already.';
    END IF;
    PERFORM tenancy._check_saved_catalog();
    FOR r IN SELECT c.data FROM tenancy_saved.catalog c WHERE c.kind = 'template' ORDER BY c.saved_at DESC LOOP
        INSERT INTO tenancy.templates SELECT (jsonb_populate_record(NULL::tenancy.templates, r.data)).*
        ON CONFLICT DO NOTHING;
    END LOOP;
    FOR r IN SELECT c.data FROM tenancy_saved.catalog c WHERE c.kind = 'pool_setting' ORDER BY c.saved_at DESC LOOP
        INSERT INTO tenancy.pool_settings SELECT (jsonb_populate_record(NULL::tenancy.pool_settings, r.data)).*
        ON CONFLICT DO NOTHING;
    END LOOP;
    -- the newest save of a tenant wins; an older one is reported as skipped
    FOR r IN SELECT c.data, c.saved_at FROM tenancy_saved.catalog c WHERE c.kind = 'tenant'
             ORDER BY c.saved_at DESC, c.data->>'created_at' LOOP
        t := jsonb_populate_record(NULL::tenancy.tenants, r.data);
        slug := t.slug;
        isolation := t.isolation;
        schema_name := t.schema_name;
        status := t.status;
        present := CASE WHEN t.status = 'dropped' THEN NULL
                        WHEN t.isolation = 'shared' THEN tenancy._access_schema(t)
                        WHEN t.status = 'archived' THEN tenancy._archive_name(t)
                        ELSE t.schema_name END;
        IF EXISTS (SELECT 1 FROM tenancy.tenants x WHERE x.id = t.id OR x.slug = t.slug) THEN
            result := 'skipped: already in the catalog';
        ELSIF NOT EXISTS (SELECT 1 FROM tenancy.templates p WHERE p.name = t.template AND p.version = t.template_version) THEN
            result := format('skipped: template %s version %s is not known', t.template, t.template_version);
        ELSIF t.status <> 'dropped' AND to_regnamespace(quote_ident(present)) IS NULL THEN
            result := format('skipped: schema %s is missing', present);
        ELSE
            INSERT INTO tenancy.tenants SELECT t.*;
            PERFORM tenancy._audit('adopt', t, jsonb_build_object('saved_at', r.saved_at));
            result := CASE WHEN t.status = 'dropped' THEN 'adopted (tombstone)' ELSE 'adopted' END;
        END IF;
        RETURN NEXT;
    END LOOP;
    -- the policies of shared tables went with the extension
    FOR s IN SELECT DISTINCT tenancy._access_schema(x) FROM tenancy.tenants x
             WHERE x.isolation = 'shared' AND x.status <> 'dropped' LOOP
        PERFORM tenancy._enable_rls(tbl) FROM tenancy._shared_tables(s) tbl;
    END LOOP;
    -- (only what the pool made: its name, and the owner role's)
    FOR s IN SELECT n.nspname FROM pg_namespace n
             WHERE n.nspname ~ '^tenancy_pool_[0-9a-f]{16}$'
               AND n.nspowner = (SELECT ow.oid FROM pg_roles ow WHERE ow.rolname = tenancy._db_role('owner'))
               AND NOT EXISTS (SELECT 1 FROM tenancy.pool p WHERE p.schema_name = n.nspname) LOOP
        EXECUTE format('DROP SCHEMA %I CASCADE', s);
    END LOOP;
    -- and their roles (this database's, by their name and comment)
    FOR s IN SELECT pr.rolname FROM pg_roles pr
             WHERE pr.rolname ~ ('^tenancy_pool_' || (SELECT d.oid FROM pg_database d
                                                      WHERE d.datname = current_database()) || '_[0-9a-f]{16}$')
               AND NOT EXISTS (SELECT 1 FROM tenancy.pool p WHERE p.role_name = pr.rolname) LOOP
        PERFORM tenancy._drop_tenant_role(s);
    END LOOP;
    DROP TABLE tenancy_saved.catalog;
    DROP SCHEMA tenancy_saved;
    PERFORM tenancy._wake_worker();
END
$$;
COMMENT ON FUNCTION tenancy.adopt_schemas() IS
    'Takes back the tenants left in place by DROP EXTENSION tenancy (their catalog was saved in tenancy_saved.catalog)';

-- a WARNING: CREATE EXTENSION hides NOTICEs of its script
DO $$
BEGIN
    IF to_regclass('tenancy_saved.catalog') IS NOT NULL THEN
        RAISE WARNING 'tenancy: a catalog saved by an earlier DROP EXTENSION is in tenancy_saved.catalog'
            USING HINT = 'SELECT * FROM tenancy.adopt_schemas() takes its tenants back.';
    END IF;
END
$$;

-- A database restored from another database's dump: pg_dump names owners
-- and grantees by name, so its tenant schemas, shared tables and pool
-- schemas belong to the source database's owner role
-- (tenancy_owner_<source oid>), and the shared tables' grants name the
-- source's shared role. The extension here runs template SQL, migrations,
-- maintenance and its counts as this database's owner role (src/roles.rs),
-- which owns none of it, and a tenant provisioned here joins this
-- database's shared role, which has no grant. Hands what the source's owner
-- role owns here to this database's (with its default privileges), and
-- gives this database's shared and all_tenants roles the grants the
-- source's have on those objects; the source's roles keep theirs (the
-- restored tenants' own roles are the source's, and go through them).
--
-- Role memberships are the cluster's, not a database's: anyone who may SET
-- ROLE to another database's tenancy role (that database's admins), or who
-- made a role of such a name (CREATEROLE), can make it own or hold things
-- here. So a source is a database whose owner role owns a schema of this
-- catalog, which only a restore (a superuser) makes so; only that owner
-- role's objects change owner, never a shared object (a database or a
-- tablespace); its shared and all_tenants roles own nothing that is moved,
-- and only their grants on what this database's owner role now owns are
-- copied. The scheduler runs it when it starts and after a restore; the
-- second run finds nothing to do.
CREATE FUNCTION tenancy.after_restore()
RETURNS TABLE(source_role name, this_role name, owned bigint, grants bigint)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    db oid := (SELECT d.oid FROM pg_database d WHERE d.datname = current_database());
    owner_here name := tenancy._db_role('owner');
    sources text[] := '{}';
    r record;
    a record;
BEGIN
    -- what it hands over goes to roles nobody else controls
    FOR a IN SELECT k FROM unnest(ARRAY['owner', 'shared', 'all_tenants']) k
             WHERE NOT tenancy._db_role_untouched(tenancy._db_role(k), k) LOOP
        RAISE EXCEPTION 'role % is not as tenancy keeps it; nothing is handed to it', tenancy._db_role(a.k)
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'A superuser revokes the ADMIN OPTION or membership and the attribute, then runs SELECT * FROM tenancy.after_restore().';
    END LOOP;
    -- the source databases: their owner role owns a schema of this catalog
    FOR r IN SELECT ro.oid, ro.rolname, substring(ro.rolname FROM '^tenancy_owner_([0-9]+)$') AS n
             FROM pg_roles ro
             WHERE ro.rolname ~ '^tenancy_owner_[0-9]+$' AND ro.rolname <> owner_here
               AND shobj_description(ro.oid, 'pg_authid')
                   ~ ('^tenancy role of database ' || substring(ro.rolname FROM '([0-9]+)$') || ': owner \(')
               AND NOT ro.rolsuper
               AND EXISTS (SELECT 1 FROM pg_namespace n, tenancy.tenants t
                           WHERE n.nspowner = ro.oid AND t.status <> 'dropped'
                             AND n.nspname = CASE WHEN t.isolation = 'shared' THEN tenancy._access_schema(t)
                                                  WHEN t.status = 'archived' THEN tenancy._archive_name(t)
                                                  ELSE t.schema_name END)
             ORDER BY ro.rolname LOOP
        -- REASSIGN OWNED also moves shared objects: a role that owns one is
        -- not a restore's to move (the extension never makes it own any)
        IF EXISTS (SELECT 1 FROM pg_database d WHERE d.datdba = r.oid)
           OR EXISTS (SELECT 1 FROM pg_tablespace sp WHERE sp.spcowner = r.oid)
           OR EXISTS (SELECT 1 FROM pg_shdepend d WHERE d.dbid = 0 AND d.refclassid = 'pg_authid'::regclass
                                                    AND d.refobjid = r.oid AND d.deptype = 'o') THEN
            RAISE WARNING 'tenancy: % owns a database or tablespace; what it owns here is left to it', r.rolname
                USING HINT = 'A superuser gives that away (ALTER DATABASE ... OWNER TO), then runs SELECT * FROM tenancy.after_restore().';
            CONTINUE;
        END IF;
        sources := sources || r.n;
        source_role := r.rolname;
        this_role := owner_here;
        owned := (SELECT count(*) FROM pg_shdepend d
                  WHERE d.dbid = db AND d.refclassid = 'pg_authid'::regclass AND d.refobjid = r.oid AND d.deptype = 'o');
        grants := 0;
        EXECUTE format('REASSIGN OWNED BY %I TO %I', r.rolname, owner_here);
        -- REASSIGN leaves default privileges with the old role: what the
        -- owner makes later in a tenant's schema (a migration) is granted
        -- to the tenant by them
        FOR a IN SELECT da.defaclnamespace::regnamespace AS nsp, x.privilege_type,
                        CASE WHEN x.grantee = 0 THEN 'PUBLIC'
                             ELSE quote_ident((SELECT g.rolname FROM pg_roles g WHERE g.oid = x.grantee)) END AS grantee,
                        CASE da.defaclobjtype WHEN 'r' THEN 'TABLES' WHEN 'S' THEN 'SEQUENCES'
                                              WHEN 'f' THEN 'ROUTINES' WHEN 'T' THEN 'TYPES' END AS objects
                 FROM pg_default_acl da, aclexplode(da.defaclacl) x
                 WHERE da.defaclrole = r.oid AND da.defaclnamespace <> 0 AND da.defaclobjtype IN ('r', 'S', 'f', 'T') LOOP
            EXECUTE format('ALTER DEFAULT PRIVILEGES FOR ROLE %I IN SCHEMA %s GRANT %s ON %s TO %s',
                           owner_here, a.nsp, a.privilege_type, a.objects, a.grantee);
            EXECUTE format('ALTER DEFAULT PRIVILEGES FOR ROLE %I IN SCHEMA %s REVOKE %s ON %s FROM %s',
                           r.rolname, a.nsp, a.privilege_type, a.objects, a.grantee);
            grants := grants + 1;
        END LOOP;
        RETURN NEXT;
    END LOOP;

    -- the shared and all_tenants roles of those databases: their grants on
    -- what this database's owner role now owns (the shared tables), found
    -- through the roles' dependencies here, not a scan of pg_class. The
    -- source's all_tenants role loses them (its members, the source's
    -- admins, are nobody here); its shared role keeps them, for the
    -- restored shared tenants' roles, which are the source's and under the
    -- tables' policies
    FOR r IN SELECT ro.oid, ro.rolname, k.kind
             FROM pg_roles ro,
                  LATERAL (SELECT substring(ro.rolname FROM '^tenancy_(shared|all_tenants)_[0-9]+$') AS kind,
                                  substring(ro.rolname FROM '_([0-9]+)$') AS n) k
             WHERE k.kind IS NOT NULL AND k.n = ANY (sources)
               AND shobj_description(ro.oid, 'pg_authid') ~ ('^tenancy role of database ' || k.n || ': ' || k.kind || ' \(')
             ORDER BY ro.rolname LOOP
        source_role := r.rolname;
        this_role := tenancy._db_role(r.kind);
        owned := 0;
        grants := 0;
        FOR a IN SELECT format('%s %s', CASE c.relkind WHEN 'S' THEN 'SEQUENCE' ELSE 'TABLE' END, c.oid::regclass) AS obj,
                        x.privilege_type,
                        EXISTS (SELECT 1 FROM aclexplode(c.relacl) y
                                WHERE y.grantee = to_regrole(this_role) AND y.privilege_type = x.privilege_type) AS held
                 FROM pg_shdepend d JOIN pg_class c ON c.oid = d.objid, aclexplode(c.relacl) x
                 WHERE d.dbid = db AND d.refclassid = 'pg_authid'::regclass AND d.refobjid = r.oid AND d.deptype = 'a'
                   AND d.classid = 'pg_class'::regclass AND x.grantee = r.oid
                   AND c.relowner = to_regrole(owner_here)
                 UNION ALL
                 SELECT format('SCHEMA %I', n.nspname), x.privilege_type,
                        EXISTS (SELECT 1 FROM aclexplode(n.nspacl) y
                                WHERE y.grantee = to_regrole(this_role) AND y.privilege_type = x.privilege_type)
                 FROM pg_shdepend d JOIN pg_namespace n ON n.oid = d.objid, aclexplode(n.nspacl) x
                 WHERE d.dbid = db AND d.refclassid = 'pg_authid'::regclass AND d.refobjid = r.oid AND d.deptype = 'a'
                   AND d.classid = 'pg_namespace'::regclass AND x.grantee = r.oid
                   AND n.nspowner = to_regrole(owner_here) LOOP
            IF NOT a.held THEN
                EXECUTE format('GRANT %s ON %s TO %I', a.privilege_type, a.obj, this_role);
                grants := grants + 1;
            END IF;
            IF r.kind = 'all_tenants' THEN
                EXECUTE format('REVOKE %s ON %s FROM %I', a.privilege_type, a.obj, r.rolname);
                grants := grants + 1;
            END IF;
        END LOOP;
        IF grants > 0 THEN
            RETURN NEXT;
        END IF;
    END LOOP;
END
$$;
COMMENT ON FUNCTION tenancy.after_restore() IS
    'After pg_restore of another database''s dump: hands what the source database''s tenancy roles own and hold here to this database''s';
