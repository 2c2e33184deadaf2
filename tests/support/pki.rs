//! A throwaway certificate authority for TLS tests: leaf certificates written to files, a `[tls]` config, TLS clients that trust it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use unstick::config::{SniCert, Tls};
use unstick::testkit::client::{self, Conn};

use super::Files;

/// A throwaway CA and a folder for the files it issues (removed on drop).
pub struct Pki {
    files: Files,
    ca: Issuer<'static, KeyPair>,
    /// The CA certificate (PEM), for clients and backends to trust.
    pub ca_file: PathBuf,
}

/// A certificate and key written to files, and the certificate's DER.
pub struct Issued {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub der: Vec<u8>,
}

impl Pki {
    /// A new CA named after `tag`.
    pub fn new(tag: &str) -> Pki {
        let files = Files::new();
        let mut params = CertificateParams::new(Vec::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, format!("unstick test CA {tag}"));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let ca_file = files.path("ca.pem");
        std::fs::write(&ca_file, cert.pem()).unwrap();
        Pki {
            files,
            ca: Issuer::new(params, key),
            ca_file,
        }
    }

    /// Issues a server leaf for `names` into `STEM.pem` / `STEM.key`
    /// (overwriting).
    pub fn server(&self, stem: &str, names: &[&str]) -> Issued {
        self.issue(stem, names, false)
    }

    /// Issues a leaf for `names` into `STEM.pem` / `STEM.key` (overwriting),
    /// for client authentication if `client`.
    pub fn issue(&self, stem: &str, names: &[&str], client: bool) -> Issued {
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.distinguished_name.push(
            DnType::CommonName,
            names.first().copied().unwrap_or("client"),
        );
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![if client {
            ExtendedKeyUsagePurpose::ClientAuth
        } else {
            ExtendedKeyUsagePurpose::ServerAuth
        }];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.ca).unwrap();
        let issued = Issued {
            cert: self.path(&format!("{stem}.pem")),
            key: self.path(&format!("{stem}.key")),
            der: cert.der().to_vec(),
        };
        std::fs::write(&issued.key, key.serialize_pem()).unwrap();
        std::fs::write(&issued.cert, cert.pem()).unwrap();
        issued
    }

    /// The path of `name` in the CA's folder.
    pub fn path(&self, name: &str) -> PathBuf {
        self.files.path(name)
    }

    /// A TLS connection to `addr` trusting this CA, with SNI `name`,
    /// offering `alpn` (panics if the handshake fails).
    pub async fn connect(&self, addr: SocketAddr, name: &str, alpn: &[&[u8]]) -> TlsClient {
        client::tls(addr, name, &self.ca_file, alpn)
            .await
            .unwrap_or_else(|e| panic!("TLS to {addr} as {name}: {e}"))
    }

    /// An HTTP/1.1 connection over TLS (ALPN `http/1.1`) to `addr` as
    /// `name`, and the leaf certificate the server presented.
    pub async fn h1(&self, addr: SocketAddr, name: &str) -> (Vec<u8>, Conn) {
        let tls = self.connect(addr, name, &[unstick::tls::ALPN_HTTP11]).await;
        let der = leaf(&tls);
        (der, Conn::handshake(tls, name).await.unwrap())
    }
}

/// A client's TLS stream over TCP.
pub type TlsClient = TlsStream<TcpStream>;

/// A `[tls]` section serving `cert`, with `sni` entries, reloading hourly.
pub fn tls_config(cert: &Issued, sni: Vec<SniCert>) -> Tls {
    Tls {
        cert: cert.cert.clone(),
        key: cert.key.clone(),
        sni,
        reload_interval: Duration::from_secs(3600),
        redirect_listen: None,
    }
}

/// An SNI entry serving `cert` for `names`.
pub fn sni(names: &[&str], cert: &Issued) -> SniCert {
    SniCert {
        names: names.iter().map(|n| n.to_string()).collect(),
        cert: cert.cert.clone(),
        key: cert.key.clone(),
    }
}

/// The leaf certificate the server presented.
pub fn leaf<T>(tls: &TlsStream<T>) -> Vec<u8> {
    tls.get_ref()
        .1
        .peer_certificates()
        .expect("server certificate")[0]
        .to_vec()
}

/// The protocol ALPN settled on, if any.
pub fn alpn<T>(tls: &TlsStream<T>) -> Option<Vec<u8>> {
    tls.get_ref().1.alpn_protocol().map(|p| p.to_vec())
}
