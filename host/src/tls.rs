//! HTTPS for the sinks. wasmtime-wasi-http's `default_send_request` trusts
//! only its built-in webpki roots, so `https` connections use our own
//! rustls client instead: the system's CA bundle plus the certificates of
//! `tls_ca_file`, or no certificate check at all with
//! `tls_insecure_skip_verify`. The client is built once per sink, at
//! instantiate; [`crate::connections`] calls [`TlsClient::handshake`] for
//! each new `https` connection.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use wasmtime_wasi_http::Error;

use crate::config::OutputSpec;

/// CA bundles of the common distributions, tried in order after
/// `$SSL_CERT_FILE`; the first with a certificate wins.
const SYSTEM_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem",
    "/etc/ssl/ca-bundle.pem",
    "/etc/ssl/cert.pem",
];

/// One sink's HTTPS client. Cheap to clone (shared state).
#[derive(Clone)]
pub struct TlsClient {
    name: String,
    connector: tokio_rustls::TlsConnector,
    /// Per server authority, the handshake failure last logged, so a sink
    /// retrying with backoff logs each distinct reason once.
    logged: Arc<Mutex<HashMap<String, String>>>,
}

impl TlsClient {
    /// The client for `output`, with the loud warning for
    /// `tls_insecure_skip_verify`. Called by `Runtime::instantiate`.
    pub fn for_output(output: &OutputSpec) -> Result<TlsClient, String> {
        let s = &output.settings;
        let ca_file = output
            .tls_ca_path
            .clone()
            .or_else(|| (!s.tls_ca_file.is_empty()).then(|| PathBuf::from(&s.tls_ca_file)));
        let client = TlsClient::new(&s.name, ca_file.as_deref(), s.tls_insecure_skip_verify)?;
        if s.tls_insecure_skip_verify {
            crate::log::warn(
                &s.name,
                "WARNING: tls_insecure_skip_verify = true: the server's certificate is NOT \
                 checked; anyone on the path can read and change the data",
            );
        }
        Ok(client)
    }

    /// The client of sink `name`: trusts the system's CA bundle (or, if the
    /// system has none, the built-in Mozilla roots) plus every certificate
    /// in `ca_file`; with `insecure_skip_verify`, any certificate at all.
    /// A missing, unreadable or certificate-less `ca_file` is an error
    /// naming the sink, the key and the file.
    pub fn new(
        name: &str,
        ca_file: Option<&Path>,
        insecure_skip_verify: bool,
    ) -> Result<TlsClient, String> {
        let mut roots = system_roots().clone();
        if let Some(path) = ca_file {
            let what = format!("[{name}] tls_ca_file = {}", path.display());
            let certs = read_pem_certificates(path).map_err(|e| format!("{what}: {e}"))?;
            let count = certs.len();
            for (i, cert) in certs.into_iter().enumerate() {
                roots.add(cert).map_err(|e| {
                    format!(
                        "{what}: certificate {} of {count} is not usable as a CA: {e}",
                        i + 1
                    )
                })?;
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("[{name}] cannot set up TLS: {e}"))?;
        let mut config = if insecure_skip_verify {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider)))
                .with_no_client_auth()
        } else {
            builder.with_root_certificates(roots).with_no_client_auth()
        };
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(TlsClient {
            name: name.to_string(),
            connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
            logged: Arc::default(),
        })
    }

    /// The TLS handshake over `tcp` with `host` (SNI; an IP address is
    /// checked against the certificate's IP names). A failed handshake is
    /// logged once per distinct reason and returned as a TLS error, which
    /// the sink treats as a failed connection.
    pub async fn handshake(
        &self,
        tcp: TcpStream,
        host: &str,
        authority: &str,
        timeout: Duration,
    ) -> Result<TlsStream<TcpStream>, Error> {
        let server_name = match host.parse::<IpAddr>() {
            Ok(ip) => ServerName::IpAddress(ip.into()),
            Err(_) => ServerName::try_from(host.to_string())?,
        };
        let handshake = self.connector.connect(server_name, tcp);
        match tokio::time::timeout(timeout, handshake).await {
            Ok(Ok(stream)) => {
                self.handshake_succeeded(authority);
                Ok(stream)
            }
            Ok(Err(e)) => {
                self.handshake_failed(authority, &e.to_string());
                Err(handshake_error(e))
            }
            Err(_) => {
                let why = format!("no answer within {timeout:?}");
                self.handshake_failed(authority, &why);
                Err(Error::ConnectionTimeout)
            }
        }
    }

    /// Log a failed handshake with `authority`, unless this very reason was
    /// the last one logged for it. Returns whether it logged.
    fn handshake_failed(&self, authority: &str, why: &str) -> bool {
        let mut logged = self.logged.lock().unwrap_or_else(|e| e.into_inner());
        if logged.get(authority).is_some_and(|last| last == why) {
            return false;
        }
        logged.insert(authority.to_string(), why.to_string());
        drop(logged);
        crate::log::error(
            &self.name,
            &format!("TLS handshake with {authority} failed: {why}"),
        );
        true
    }

    /// After a good handshake, a later failure is news again.
    fn handshake_succeeded(&self, authority: &str) {
        let mut logged = self.logged.lock().unwrap_or_else(|e| e.into_inner());
        logged.remove(authority);
    }
}

