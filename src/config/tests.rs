//! Unit tests for config loading: defaults, overrides, and error locations.

use super::*;
use std::io::Write;

fn write(text: &str) -> tempfile_path::TempPath {
    tempfile_path::TempPath::new(text)
}

/// A tiny self-deleting temp file, so the config tests need no extra crate.
mod tempfile_path {
    use std::path::{Path, PathBuf};
    use std::sync::atomic::{AtomicUsize, Ordering};

    pub struct TempPath(PathBuf);
    static N: AtomicUsize = AtomicUsize::new(0);

    impl TempPath {
        pub fn new(text: &str) -> TempPath {
            let n = N.fetch_add(1, Ordering::Relaxed);
            let p = std::env::temp_dir().join(format!(
                "unstick-config-test-{}-{n}.toml",
                std::process::id()
            ));
            let mut f = std::fs::File::create(&p).unwrap();
            super::Write::write_all(&mut f, text.as_bytes()).unwrap();
            TempPath(p)
        }
        pub fn path(&self) -> &Path {
            &self.0
        }
    }
    impl Drop for TempPath {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}

fn load(text: &str) -> Result<Config, ConfigError> {
    let f = write(text);
    Config::load(Some(f.path()), &[])
}

#[test]
fn defaults_are_valid() {
    let c = Config::defaults();
    assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
    assert_eq!(c.admin.unwrap().to_string(), "127.0.0.1:8484");
    assert_eq!(c.algorithm, Algorithm::RoundRobin);
    assert_eq!(c.retries.max_per_request, 2);
    assert_eq!(c.retries.replay_buffer, 64 * 1024);
    assert_eq!(c.retries.response_buffer, 64 * 1024);
    assert_eq!(c.retries.response_hold, Duration::from_millis(20));
}

#[test]
fn response_holding_is_bounded() {
    let c = load("[retries]\nresponse_buffer = \"0\"\nresponse_hold = \"50ms\"\n").unwrap();
    assert_eq!(c.retries.response_buffer, 0);
    assert_eq!(c.retries.response_hold, Duration::from_millis(50));
    let e = load("[retries]\nresponse_buffer = \"17MiB\"\n").unwrap_err();
    assert_eq!(e.key, "retries.response_buffer");
    for hold in ["0s", "2s", "soon"] {
        let e = load(&format!("[retries]\nresponse_hold = \"{hold}\"\n")).unwrap_err();
        assert_eq!(e.key, "retries.response_hold", "{hold}");
    }
}

#[test]
fn admin_must_not_share_the_proxy_address() {
    let e = load("listen = \"127.0.0.1:8000\"\nadmin = \"127.0.0.1:8000\"\n").unwrap_err();
    assert_eq!(e.key, "admin");
    // Port 0 means any free port, so both listeners may ask for it.
    let c = load("listen = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n").unwrap();
    assert_eq!(c.admin, Some(c.listen));
}

#[test]
fn backends_in_both_forms() {
    let c = load(
        r#"
backends = ["127.0.0.1:3001", "h2c://127.0.0.1:3002=3", { address = "app:80", weight = 2, protocol = "https" }]
"#,
    )
    .unwrap();
    assert_eq!(c.backends.len(), 3);
    assert_eq!(c.backends[1].weight, 3);
    assert_eq!(c.backends[1].protocol, UpstreamProtocol::H2c);
    assert_eq!(c.backends[2].address, "app:80");
    assert_eq!(c.backends[2].protocol, UpstreamProtocol::Https);
}

#[test]
fn unknown_key_names_file_line_and_key() {
    let e = load("listen = \"127.0.0.1:1\"\n\n[timeouts]\nconect = \"1s\"\n").unwrap_err();
    assert_eq!(e.key, "timeouts.conect");
    assert!(
        matches!(e.origin, Origin::File { line: Some(4), .. }),
        "{e}"
    );
    assert!(e.message.contains("unknown field"), "{e}");
}

#[test]
fn bad_value_names_its_line() {
    let e = load("[timeouts]\n\nconnect = \"fast\"\n").unwrap_err();
    assert_eq!(e.key, "timeouts.connect");
    assert!(
        matches!(e.origin, Origin::File { line: Some(3), .. }),
        "{e}"
    );

    let e = load("backends = [\n  \"127.0.0.1:1\",\n  \"nope\",\n]\n").unwrap_err();
    assert_eq!(e.key, "backends[1]");
    assert!(
        matches!(e.origin, Origin::File { line: Some(3), .. }),
        "{e}"
    );

    let e = load("[[backends]]\naddress = \"127.0.0.1:1\"\n[[backends]]\naddress = \"127.0.0.1:2\"\nweight = 0\n")
        .unwrap_err();
    assert_eq!(e.key, "backends[1].weight");
    assert!(
        matches!(e.origin, Origin::File { line: Some(5), .. }),
        "{e}"
    );
}

#[test]
fn wrong_type_names_key() {
    let e = load("[retries]\nmax_per_request = \"two\"\n").unwrap_err();
    assert_eq!(e.key, "retries.max_per_request");
    assert!(
        matches!(e.origin, Origin::File { line: Some(2), .. }),
        "{e}"
    );
}

#[test]
fn syntax_error_names_line() {
    let e = load("listen = \"127.0.0.1:1\"\nadmin = \n").unwrap_err();
    assert!(
        matches!(e.origin, Origin::File { line: Some(2), .. }),
        "{e}"
    );
}

#[test]
fn sticky_keys_are_refused_with_explanation() {
    for text in [
        "sticky = true\n",
        "[affinity]\ncookie = \"x\"\n",
        "[[backends]]\naddress = \"127.0.0.1:1\"\nip_hash = true\n",
        "algorithm = \"ip-hash\"\n",
    ] {
        let e = load(text).unwrap_err();
        assert!(e.message.contains("Redis"), "{text}: {e}");
        assert!(
            matches!(e.origin, Origin::File { line: Some(_), .. }),
            "{e}"
        );
    }
}

#[test]
fn env_and_flag_precedence() {
    let f = write("listen = \"127.0.0.1:1000\"\nalgorithm = \"least-connections\"\n");
    let env = env_overrides(|k| match k {
        "UNSTICK_LISTEN" => Some("127.0.0.1:2000".into()),
        "UNSTICK_BACKENDS" => Some("127.0.0.1:3001, 127.0.0.1:3002=2".into()),
        "UNSTICK_RETRIES_ENABLED" => Some("false".into()),
        _ => None,
    });
    let mut all = env.clone();
    all.push(Override {
        origin: Origin::Flag("--listen".into()),
        key: "listen".into(),
        value: toml::Value::String("127.0.0.1:3000".into()),
    });
    let c = Config::load(Some(f.path()), &env).unwrap();
    assert_eq!(c.listen.to_string(), "127.0.0.1:2000");
    assert_eq!(c.algorithm, Algorithm::LeastConnections);
    assert_eq!(c.backends.len(), 2);
    assert!(!c.retries.enabled);
    let c = Config::load(Some(f.path()), &all).unwrap();
    assert_eq!(c.listen.to_string(), "127.0.0.1:3000");
}

#[test]
fn env_error_names_the_variable() {
    let env = env_overrides(|k| (k == "UNSTICK_TIMEOUTS_CONNECT").then(|| "soon".into()));
    let e = Config::load(None, &env).unwrap_err();
    assert_eq!(e.origin, Origin::Env("UNSTICK_TIMEOUTS_CONNECT".into()));
    assert_eq!(e.key, "timeouts.connect");
}

#[test]
fn every_key_has_a_distinct_env_var() {
    let mut names: Vec<_> = KEYS.iter().map(|k| k.env_var()).collect();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), KEYS.len());
}

