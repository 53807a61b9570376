//! The configuration file: TOML text into the file schema and through
//! validation. Never a panic; errors name keys. (Keys naming files are
//! cleared first: the fuzzer must not make the validator read /dev/zero.)
#![no_main]

use libfuzzer_sys::fuzz_target;
use tenantwatch::Config;
use tenantwatch::config::FileConfig;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(mut file) = toml::from_str::<FileConfig>(text) else {
        return;
    };
    file.server.auth_token_file = None;
    file.server.read_token_file = None;
    file.server.tls_cert_file = None;
    file.server.tls_key_file = None;
    file.ratelimit.callers.clear();
    file.state.file.clear();
    for target in &mut file.targets {
        target.password_file = None;
        target.tls_ca_file = None;
    }
    let _ = Config::try_from(file);
});
