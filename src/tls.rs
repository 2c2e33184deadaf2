//! TLS with rustls (ring): the listener's certificates, chosen by SNI and reloaded when their files change, and the client config for TLS backends.
//!
//! The listener's certificates live in a [`CertResolver`] backed by an
//! `ArcSwap`: a handshake picks its certificate from the set current at that
//! moment, so a reload affects new connections only, and connections already
//! open keep the certificate they were made with. [`ServerCerts::reload`]
//! re-reads the files; if any of them is bad, the old set stays in use.
//!
//! Only TLS 1.2 and 1.3 are offered. Nothing here knows about HTTP beyond the
//! ALPN protocol names.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig, SupportedProtocolVersion};

use crate::config::{Tls, UpstreamTls};

/// ALPN name of HTTP/2.
pub const ALPN_H2: &[u8] = b"h2";
/// ALPN name of HTTP/1.1.
pub const ALPN_HTTP11: &[u8] = b"http/1.1";

/// The protocol versions unstick speaks: TLS 1.3 and 1.2, nothing older.
static VERSIONS: &[&SupportedProtocolVersion] = &[&rustls::version::TLS13, &rustls::version::TLS12];

/// A certificate, key or CA file that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read `{path}`: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("`{path}`: {message}")]
    Pem { path: PathBuf, message: String },
    #[error("`{cert}` with key `{key}`: {message}")]
    Pair {
        cert: PathBuf,
        key: PathBuf,
        message: String,
    },
    #[error("TLS setup failed: {}", explain(.0))]
    Rustls(#[from] rustls::Error),
}

/// A rustls error in words, with what to do about it: the certificate
/// problems an operator meets (a key that does not match, an expired or
/// untrusted certificate, a CA certificate served as a server's, a name the
/// certificate does not cover), else rustls's own text.
pub fn explain(e: &rustls::Error) -> String {
    use rustls::{CertificateError as C, Error as E, InconsistentKeys};
    match e {
        E::InconsistentKeys(InconsistentKeys::KeyMismatch) => {
            "the private key does not match the certificate (it is not the key the certificate \
             was issued for): give the key file made together with this certificate"
                .into()
        }
        E::InvalidCertificate(c) => match c {
            C::Expired | C::ExpiredContext { .. } => {
                "the certificate has expired: renew it (its validity is in `openssl x509 -noout \
                 -dates -in FILE`)"
                    .into()
            }
            C::NotValidYet | C::NotValidYetContext { .. } => {
                "the certificate is not valid yet: check the clock, or its start date".into()
            }
            C::UnknownIssuer => "the certificate is signed by an authority this side does not \
                 trust (self-signed or a private CA): give that CA's certificate as the trusted \
                 CA (`upstream_tls.ca_file` for backends), or for a test with `unstick load`, \
                 pass --insecure"
                .into(),
            C::NotValidForName | C::NotValidForNameContext { .. } => format!(
                "the certificate does not cover the name connected to ({e}): connect by a name \
                 it lists, or issue one that lists this name"
            ),
            C::BadSignature => "the certificate's signature does not verify: the chain is \
                 wrong or corrupted"
                .into(),
            C::Revoked => "the certificate has been revoked: get a new one".into(),
            other if format!("{other:?}").contains("CaUsedAsEndEntity") => {
                "the certificate is a CA certificate (basicConstraints CA:TRUE) served as a \
                 server's own: clients refuse it; serve a certificate issued by that CA for the \
                 server's name instead"
                    .into()
            }
            _ => format!("invalid certificate: {e}"),
        },
        _ => e.to_string(),
    }
}

/// [`explain`] for an I/O error that carries a rustls error (as a TLS
/// connect's does); `None` for any other error.
pub fn explain_io(e: &io::Error) -> Option<String> {
    let inner = e.get_ref()?.downcast_ref::<rustls::Error>()?;
    Some(explain(inner))
}

/// The crypto provider: ring (aws-lc is kept out of the build).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Every certificate in a PEM file, in order (leaf first for a chain).
pub fn parse_certs(path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            path: path.to_owned(),
            message: format!("not a valid PEM certificate file: {e}"),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            path: path.to_owned(),
            message: "no `BEGIN CERTIFICATE` block found".into(),
        });
    }
    Ok(certs)
}

/// The first private key (PKCS#8, PKCS#1 or SEC1) in a PEM file.
pub fn parse_key(path: &Path, pem: &[u8]) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| TlsError::Pem {
        path: path.to_owned(),
        message: format!("no usable private key: {e}"),
    })
}

