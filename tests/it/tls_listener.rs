//! TLS on the listener: the daemon serves HTTPS with the configured
//! certificate, refuses plain HTTP on that port, and serves a renewed
//! certificate after a reload without a restart.

use crate::support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use crate::support::TestDaemon;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tenantwatch::Config;
use tenantwatch::config::Settings;

/// A self-signed certificate for 127.0.0.1 and localhost, via openssl.
pub(crate) fn self_signed(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let (cert, key) = (
        dir.join(format!("{name}.crt")),
        dir.join(format!("{name}.key")),
    );
    let status = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
        ])
        .args(["-nodes", "-days", "1", "-subj", "/CN=tenantwatch-test"])
        .args(["-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"])
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl is needed for this test: apt-get install openssl");
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    (cert, key)
}

/// GET `path` over TLS, trusting only `ca`: (status, body).
async fn get_tls(
    addr: std::net::SocketAddr,
    ca: &Path,
    path: &str,
) -> Result<(u16, String), String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let name = ServerName::try_from("127.0.0.1").unwrap();
    let tls = connector
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let request = hyper::Request::get(path)
        .header("host", "127.0.0.1")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status().as_u16();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?;
    Ok((
        status,
        String::from_utf8_lossy(&body.to_bytes()).into_owned(),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_listener_serves_tls_and_reloads_its_certificate() {
    let dir = std::env::temp_dir().join(format!("tw-tls-listener-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = self_signed(&dir, "first");
    let configure = |c: &mut Settings| {
        c.server.tls_cert_file = Some(dir.join("served.crt"));
        c.server.tls_key_file = Some(dir.join("served.key"));
    };
    std::fs::copy(&cert, dir.join("served.crt")).unwrap();
    std::fs::copy(&key, dir.join("served.key")).unwrap();
    let daemon = TestDaemon::start_with(configure).await;

    assert_eq!(
        get_tls(daemon.http, &cert, "/healthz").await.unwrap(),
        (200, "ok\n".into())
    );
    // Plain HTTP on the TLS port gets no HTTP answer.
    let plain = support::try_http(daemon.http, "GET", "/healthz", &[], Vec::new()).await;
    assert!(plain.is_err(), "{plain:?}");

    // A renewed certificate, then SIGHUP's reload: new connections get it.
    let (renewed, renewed_key) = self_signed(&dir, "renewed");
    std::fs::copy(&renewed, dir.join("served.crt")).unwrap();
    std::fs::copy(&renewed_key, dir.join("served.key")).unwrap();
    let mut file = support::file_config();
    configure(&mut file);
    let ignored = daemon
        .daemon
        .as_ref()
        .unwrap()
        .reload(&Config::try_from(file).unwrap());
    assert!(ignored.is_empty(), "{ignored:?}");
    assert!(
        get_tls(daemon.http, &cert, "/healthz").await.is_err(),
        "the old certificate is gone"
    );
    assert_eq!(
        get_tls(daemon.http, &renewed, "/healthz").await.unwrap().0,
        200
    );
    daemon.stop().await;
    std::fs::remove_dir_all(dir).unwrap();
}

/// With every ordinary slot held by idle sockets, a probe over TLS is
/// still answered from the probes' reserve, and anything else is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_over_tls_are_answered_when_every_slot_is_taken() {
    let dir = std::env::temp_dir().join(format!("tw-tls-probes-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = self_signed(&dir, "probes");
    let daemon = TestDaemon::start_with(|c| {
        c.server.tls_cert_file = Some(cert.clone());
        c.server.tls_key_file = Some(key.clone());
        c.server.max_connections = 2;
        c.server.max_connections_per_ip = 4;
    })
    .await;
    let _held = [
        tokio::net::TcpStream::connect(daemon.http).await.unwrap(),
        tokio::net::TcpStream::connect(daemon.http).await.unwrap(),
    ];
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert_eq!(
        get_tls(daemon.http, &cert, "/healthz").await.unwrap(),
        (200, "ok\n".into())
    );
    assert_eq!(get_tls(daemon.http, &cert, "/readyz").await.unwrap().0, 200);
    let metrics = get_tls(daemon.http, &cert, "/metrics").await;
    assert!(metrics.is_err(), "{metrics:?}");
    daemon.stop().await;
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_cert_without_a_key_is_refused_by_name() {
    let mut file = Settings::default();
    file.server.tls_cert_file = Some("/nonexistent.crt".into());
    let err = Config::try_from(file).unwrap_err().to_string();
    assert!(err.contains("server.tls_key_file"), "{err}");
}
