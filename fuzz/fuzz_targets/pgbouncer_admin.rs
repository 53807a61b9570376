//! Answers of a PgBouncer admin console (another version, a buggy or
//! hostile one): any columns, any values. Never a panic; label values stay
//! capped, tenants bounded, and each tenant's wait total never goes down
//! from one poll to the next.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use tenantwatch::attribution::Attribution;
use tenantwatch::collect::pgbouncer::{AdminTable, AdminTables, WaitAccounts, snapshot_from};
use tenantwatch::store::MAX_POOL_LABEL_VALUES;

const MAX_TENANTS: usize = 50;

fn rules() -> &'static Attribution {
    static RULES: OnceLock<Attribution> = OnceLock::new();
    RULES.get_or_init(|| {
        let mut settings = tenantwatch::config::Settings::default();
        settings.tenants.rules = vec![tenantwatch::config::RuleSettings {
            source: tenantwatch::attribution::RuleSource::Database,
            pattern: "^tenant_(?P<tenant>.+)$".into(),
            key: None,
        }];
        tenantwatch::Config::try_from(settings).unwrap().attribution
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // Sections separated by `;;`: pools, stats, databases, clients, lists,
    // config; the whole input is polled twice, then the stats alone again.
    let mut sections = text.split(";;").map(AdminTable::from_text);
    let mut next = || sections.next().unwrap_or_default();
    let tables = AdminTables {
        pools: next(),
        stats: next(),
        databases: next(),
        clients: next(),
        lists: next(),
        config: next(),
        version: AdminTable::default(),
    };
    let mut waits = WaitAccounts::default();
    let (first, _) = snapshot_from(&tables, rules(), &mut waits, MAX_TENANTS);
    let (second, _) = snapshot_from(&tables, rules(), &mut waits, MAX_TENANTS);
    for snapshot in [&first, &second] {
        assert!(snapshot.pools.len() <= (MAX_POOL_LABEL_VALUES + 1).pow(2));
        assert!(snapshot.clients_by_application.len() <= MAX_POOL_LABEL_VALUES + 1);
        assert!(snapshot.tenants.len() <= MAX_TENANTS + 1);
    }
    for (tenant, pools) in &first.tenants {
        let later = second
            .tenants
            .get(tenant)
            .map_or(0.0, |p| p.wait_seconds_total);
        assert!(
            later >= pools.wait_seconds_total,
            "{tenant}: {later} < {}",
            pools.wait_seconds_total
        );
    }
});