/// A chain and its key, checked to belong together.
fn certified_key(
    cert: &Path,
    cert_pem: &[u8],
    key: &Path,
    key_pem: &[u8],
    provider: &CryptoProvider,
) -> Result<CertifiedKey, TlsError> {
    let chain = parse_certs(cert, cert_pem)?;
    let private = parse_key(key, key_pem)?;
    CertifiedKey::from_der(chain, private, provider).map_err(|e| TlsError::Pair {
        cert: cert.to_owned(),
        key: key.to_owned(),
        message: explain(&e),
    })
}

// === impl CertResolver ===

/// The certificates a handshake may get: one per server name, and a default.
#[derive(Debug)]
struct CertSet {
    default: Arc<CertifiedKey>,
    /// Lower-case names; `*.example.com` entries match one label.
    by_name: HashMap<String, Arc<CertifiedKey>>,
}

impl CertSet {
    fn pick(&self, name: Option<&str>) -> Arc<CertifiedKey> {
        let Some(name) = name else {
            return self.default.clone();
        };
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        if let Some(k) = self.by_name.get(&name) {
            return k.clone();
        }
        if let Some((_, parent)) = name.split_once('.') {
            if let Some(k) = self.by_name.get(&format!("*.{parent}")) {
                return k.clone();
            }
        }
        self.default.clone()
    }
}

/// Picks the certificate for a handshake by SNI, from the set current now.
#[derive(Debug)]
pub struct CertResolver {
    set: ArcSwap<CertSet>,
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.set.load().pick(hello.server_name()))
    }
}

// === impl ServerCerts ===

/// What a reload did.
#[derive(Debug)]
pub enum Reload {
    /// The files are as they were.
    Unchanged,
    /// New certificates are in use for new connections.
    Reloaded,
    /// The files changed but could not be used; the old certificates stay.
    Failed(TlsError),
}

/// The listener's certificates, as configured, and the files they came from.
pub struct ServerCerts {
    config: Tls,
    resolver: Arc<CertResolver>,
    provider: Arc<CryptoProvider>,
    /// The file contents the current set (or the last failed attempt) was
    /// made from, so an unchanged file is not parsed, nor a bad one logged, twice.
    seen: Mutex<Vec<Vec<u8>>>,
}

impl ServerCerts {
    /// Loads every configured certificate; fails if any is missing or bad.
    pub fn load(config: &Tls) -> Result<ServerCerts, TlsError> {
        let provider = provider();
        let contents = Self::read_all(config)?;
        let set = Self::build(config, &contents, &provider)?;
        Ok(ServerCerts {
            config: config.clone(),
            resolver: Arc::new(CertResolver {
                set: ArcSwap::from_pointee(set),
            }),
            provider,
            seen: Mutex::new(contents),
        })
    }

    /// Every file in the configuration, in order: default cert and key, then
    /// each SNI entry's cert and key.
    fn paths(config: &Tls) -> Vec<&Path> {
        let mut out = vec![config.cert.as_path(), config.key.as_path()];
        for s in &config.sni {
            out.push(&s.cert);
            out.push(&s.key);
        }
        out
    }

    fn read_all(config: &Tls) -> Result<Vec<Vec<u8>>, TlsError> {
        Self::paths(config).into_iter().map(read).collect()
    }

    fn build(
        config: &Tls,
        contents: &[Vec<u8>],
        provider: &CryptoProvider,
    ) -> Result<CertSet, TlsError> {
        let default = Arc::new(certified_key(
            &config.cert,
            &contents[0],
            &config.key,
            &contents[1],
            provider,
        )?);
        let mut by_name = HashMap::new();
        for (i, s) in config.sni.iter().enumerate() {
            let key = Arc::new(certified_key(
                &s.cert,
                &contents[2 + 2 * i],
                &s.key,
                &contents[3 + 2 * i],
                provider,
            )?);
            for name in &s.names {
                by_name
                    .entry(name.trim_end_matches('.').to_ascii_lowercase())
                    .or_insert_with(|| key.clone());
            }
        }
        Ok(CertSet { default, by_name })
    }

    /// Re-reads the files. If they changed and are good, new connections get
    /// the new certificates; if not, the old ones stay in use.
    pub fn reload(&self) -> Reload {
        let contents = match Self::read_all(&self.config) {
            Ok(c) => c,
            Err(e) => return Reload::Failed(e),
        };
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if *seen == contents {
            return Reload::Unchanged;
        }
        let result = Self::build(&self.config, &contents, &self.provider);
        *seen = contents;
        match result {
            Ok(set) => {
                self.resolver.set.store(Arc::new(set));
                Reload::Reloaded
            }
            Err(e) => Reload::Failed(e),
        }
    }

    /// How often the files should be checked.
    pub fn reload_interval(&self) -> std::time::Duration {
        self.config.reload_interval
    }