#[test]
fn effective_config_round_trips() {
    let f = write("backends = [\"127.0.0.1:3001\"]\n[health.active]\nenabled = true\n");
    let (raw, config) = RawConfig::load(Some(f.path()), &[]).unwrap();
    let printed = raw.to_toml();
    let g = write(&printed);
    assert_eq!(Config::load(Some(g.path()), &[]).unwrap(), config);
}

#[test]
fn durations_and_sizes() {
    assert_eq!(parse_duration("250ms").unwrap().as_millis(), 250);
    assert_eq!(parse_duration("1.5s").unwrap().as_millis(), 1500);
    assert_eq!(parse_duration("2m").unwrap().as_secs(), 120);
    assert!(parse_duration("5").is_err());
    assert!(parse_duration("5 parsecs").is_err());
    assert_eq!(parse_size("64KiB").unwrap(), 65536);
    assert_eq!(parse_size("1000").unwrap(), 1000);
    assert!(parse_size("lots").is_err());
}

#[test]
fn admin_and_listen_may_both_ask_for_any_free_port() {
    load("listen = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n").unwrap();
    let e = load("listen = \"127.0.0.1:8000\"\nadmin = \"127.0.0.1:8000\"\n").unwrap_err();
    assert_eq!(e.key, "admin");
}

