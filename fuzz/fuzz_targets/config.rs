//! The configuration file: TOML text into each section's settings and through
//! validation. Never a panic; errors name keys. (Keys naming files are
//! cleared first: the fuzzer must not make the validator read /dev/zero.)
#![no_main]

use libfuzzer_sys::fuzz_target;
use tenantwatch::Config;
use tenantwatch::config::Settings;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(mut settings) = toml::from_str::<Settings>(text) else {
        return;
    };
    settings.server.auth_token_file = None;
    settings.server.read_token_file = None;
    settings.server.tls_cert_file = None;
    settings.server.tls_key_file = None;
    settings.ratelimit.callers.clear();
    settings.state.file = None;
    settings.tenants.tiers_file = None;
    settings.tenants.expected_file = None;
    for target in &mut settings.targets {
        target.password_file = None;
        target.tls_ca_file = None;
    }
    for pgbouncer in &mut settings.pgbouncers {
        pgbouncer.password_file = None;
    }
    let _ = Config::try_from(settings);
});