    /// The listener's rustls config: this resolver, TLS 1.2/1.3, ALPN `h2`
    /// (if `http2`) then `http/1.1`.
    pub fn server_config(&self, http2: bool) -> Result<Arc<ServerConfig>, TlsError> {
        let mut config = ServerConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(VERSIONS)?
            .with_no_client_auth()
            .with_cert_resolver(self.resolver.clone());
        config.alpn_protocols = if http2 {
            vec![ALPN_H2.to_vec(), ALPN_HTTP11.to_vec()]
        } else {
            vec![ALPN_HTTP11.to_vec()]
        };
        Ok(Arc::new(config))
    }
}

// === upstream TLS ===

/// Client configs for TLS backends: one per ALPN protocol.
#[derive(Debug, Clone)]
pub struct ClientConfigs {
    /// For `https` backends: ALPN `http/1.1`.
    pub http1: Arc<ClientConfig>,
    /// For `h2` backends: ALPN `h2`.
    pub h2: Arc<ClientConfig>,
}

/// Trust anchors from a PEM bundle, or Mozilla's roots (webpki-roots) when none is given.
pub fn root_store(ca_file: Option<&Path>) -> Result<RootCertStore, TlsError> {
    let Some(path) = ca_file else {
        return Ok(RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        });
    };
    let certs = parse_certs(path, &read(path)?)?;
    let mut roots = RootCertStore::empty();
    for cert in certs {
        roots.add(cert).map_err(|e| TlsError::Pem {
            path: path.to_owned(),
            message: format!("not a usable CA certificate: {e}"),
        })?;
    }
    Ok(roots)
}

