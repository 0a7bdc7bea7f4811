//! In-database tests of `tenancy` (`#[pg_test]`): each runs inside a
//! transaction that is rolled back, against the installed extension. The
//! background worker never sees this data; worker behaviour is tested from
//! outside the server (`tests/`).

::pgrx::pg_module_magic!(name, version);

#[cfg(any(test, feature = "pg_test"))]
#[pgrx::pg_schema]
mod tests {
    use pgrx::prelude::*;

    fn count(sql: &str) -> i64 {
        Spi::get_one::<i64>(sql).unwrap().unwrap()
    }

    #[pg_test]
    fn provision_makes_row_schema_and_tables() {
        let (status, schema) = Spi::get_two::<String, String>(
            "SELECT status::text, schema_name::text FROM tenancy.provision('acme', 'Acme Inc')",
        )
        .unwrap();
        assert_eq!(status.as_deref(), Some("active"));
        assert_eq!(schema.as_deref(), Some("tenant_acme"));
        assert_eq!(
            count("SELECT count(*) FROM pg_tables WHERE schemaname = 'tenant_acme'"),
            3
        );
        assert_eq!(
            count("SELECT count(*) FROM tenancy.audit_log WHERE action = 'provision' AND tenant_slug = 'acme'"),
            1
        );
    }

    #[pg_test]
    fn provision_keeps_callers_search_path() {
        Spi::run("SET search_path = public, tenancy").unwrap();
        Spi::run("SELECT tenancy.provision('pathcheck')").unwrap();
        let path = Spi::get_one::<String>("SHOW search_path").unwrap().unwrap();
        assert_eq!(path, "public, tenancy");
    }

    #[pg_test]
    fn trading_template_has_its_four_tables_and_indexes() {
        Spi::run("SELECT tenancy.provision('trader1', NULL, 'trading')").unwrap();
        assert_eq!(
            count("SELECT count(*) FROM pg_tables WHERE schemaname = 'tenant_trader1'"),
            4
        );
        assert_eq!(
            count("SELECT count(*) FROM pg_indexes WHERE schemaname = 'tenant_trader1' AND indexname LIKE 'idx_%'"),
            4
        );
    }

    #[pg_test]
    fn if_not_exists_returns_the_same_tenant() {
        let a = Spi::get_one::<pgrx::Uuid>("SELECT id FROM tenancy.provision('twice')").unwrap();
        let b = Spi::get_one::<pgrx::Uuid>(
            "SELECT id FROM tenancy.provision('twice', options => '{\"if_not_exists\": true}')",
        )
        .unwrap();
        assert_eq!(a, b);
    }

    #[pg_test(error = "tenant \"dup\" already exists")]
    fn duplicate_slug_fails() {
        Spi::run("SELECT tenancy.provision('dup')").unwrap();
        Spi::run("SELECT tenancy.provision('dup')").unwrap();
    }

    #[pg_test(error = "invalid tenant slug \"Bad\": it must start with a lowercase letter (a-z)")]
    fn invalid_slug_fails() {
        Spi::run("SELECT tenancy.provision('Bad')").unwrap();
    }

    #[pg_test(error = "template \"nope\" does not exist")]
    fn unknown_template_fails() {
        Spi::run("SELECT tenancy.provision('x1', NULL, 'nope')").unwrap();
    }

    #[pg_test]
    fn register_template_versions() {
        let spec = r#"'{"tables": ["CREATE TABLE notes (id int PRIMARY KEY)"]}'"#;
        let v1 = Spi::get_one::<i32>(&format!(
            "SELECT tenancy.register_template('notes', {spec})"
        ));
        let again = Spi::get_one::<i32>(&format!(
            "SELECT tenancy.register_template('notes', {spec})"
        ));
        let v2 = Spi::get_one::<i32>(
            r#"SELECT tenancy.register_template('notes', '{"tables": ["CREATE TABLE notes (id int PRIMARY KEY, body text)"]}')"#,
        );
        assert_eq!((v1, again, v2), (Ok(Some(1)), Ok(Some(1)), Ok(Some(2))));
        Spi::run("SELECT tenancy.provision('noted', NULL, 'notes')").unwrap();
        assert_eq!(
            count("SELECT template_version FROM tenancy.tenants WHERE slug = 'noted'"),
            2
        );
    }

