//! The URL a load run aims at: scheme, host, port, path; parsed once, resolved once.

use std::fmt;
use std::io;
use std::net::SocketAddr;

use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderValue, Uri};

/// Why a URL cannot be a load target.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{url}` is not a usable URL: {reason}")]
pub struct TargetError {
    pub url: String,
    pub reason: String,
}

/// A parsed `http://` or `https://` URL.
#[derive(Debug, Clone)]
pub struct Target {
    url: String,
    tls: bool,
    /// Host without brackets (an IPv6 literal is bare here).
    host: String,
    port: u16,
    /// `host[:port]` as written: the `Host` header and the HTTP/2 `:authority`.
    authority: Authority,
    path: PathAndQuery,
}

// === impl Target ===

impl Target {
    /// Parses `http[s]://host[:port][/path][?query]`.
    pub fn parse(url: &str) -> Result<Target, TargetError> {
        let err = |reason: &str| TargetError {
            url: url.to_owned(),
            reason: reason.to_owned(),
        };
        let uri: Uri = url
            .trim()
            .parse()
            .map_err(|e: http::uri::InvalidUri| err(&e.to_string()))?;
        let tls = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            Some(other) => return Err(err(&format!("scheme `{other}` is not http or https"))),
            None => return Err(err("it has no scheme: write e.g. http://127.0.0.1:8080/")),
        };
        let authority = uri
            .authority()
            .cloned()
            .ok_or_else(|| err("it has no host"))?;
        if authority.as_str().contains('@') {
            return Err(err(
                "credentials in the URL are not supported: use --header 'Authorization: ...'",
            ));
        }
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        if host.is_empty() {
            return Err(err("it has no host"));
        }
        // What follows the host (brackets included for IPv6): empty or `:PORT`.
        let port = match &authority.as_str()[authority.host().len()..] {
            "" if tls => 443,
            "" => 80,
            p => match p[1..].parse::<u16>() {
                Ok(0) => return Err(err("port 0 cannot be connected to")),
                Ok(p) => p,
                Err(_) => return Err(err(&format!("`{}` is not a port", &p[1..]))),
            },
        };
        let path = uri
            .path_and_query()
            .cloned()
            .filter(|p| !p.as_str().is_empty())
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        Ok(Target {
            url: url.trim().to_owned(),
            tls,
            host: host.to_owned(),
            port,
            authority,
            path,
        })
    }

    /// The URL as given.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Whether the scheme is `https`.
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// The host name or IP literal (no brackets).
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The port (the scheme's default if the URL has none).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The URL's path and query (`/` if it has none).
    pub fn path(&self) -> &PathAndQuery {
        &self.path
    }

    /// The `Host` header value.
    pub fn host_header(&self) -> HeaderValue {
        HeaderValue::from_str(self.authority.as_str())
            .expect("an authority is a valid header value")
    }

    /// `path` in the form a request needs: origin form (`/p?q`) for HTTP/1,
    /// absolute form (`http://host/p?q`) for HTTP/2, whose `:scheme` and
    /// `:authority` come from the URI.
    pub fn request_uri(&self, path: &PathAndQuery, http2: bool) -> Uri {
        let mut parts = http::uri::Parts::default();
        if http2 {
            parts.scheme = Some(if self.tls {
                Scheme::HTTPS
            } else {
                Scheme::HTTP
            });
            parts.authority = Some(self.authority.clone());
        }
        parts.path_and_query = Some(path.clone());
        Uri::from_parts(parts).expect("scheme, authority and path make a URI")
    }

    /// Resolves the host to one address (the first the resolver gives;
    /// see [`crate::dns`]).
    pub async fn resolve(&self) -> io::Result<SocketAddr> {
        crate::dns::Resolver::system()
            .lookup_one(&self.host, self.port)
            .await
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.url)
    }
}

impl std::str::FromStr for Target {
    type Err = TargetError;

    fn from_str(s: &str) -> Result<Target, TargetError> {
        Target::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_parts() {
        let t = Target::parse("http://127.0.0.1:8080/a/b?c=1").unwrap();
        assert!(!t.is_tls());
        assert_eq!((t.host(), t.port()), ("127.0.0.1", 8080));
        assert_eq!(t.path().as_str(), "/a/b?c=1");
        assert_eq!(t.host_header(), "127.0.0.1:8080");
        assert_eq!(t.request_uri(t.path(), false).to_string(), "/a/b?c=1");
        assert_eq!(
            t.request_uri(t.path(), true).to_string(),
            "http://127.0.0.1:8080/a/b?c=1"
        );
    }

    #[test]
    fn defaults_port_and_path() {
        let t = Target::parse("https://example.com").unwrap();
        assert!(t.is_tls());
        assert_eq!(t.port(), 443);
        assert_eq!(t.path().as_str(), "/");
        assert_eq!(t.host_header(), "example.com");
        let t = Target::parse("http://[::1]:9000/").unwrap();
        assert_eq!((t.host(), t.port()), ("::1", 9000));
    }

    #[test]
    fn refuses_what_it_cannot_use() {
        for bad in [
            "",
            "127.0.0.1:8080",
            "ftp://example.com/",
            "http://",
            "http://u:p@example.com/",
            "http://example.com:0/",
            "http://exa mple.com/",
            "http://example.com:99999/",
            "http://example.com:/",
            "http://[::1]:x/",
            "not a url",
        ] {
            assert!(Target::parse(bad).is_err(), "{bad:?} was accepted");
        }
    }
}