/// Builds the client configs for TLS backends: the CA file (or the built-in
/// roots), and the client certificate for mTLS if one is configured.
pub fn client_configs(u: &UpstreamTls) -> Result<ClientConfigs, TlsError> {
    let roots = Arc::new(root_store(u.ca_file.as_deref())?);
    let provider = provider();
    let client_auth = match (&u.client_cert, &u.client_key) {
        (Some(cert), Some(key)) => {
            let (cert_pem, key_pem) = (read(cert)?, read(key)?);
            // Checks that they belong together.
            certified_key(cert, &cert_pem, key, &key_pem, &provider)?;
            Some((parse_certs(cert, &cert_pem)?, parse_key(key, &key_pem)?))
        }
        _ => None,
    };
    let build = |alpn: &[u8]| -> Result<Arc<ClientConfig>, TlsError> {
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(VERSIONS)?
            .with_root_certificates(roots.clone());
        let mut config = match &client_auth {
            Some((chain, key)) => builder.with_client_auth_cert(chain.clone(), key.clone_key())?,
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![alpn.to_vec()];
        Ok(Arc::new(config))
    };
    Ok(ClientConfigs {
        http1: build(ALPN_HTTP11)?,
        h2: build(ALPN_H2)?,
    })
}

/// A server config with one certificate, for fake TLS backends in tests:
/// ALPN as given, and client certificates required if `client_ca` is set.
pub fn simple_server_config(
    cert: &Path,
    key: &Path,
    alpn: &[&[u8]],
    client_ca: Option<&Path>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = provider();
    let chain = parse_certs(cert, &read(cert)?)?;
    let private = parse_key(key, &read(key)?)?;
    let builder =
        ServerConfig::builder_with_provider(provider.clone()).with_protocol_versions(VERSIONS)?;
    let builder = match client_ca {
        Some(ca) => {
            let roots = Arc::new(root_store(Some(ca))?);
            let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider)
                .build()
                .map_err(|e| TlsError::Pem {
                    path: ca.to_owned(),
                    message: e.to_string(),
                })?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(chain, private)?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The certificate problems an operator meets read as words with a fix,
    /// never as rustls's enum names.
    #[test]
    fn tls_errors_are_explained_in_words() {
        use rustls::{CertificateError as C, Error as E, InconsistentKeys};
        let cases = [
            (
                E::InconsistentKeys(InconsistentKeys::KeyMismatch),
                "does not match the certificate",
            ),
            (E::InvalidCertificate(C::Expired), "has expired: renew it"),
            (E::InvalidCertificate(C::UnknownIssuer), "pass --insecure"),
            (
                E::InvalidCertificate(C::NotValidForName),
                "does not cover the name",
            ),
        ];
        for (e, words) in cases {
            let text = explain(&e);
            assert!(text.contains(words), "{e:?}: {text}");
            assert!(
                !text.contains("KeyMismatch") && !text.contains("UnknownIssuer"),
                "{text}"
            );
        }
        let io = io::Error::new(
            io::ErrorKind::InvalidData,
            E::InvalidCertificate(C::UnknownIssuer),
        );
        assert!(explain_io(&io).unwrap().contains("--insecure"));
        assert!(explain_io(&io::Error::other("plain")).is_none());
    }

    struct Dir(PathBuf);

    impl Dir {
        fn new(tag: &str) -> Dir {
            let d = std::env::temp_dir().join(format!("unstick-tls-{}-{tag}", std::process::id()));
            let _ = std::fs::remove_dir_all(&d);
            std::fs::create_dir_all(&d).unwrap();
            Dir(d)
        }

        /// A self-signed certificate for `names` in `STEM.pem`/`STEM.key`; its DER.
        fn cert(&self, stem: &str, names: &[&str]) -> (PathBuf, PathBuf, Vec<u8>) {
            let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
            let c = rcgen::generate_simple_self_signed(names).unwrap();
            let (cert, key) = (
                self.0.join(format!("{stem}.pem")),
                self.0.join(format!("{stem}.key")),
            );
            std::fs::write(&cert, c.cert.pem()).unwrap();
            std::fs::write(&key, c.signing_key.serialize_pem()).unwrap();
            (cert, key, c.cert.der().to_vec())
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn config(cert: &Path, key: &Path, sni: Vec<crate::config::SniCert>) -> Tls {
        Tls {
            cert: cert.to_owned(),
            key: key.to_owned(),
            sni,
            reload_interval: std::time::Duration::from_secs(1),
            redirect_listen: None,
        }
    }

    fn picked(certs: &ServerCerts, name: Option<&str>) -> Vec<u8> {
        certs.resolver.set.load().pick(name).cert[0].to_vec()
    }

    #[test]
    fn sni_picks_exact_then_wildcard_then_default() {
        let d = Dir::new("pick");
        let (dc, dk, default) = d.cert("default", &["localhost"]);
        let (ac, ak, api) = d.cert("api", &["api.test"]);
        let (wc, wk, wild) = d.cert("wild", &["*.wild.test"]);
        let sni = vec![
            crate::config::SniCert {
                names: vec!["api.test".into()],
                cert: ac,
                key: ak,
            },
            crate::config::SniCert {
                names: vec!["*.wild.test".into()],
                cert: wc,
                key: wk,
            },
        ];
        let certs = ServerCerts::load(&config(&dc, &dk, sni)).unwrap();
        assert_eq!(picked(&certs, Some("api.test")), api);
        assert_eq!(picked(&certs, Some("API.Test.")), api);
        assert_eq!(picked(&certs, Some("x.wild.test")), wild);
        assert_eq!(
            picked(&certs, Some("x.y.wild.test")),
            default,
            "a wildcard is one label"
        );
        assert_eq!(picked(&certs, Some("other.test")), default);
        assert_eq!(picked(&certs, None), default);
    }

    #[test]
    fn reload_swaps_only_on_a_good_change() {
        let d = Dir::new("reload");
        let (c, k, first) = d.cert("server", &["localhost"]);
        let certs = ServerCerts::load(&config(&c, &k, Vec::new())).unwrap();
        assert!(matches!(certs.reload(), Reload::Unchanged));
        let (_, _, second) = d.cert("server", &["localhost"]);
        assert_ne!(first, second);
        assert!(matches!(certs.reload(), Reload::Reloaded));
        assert_eq!(picked(&certs, None), second);
        // A key that does not match the certificate: refused, the old pair stays.
        let (_, other_key, _) = d.cert("other", &["localhost"]);
        std::fs::copy(&other_key, &k).unwrap();
        match certs.reload() {
            Reload::Failed(e) => assert!(e.to_string().contains("server.key"), "{e}"),
            r => panic!("expected a failure, got {r:?}"),
        }
        assert_eq!(picked(&certs, None), second);
        // The same bad files are not reported twice.
        assert!(matches!(certs.reload(), Reload::Unchanged));
    }

    #[test]
    fn missing_and_bad_files_are_clear_errors() {
        let d = Dir::new("bad");
        let bad = d.0.join("bad.pem");
        std::fs::write(&bad, "not pem at all").unwrap();
        let err = ServerCerts::load(&config(&bad, &d.0.join("missing.pem"), Vec::new()))
            .err()
            .expect("fails")
            .to_string();
        assert!(err.contains("missing.pem"), "{err}");
        let err = ServerCerts::load(&config(&bad, &bad, Vec::new()))
            .err()
            .expect("fails")
            .to_string();
        assert!(err.contains("BEGIN CERTIFICATE"), "{err}");
        let err = root_store(Some(&bad)).expect_err("fails").to_string();
        assert!(err.contains("bad.pem"), "{err}");
    }

    #[test]
    fn client_configs_offer_one_alpn_each_and_default_roots_exist() {
        assert!(!root_store(None).unwrap().is_empty());
        let c = client_configs(&UpstreamTls {
            ca_file: None,
            client_cert: None,
            client_key: None,
        })
        .unwrap();
        assert_eq!(c.http1.alpn_protocols, vec![ALPN_HTTP11.to_vec()]);
        assert_eq!(c.h2.alpn_protocols, vec![ALPN_H2.to_vec()]);
    }
}
