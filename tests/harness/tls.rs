//! Test TLS material made at test time: a throw-away CA ([`TestCa`]) that
//! issues server certificates for 127.0.0.1 / localhost, and clients that
//! trust only such a CA ([`client_config`], [`https_agent`]).
//!
//! Keys are ECDSA P-256 in PKCS#8 PEM, which influxd (Go), curl/OpenSSL and
//! rustls all read. Nothing here touches the system trust store.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

/// The names every server certificate of [`TestCa::issue_server_cert`] is
/// valid for.
pub const SERVER_NAMES: [&str; 2] = ["127.0.0.1", "localhost"];

/// A certificate authority generated for one test, with its certificate in
/// `<dir>/ca.pem` (and its key in `<dir>/ca-key.pem`, for debugging with
/// openssl). Two `TestCa`s are unrelated: a client trusting one rejects
/// the other's certificates.
pub struct TestCa {
    dir: PathBuf,
    issuer: Issuer<'static, KeyPair>,
    issued: AtomicU32,
}

impl TestCa {
    /// Generate a CA and write `<dir>/ca.pem` (`dir` is created if needed).
    /// Panics if `dir` already holds a `ca.pem`: give each CA its own dir.
    pub fn new(dir: &Path) -> TestCa {
        std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        let ca_path = dir.join("ca.pem");
        assert!(
            !ca_path.exists(),
            "TestCa::new: {} already exists; give each CA its own dir",
            ca_path.display()
        );
        static SERIAL: AtomicU32 = AtomicU32::new(1);
        let n = SERIAL.fetch_add(1, Ordering::Relaxed);
        let mut params = CertificateParams::default();
        params.distinguished_name.push(
            DnType::CommonName,
            format!("influx-sink test CA {} #{n}", std::process::id()),
        );
        params
            .distinguished_name
            .push(DnType::OrganizationName, "influx-sink tests");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().expect("generate CA key");
        let cert = params.self_signed(&key).expect("self-sign CA certificate");
        write(&ca_path, &cert.pem());
        write(&dir.join("ca-key.pem"), &key.serialize_pem());
        TestCa {
            dir: dir.to_path_buf(),
            issuer: Issuer::new(params, key),
            issued: AtomicU32::new(0),
        }
    }

    /// `<dir>/ca.pem`: the CA certificate (PEM) to trust, e.g. with
    /// `curl --cacert` or [`https_agent`].
    pub fn ca_path(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// The directory the CA writes its files to.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Issue a server certificate for [`SERVER_NAMES`] (IP SAN 127.0.0.1,
    /// DNS SAN localhost). Returns `(cert_pem_path, key_pem_path)`, fresh
    /// files `<dir>/server-<n>.pem` and `<dir>/server-<n>-key.pem`.
    pub fn issue_server_cert(&self) -> (PathBuf, PathBuf) {
        self.issue_server_cert_for(&SERVER_NAMES)
    }

    /// Like [`TestCa::issue_server_cert`] for other names (IP addresses
    /// become IP SANs, anything else DNS SANs).
    pub fn issue_server_cert_for(&self, names: &[&str]) -> (PathBuf, PathBuf) {
        let n = self.issued.fetch_add(1, Ordering::Relaxed) + 1;
        let sans: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let mut params = CertificateParams::new(sans)
            .unwrap_or_else(|e| panic!("server certificate names {names:?}: {e}"));
        params.distinguished_name.push(
            DnType::CommonName,
            names.first().copied().unwrap_or("test server"),
        );
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate().expect("generate server key");
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("sign server certificate");
        let cert_path = self.dir.join(format!("server-{n}.pem"));
        let key_path = self.dir.join(format!("server-{n}-key.pem"));
        write(&cert_path, &cert.pem());
        write(&key_path, &key.serialize_pem());
        (cert_path, key_path)
    }

    /// A rustls client config trusting only this CA.
    pub fn client_config(&self) -> Arc<rustls::ClientConfig> {
        client_config(&self.ca_path())
    }
}

/// A rustls client config (ring provider, TLS 1.2 and 1.3) whose only
/// trust anchors are the PEM certificates in `ca_pem`. Panics if the file
/// has none.
pub fn client_config(ca_pem: &Path) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(ca_pem)
        .unwrap_or_else(|e| panic!("read {}: {e}", ca_pem.display()))
        .collect::<Result<_, _>>()
        .unwrap_or_else(|e| panic!("parse {}: {e}", ca_pem.display()));
    assert!(
        !certs.is_empty(),
        "{}: no PEM certificate in it",
        ca_pem.display()
    );
    for cert in certs {
        roots
            .add(cert)
            .unwrap_or_else(|e| panic!("{}: not a usable CA: {e}", ca_pem.display()));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("rustls protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(config)
}

/// Like [`crate::http_agent`], but https URLs are verified against the CA
/// certificate(s) in `ca_pem` only.
pub fn https_agent(ca_pem: &Path, timeout: Duration) -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout_connect(timeout)
        .timeout(timeout)
        .tls_config(client_config(ca_pem))
        .build()
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}
