//! The sqlcommenter tag in query texts from pg_stat_activity, and session
//! attribution with the default rules: never a panic; a tenant attributed
//! is a valid tenant id.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use tenantwatch::attribution::{Attribution, Session, comment_tag};
use tenantwatch::event::validate_tenant;

fn rules() -> &'static Attribution {
    static RULES: OnceLock<Attribution> = OnceLock::new();
    RULES.get_or_init(|| tenantwatch::Config::defaults().attribution)
}

fuzz_target!(|data: &[u8]| {
    let Ok(query) = std::str::from_utf8(data) else {
        return;
    };
    let _ = comment_tag(query, "tenant");
    let session = Session {
        database: "app",
        role: "app",
        application_name: "",
        query,
    };
    if let Some(tenant) = rules().session_tenant(&session) {
        assert!(validate_tenant(&tenant).is_ok(), "{tenant:?}");
    }
});