/// The guest's view of a failed handshake: a bad certificate, an alert from
/// the server, or any other TLS failure (`tls-protocol-error`).
fn handshake_error(e: std::io::Error) -> Error {
    match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
        Some(rustls::Error::InvalidCertificate(_)) => Error::TlsCertificateError,
        Some(rustls::Error::AlertReceived(alert)) => Error::TlsAlertReceived {
            alert_id: Some(u8::from(*alert)),
            alert_message: Some(format!("{alert:?}")),
        },
        _ => Error::Tls(e),
    }
}

/// The PEM certificates in `path`; an error if there is none.
fn read_pem_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read: {e}"))?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("not a valid PEM file: {e}"))?;
    if certs.is_empty() {
        return Err(
            "contains no PEM certificate (a `-----BEGIN CERTIFICATE-----` block)".to_string(),
        );
    }
    Ok(certs)
}

/// The system's trusted roots, read once per process: `$SSL_CERT_FILE` or
/// the first distribution bundle found; the built-in Mozilla roots
/// (webpki-roots) where the system has none.
fn system_roots() -> &'static RootCertStore {
    static ROOTS: OnceLock<RootCertStore> = OnceLock::new();
    ROOTS.get_or_init(|| {
        let env = std::env::var_os("SSL_CERT_FILE").map(PathBuf::from);
        let files = env
            .into_iter()
            .chain(SYSTEM_BUNDLES.iter().map(PathBuf::from));
        for file in files {
            let Ok(certs) = read_pem_certificates(&file) else {
                continue;
            };
            let mut roots = RootCertStore::empty();
            let (added, _unparsable) = roots.add_parsable_certificates(certs);
            if added > 0 {
                return roots;
            }
        }
        RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        }
    })
}