/// Every leaf key of the raw configuration (optional sections filled in),
/// as dotted paths.
fn raw_leaf_keys() -> Vec<String> {
    fn walk(table: &toml::Table, prefix: &str, out: &mut Vec<String>) {
        for (k, v) in table {
            let path = if prefix.is_empty() {
                k.clone()
            } else {
                format!("{prefix}.{k}")
            };
            match v {
                toml::Value::Table(t) => walk(t, &path, out),
                _ => out.push(path),
            }
        }
    }
    let mut raw = RawConfig {
        tls: Some(raw::RawTls {
            redirect_listen: Some("127.0.0.1:8081".into()),
            ..Default::default()
        }),
        ..Default::default()
    };
    raw.upstream_tls.ca_file = Some("ca.pem".into());
    raw.upstream_tls.client_cert = Some("c.pem".into());
    raw.upstream_tls.client_key = Some("k.pem".into());
    let table: toml::Table = raw.to_toml().parse().unwrap();
    let mut out = Vec::new();
    walk(&table, "", &mut out);
    out.sort();
    out
}

#[test]
fn every_config_key_has_an_environment_variable() {
    let mut listed: Vec<String> = KEYS.iter().map(|k| k.path.to_owned()).collect();
    listed.sort();
    assert_eq!(
        raw_leaf_keys(),
        listed,
        "KEYS (config/keys.rs) and RawConfig disagree"
    );
}

#[test]
fn every_key_default_matches_the_built_in_one() {
    // What the environment table says is the default is what a config with
    // nothing set gets: setting each key's documented default changes nothing.
    let defaults = Config::defaults();
    for k in KEYS.iter().filter(|k| !k.default.is_empty()) {
        if k.path.starts_with("tls.") {
            continue; // setting one tls key without cert/key is an error by design
        }
        let env = env_overrides(|name| (name == k.env_var()).then(|| k.default.to_owned()));
        let c = Config::load(None, &env).unwrap_or_else(|e| panic!("{}: {e}", k.path));
        assert_eq!(c, defaults, "{}: documented default differs", k.path);
    }
}

#[test]
fn tls_sni_from_the_environment() {
    let env = env_overrides(|k| {
        match k {
        "UNSTICK_TLS_CERT" => Some("a.pem".into()),
        "UNSTICK_TLS_KEY" => Some("a.key".into()),
        "UNSTICK_TLS_SNI" => Some(
            r#"[{ names = ["API.example.com", "www.example.com"], cert = "b.pem", key = "b.key" }]"#
                .into(),
        ),
        _ => None,
    }
    });
    let c = Config::load(None, &env).unwrap();
    let tls = c.tls.unwrap();
    assert_eq!(tls.sni.len(), 1);
    assert_eq!(tls.sni[0].names, ["api.example.com", "www.example.com"]);
    assert_eq!(tls.sni[0].cert, std::path::PathBuf::from("b.pem"));

    let env = env_overrides(|k| match k {
        "UNSTICK_TLS_CERT" => Some("a.pem".into()),
        "UNSTICK_TLS_KEY" => Some("a.key".into()),
        "UNSTICK_TLS_SNI" => Some("api.example.com=b.pem".into()),
        _ => None,
    });
    let e = Config::load(None, &env).unwrap_err();
    assert_eq!(e.origin, Origin::Env("UNSTICK_TLS_SNI".into()), "{e}");
}

#[test]
fn reload_watch_from_the_environment() {
    assert!(Config::defaults().reload.watch);
    let env = env_overrides(|k| (k == "UNSTICK_RELOAD_WATCH").then(|| "off".into()));
    assert!(!Config::load(None, &env).unwrap().reload.watch);
}

#[test]
fn markdown_table_has_a_row_per_key() {
    let table = markdown_table();
    assert_eq!(table.lines().count(), KEYS.len() + 2);
    for k in KEYS {
        assert!(table.contains(&format!("| `{}` | `{}` |", k.path, k.env_var())));
    }
}