    #[pg_test(error = "template \"bad\" is not valid (2 problems)")]
    fn bad_template_lists_problems() {
        Spi::run(r#"SELECT tenancy.register_template('bad', '{"tables": [1], "nope": true}')"#)
            .unwrap();
    }

    #[pg_test]
    fn validate_reports_every_item() {
        Spi::run("SELECT tenancy.provision('taken')").unwrap();
        let invalid = count(
            r#"SELECT count(*) FROM tenancy.validate('[{"slug": "ok1"}, {"slug": "taken"}, {"slug": "Bad"}, {"slug": "ok1"}, 3]') WHERE NOT valid"#,
        );
        assert_eq!(invalid, 4);
        let valid = count(
            r#"SELECT count(*) FROM tenancy.validate('[{"slug": "ok1"}, {"slug": "ok2", "template": "trading"}]') WHERE valid"#,
        );
        assert_eq!(valid, 2);
    }

    #[pg_test]
    fn template_ddl_is_what_provision_runs() {
        let n = count("SELECT count(*) FROM tenancy.template_ddl('trading', 'acme')");
        assert_eq!(n, 2 + 4 + 4);
        let first = Spi::get_one::<String>(
            "SELECT s FROM tenancy.template_ddl('trading', 'acme') s LIMIT 1",
        )
        .unwrap()
        .unwrap();
        assert_eq!(first, "CREATE SCHEMA \"tenant_acme\"");
    }

    #[pg_test]
    fn batch_processed_in_this_transaction() {
        Spi::run(r#"SELECT tenancy.provision_batch('[{"slug": "q1"}, {"slug": "q2", "template": "trading"}]')"#)
            .unwrap();
        assert_eq!(count("SELECT tenancy.process_queue()::bigint"), 2);
        assert_eq!(
            Spi::get_one::<String>("SELECT status::text FROM tenancy.batches").unwrap(),
            Some("completed".into())
        );
        assert_eq!(
            count("SELECT count(*) FROM tenancy.tenants WHERE slug IN ('q1', 'q2')"),
            2
        );
    }

    #[pg_test(error = "1 of 1 tenants in the batch are not valid; nothing was queued")]
    fn batch_with_a_bad_item_is_refused() {
        Spi::run(r#"SELECT tenancy.provision_batch('[{"slug": "Nope"}]')"#).unwrap();
    }

    #[pg_test]
    fn pool_build_and_claim() {
        Spi::run("SELECT tenancy.set_pool_size('default', 1)").unwrap();
        Spi::run("SELECT tenancy._pool_work()").unwrap();
        assert_eq!(count("SELECT count(*) FROM tenancy.pool"), 1);
        Spi::run("SELECT tenancy.provision('from_pool')").unwrap();
        assert_eq!(count("SELECT count(*) FROM tenancy.pool"), 0);
        assert_eq!(
            count("SELECT count(*) FROM pg_tables WHERE schemaname = 'tenant_from_pool'"),
            3
        );
        let health = Spi::get_one::<pgrx::JsonB>("SELECT tenancy.health()")
            .unwrap()
            .unwrap();
        assert_eq!(health.0["pool"]["default"], 0);
    }

    #[pg_test]
    fn tenant_context_is_transaction_local_by_default() {
        assert_eq!(
            Spi::get_one::<pgrx::Uuid>("SELECT tenancy.current_tenant_id()").unwrap(),
            None
        );
        let id = Spi::get_one::<pgrx::Uuid>(
            r#"SELECT id FROM tenancy.provision('ctx', NULL, 'default', '{"isolation": "shared"}')"#,
        )
        .unwrap();
        let set = Spi::get_one::<pgrx::Uuid>("SELECT tenancy.set_tenant('ctx')").unwrap();
        assert_eq!(set, id);
        assert_eq!(
            Spi::get_one::<pgrx::Uuid>("SELECT tenancy.current_tenant_id()").unwrap(),
            id
        );
        assert_eq!(
            count(
                "SELECT count(*) FROM tenancy.rls_audit() WHERE tbl::text LIKE 'shared_default.%'"
            ),
            0
        );
    }

    #[pg_test]
    fn lifecycle_in_one_transaction() {
        Spi::run("SELECT tenancy.provision('cycle')").unwrap();
        Spi::run("SELECT tenancy.suspend('cycle')").unwrap();
        Spi::run("SELECT tenancy.resume('cycle')").unwrap();
        Spi::run(r#"SELECT tenancy.bulk_update(ARRAY['cycle'], '{"max_users": 3}')"#).unwrap();
        Spi::run("SELECT tenancy.drop_tenant('cycle', true)").unwrap();
        assert_eq!(
            Spi::get_one::<String>("SELECT status::text FROM tenancy.tenants WHERE slug = 'cycle'")
                .unwrap(),
            Some("archived".into())
        );
        assert_eq!(
            count("SELECT count(*) FROM tenancy.audit_log WHERE tenant_slug = 'cycle'"),
            5
        );
    }

    fn db_oid() -> i64 {
        count("SELECT oid::bigint FROM pg_database WHERE datname = current_database()")
    }

    #[pg_test]
    fn roles_are_this_databases_own() {
        let oid = db_oid();
        assert_eq!(
            Spi::get_one::<String>("SELECT tenancy.admin_role()").unwrap(),
            Some(format!("tenancy_admin_{oid}"))
        );
        Spi::run("SELECT tenancy.provision('roled')").unwrap();
        assert_eq!(
            Spi::get_one::<String>(
                "SELECT role_name::text FROM tenancy.tenants WHERE slug = 'roled'"
            )
            .unwrap(),
            Some(format!("t{oid}_roled"))
        );
        // the owner role owns the schema and its tables, not the tenant
        assert_eq!(
            Spi::get_one::<String>(
                "SELECT nspowner::regrole::text FROM pg_namespace WHERE nspname = 'tenant_roled'"
            )
            .unwrap(),
            Some(format!("tenancy_owner_{oid}"))
        );
        assert_eq!(
            count(&format!(
                "SELECT count(*) FROM pg_class WHERE relnamespace = 'tenant_roled'::regnamespace \
                 AND relowner <> 'tenancy_owner_{oid}'::regrole"
            )),
            0
        );
    }

    #[pg_test]
    fn tenant_role_gets_rows_only() {
        Spi::run("SELECT tenancy.provision('rowsonly')").unwrap();
        let role = Spi::get_one::<String>(
            "SELECT role_name::text FROM tenancy.tenants WHERE slug = 'rowsonly'",
        )
        .unwrap()
        .unwrap();
        let has = |what: &str| {
            Spi::get_one_with_args::<bool>(what, &[role.as_str().into()])
                .unwrap()
                .unwrap()
        };
        for p in ["SELECT", "INSERT", "UPDATE", "DELETE"] {
            assert!(has(&format!(
                "SELECT has_table_privilege($1, 'tenant_rowsonly.users', '{p}')"
            )));
        }
        for p in ["TRUNCATE", "TRIGGER", "REFERENCES"] {
            assert!(!has(&format!(
                "SELECT has_table_privilege($1, 'tenant_rowsonly.users', '{p}')"
            )));
        }
        assert!(has(
            "SELECT has_sequence_privilege($1, 'tenant_rowsonly.items_id_seq', 'USAGE')"
        ));
        assert!(!has(
            "SELECT has_sequence_privilege($1, 'tenant_rowsonly.items_id_seq', 'UPDATE')"
        ));
        assert!(has(
            "SELECT has_schema_privilege($1, 'tenant_rowsonly', 'USAGE')"
        ));
        assert!(!has(
            "SELECT has_schema_privilege($1, 'tenant_rowsonly', 'CREATE')"
        ));
    }

    #[pg_test]
    fn shipped_templates_are_loaded() {
        assert_eq!(
            count("SELECT count(DISTINCT name) FROM tenancy.templates WHERE shipped AND name IN ('default', 'trading', 'timeseries')"),
            3
        );
        // timeseries: version 1 (varchar) kept for its tenants, and 2 (text)
        assert_eq!(
            count("SELECT count(*) FROM tenancy.templates WHERE shipped AND name = 'timeseries'"),
            2
        );
    }
}

#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    pub fn postgresql_conf_options() -> Vec<&'static str> {
        vec!["shared_preload_libraries = 'tenancy'"]
    }
}