/// `tls_insecure_skip_verify`: any certificate for any name is accepted.
/// The handshake signatures are still checked (the peer holds the key of
/// the certificate it sent), which proves nothing about who it is.
#[derive(Debug)]
struct AcceptAnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_http::read_request;
    use http_body_util::BodyExt;
    use influx_sink_component::config::Settings;
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, KeyUsagePurpose};
    use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
    use std::net::SocketAddr;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use wasmtime_wasi_http::{RequestOptions, WasiBody};

    /// A test CA, and a server certificate it signed for `names`.
    struct Pki {
        ca_pem: String,
        server_cert: CertificateDer<'static>,
        server_key: Vec<u8>,
    }

    fn pki(names: &[&str]) -> Pki {
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        ca.distinguished_name
            .push(rcgen::DnType::CommonName, "influx-sink test CA");
        let ca_key = KeyPair::generate().unwrap();
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca, ca_key);
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let server = CertificateParams::new(names).unwrap();
        let server_key = KeyPair::generate().unwrap();
        let server_cert = server.signed_by(&server_key, &issuer).unwrap();
        Pki {
            ca_pem: ca_cert.pem(),
            server_cert: server_cert.der().clone(),
            server_key: server_key.serialize_der(),
        }
    }

    /// An HTTPS server on 127.0.0.1 that reads one request per connection
    /// (head and Content-Length body) and answers `204 No Content`. The
    /// bodies it received come out of the channel.
    async fn https_server(
        pki: &Pki,
    ) -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>) {
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![pki.server_cert.clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pki.server_key.clone())),
        )
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let acceptor = acceptor.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let Some((_, body)) = read_request(&mut tls, &mut Vec::new()).await else {
                        return;
                    };
                    let _ = tx.send(body);
                    let _ = tls.write_all(b"HTTP/1.1 204 No Content\r\n\r\n").await;
                    let _ = tls.shutdown().await;
                });
            }
        });
        (addr, rx)
    }

    fn request(url: &str, body: &'static [u8]) -> http::Request<WasiBody> {
        crate::test_http::request(http::Method::POST, url, body)
    }

    fn options() -> Option<RequestOptions> {
        let t = Some(Duration::from_secs(5));
        Some(RequestOptions {
            connect_timeout: t,
            first_byte_timeout: t,
            between_bytes_timeout: t,
        })
    }

    /// `req` through a pool of `client`'s connections.
    async fn send(
        client: &TlsClient,
        req: http::Request<WasiBody>,
    ) -> Result<(http::Response<WasiBody>, crate::connections::IoFuture), Error> {
        crate::connections::Connections::new(client.clone())
            .send(req, options())
            .await
    }

    /// Send one write and check it arrived and got its 204.
    async fn write_ok(
        client: &TlsClient,
        url: &str,
        rx: &mut tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>,
    ) {
        let (res, io) = send(client, request(url, b"m v=1i\n"))
            .await
            .unwrap_or_else(|e| panic!("{url}: {e}"));
        assert_eq!(res.status(), http::StatusCode::NO_CONTENT);
        let body = res.into_body().collect().await.unwrap().to_bytes();
        assert!(body.is_empty());
        Box::into_pin(io).await.unwrap();
        assert_eq!(rx.recv().await.unwrap(), b"m v=1i\n");
    }

    fn ca_file(dir: &tempfile::TempDir, pem: &str) -> PathBuf {
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, pem).unwrap();
        path
    }

    #[tokio::test]
    async fn trusts_the_ca_of_tls_ca_file() {
        let pki = pki(&["127.0.0.1", "localhost"]);
        let (addr, mut rx) = https_server(&pki).await;
        let dir = tempfile::tempdir().unwrap();
        let ca = ca_file(&dir, &pki.ca_pem);
        let client = TlsClient::new("out", Some(&ca), false).unwrap();
        write_ok(&client, &format!("https://{addr}/api/v2/write"), &mut rx).await;
        let url = format!("https://localhost:{}/write", addr.port());
        write_ok(&client, &url, &mut rx).await;
    }

    #[tokio::test]
    async fn unknown_issuer_without_tls_ca_file_is_a_certificate_error_logged_once() {
        let pki = pki(&["127.0.0.1"]);
        let (addr, mut rx) = https_server(&pki).await;
        let client = TlsClient::new("out", None, false).unwrap();
        let url = format!("https://{addr}/write");
        for _ in 0..3 {
            let e = send(&client, request(&url, b"x")).await.err();
            assert!(
                matches!(e, Some(Error::TlsCertificateError)),
                "expected a TLS certificate error, got {e:?}"
            );
        }
        let logged = client.logged.lock().unwrap().clone();
        assert_eq!(
            logged.get(&addr.to_string()).map(String::as_str),
            Some("invalid peer certificate: UnknownIssuer")
        );
        // Logged once: the same reason again is not news.
        assert!(
            !client.handshake_failed(&addr.to_string(), "invalid peer certificate: UnknownIssuer")
        );
        assert!(client.handshake_failed(&addr.to_string(), "something else"));
        assert!(rx.try_recv().is_err(), "no request may get through");
    }

    #[tokio::test]
    async fn a_name_not_in_the_certificate_is_refused() {
        let pki = pki(&["127.0.0.1"]);
        let (addr, mut rx) = https_server(&pki).await;
        let dir = tempfile::tempdir().unwrap();
        let client = TlsClient::new("out", Some(&ca_file(&dir, &pki.ca_pem)), false).unwrap();
        let url = format!("https://localhost:{}/write", addr.port());
        let e = send(&client, request(&url, b"x")).await.err();
        assert!(matches!(e, Some(Error::TlsCertificateError)), "{e:?}");
        let why = client.logged.lock().unwrap()[&format!("localhost:{}", addr.port())].clone();
        assert!(why.contains("not valid for name \"localhost\""), "{why}");
        assert!(rx.try_recv().is_err());
    }

    #[tokio::test]
    async fn insecure_skip_verify_accepts_any_certificate() {
        let pki = pki(&["some.other.name"]);
        let (addr, mut rx) = https_server(&pki).await;
        let client = TlsClient::new("out", None, true).unwrap();
        write_ok(&client, &format!("https://{addr}/write"), &mut rx).await;
    }

    #[tokio::test]
    async fn plain_http_server_is_a_tls_error() {
        // A server that answers in plain HTTP: the handshake fails.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut tcp, _)) = listener.accept().await {
                let mut buf = [0u8; 1024];
                let _ = tcp.read(&mut buf).await;
                let _ = tcp
                    .write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
                    .await;
            }
        });
        let client = TlsClient::new("out", None, false).unwrap();
        let url = format!("https://{addr}/write");
        let e = send(&client, request(&url, b"x")).await.err();
        assert!(matches!(e, Some(Error::Tls(_))), "{e:?}");
        assert!(client
            .logged
            .lock()
            .unwrap()
            .contains_key(&addr.to_string()));
    }

    fn spec(ca: Option<PathBuf>, insecure: bool) -> OutputSpec {
        let mut settings = Settings::defaults("out");
        settings.tls_insecure_skip_verify = insecure;
        OutputSpec {
            settings,
            pairs: Vec::new(),
            backlog_dir: PathBuf::from("/nonexistent"),
            tls_ca_path: ca,
        }
    }

    #[test]
    fn bad_tls_ca_file_is_an_instantiate_error_naming_sink_key_and_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let e = TlsClient::for_output(&spec(Some(missing.clone()), false))
            .err()
            .unwrap();
        assert_eq!(
            e.split(" (os error").next().unwrap(),
            format!(
                "[out] tls_ca_file = {}: cannot read: No such file or directory",
                missing.display()
            )
        );

        let key_only = KeyPair::generate().unwrap().serialize_pem();
        for (content, why) in [
            ("", "contains no PEM certificate"),
            ("hello\n", "contains no PEM certificate"),
            (key_only.as_str(), "contains no PEM certificate"),
            (
                "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n",
                "certificate 1 of 1 is not usable as a CA",
            ),
        ] {
            let path = ca_file(&dir, content);
            let e = TlsClient::for_output(&spec(Some(path.clone()), false))
                .err()
                .unwrap_or_else(|| panic!("{content:?} was accepted"));
            let prefix = format!("[out] tls_ca_file = {}: ", path.display());
            assert!(e.starts_with(&prefix), "{e}");
            assert!(e.contains(why), "{content:?}: {e}");
        }

        // Even with verification off, a broken file is reported.
        let path = ca_file(&dir, "hello\n");
        assert!(TlsClient::for_output(&spec(Some(path), true)).is_err());
        // A good one, and none at all, are fine.
        let path = ca_file(&dir, &pki(&["x"]).ca_pem);
        assert!(TlsClient::for_output(&spec(Some(path), false)).is_ok());
        assert!(TlsClient::for_output(&spec(None, false)).is_ok());
    }

    #[test]
    fn system_roots_are_loaded() {
        assert!(!system_roots().is_empty());
    }
}
