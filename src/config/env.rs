//! `UNSTICK_*` environment variables that are no configuration key's: a misspelled key's variable is an error naming the closest one; other tools' variables are left alone.
//!
//! A variable is checked when it looks meant for unstick: its name starts
//! with a config table's prefix (`UNSTICK_TIMEOUTS_`, `UNSTICK_TLS_`, ...) or
//! is within two edits of a known variable. Anything else (`UNSTICK_TEST_REDIS`,
//! `UNSTICK_IMAGE`: variables of scripts, tests and images) is not unstick's
//! business. `UNSTICK_ENV_IGNORE` lists more names (or `PREFIX*` patterns)
//! never checked, for a variable of another tool that happens to look like one.

use super::{ConfigError, Origin, KEYS};

/// Variables unstick reads that are not configuration keys.
pub const OTHER_VARIABLES: &[(&str, &str)] = &[
    ("UNSTICK_CONFIG", "the config file (as --config)"),
    ("UNSTICK_LOG_FORMAT", "diagnostics format (as --log-format)"),
    ("UNSTICK_LOG_LEVEL", "diagnostics level (as --log-level)"),
    (
        "UNSTICK_ENV_IGNORE",
        "comma-separated UNSTICK_* names or PREFIX* patterns never checked",
    ),
    ("UNSTICK_DEMO_STORE", "the demo's store (as demo --store)"),
];

/// Every variable name unstick knows: each key's, then [`OTHER_VARIABLES`].
fn known() -> Vec<String> {
    KEYS.iter()
        .map(|k| k.env_var())
        .chain(OTHER_VARIABLES.iter().map(|(n, _)| (*n).to_owned()))
        .collect()
}

/// The prefixes of the config tables' variables, e.g. `UNSTICK_TIMEOUTS_`.
fn table_prefixes() -> Vec<String> {
    let mut out: Vec<String> = KEYS
        .iter()
        .filter_map(|k| k.path.split_once('.'))
        .map(|(table, _)| format!("UNSTICK_{}_", table.to_ascii_uppercase()))
        .collect();
    out.dedup();
    out
}

/// Levenshtein distance (names are short ASCII).
fn distance(a: &str, b: &str) -> usize {
    let b = b.as_bytes();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.bytes().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            let next = (row[j + 1] + 1).min(row[j] + 1).min(prev + cost);
            prev = row[j + 1];
            row[j + 1] = next;
        }
    }
    row[b.len()]
}

/// True if `name` is matched by an `UNSTICK_ENV_IGNORE` entry.
fn ignored(name: &str, ignore: &str) -> bool {
    ignore
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .any(|p| match p.strip_suffix('*') {
            Some(prefix) => name.starts_with(prefix),
            None => name == p,
        })
}

/// The first variable of `names` that looks meant for unstick but is no
/// variable it knows, as an error naming the closest known one.
/// `ignore` is the value of `UNSTICK_ENV_IGNORE`.
pub fn check_names<'a>(
    names: impl IntoIterator<Item = &'a str>,
    ignore: &str,
) -> Result<(), ConfigError> {
    let known = known();
    let prefixes = table_prefixes();
    for name in names {
        if !name.starts_with("UNSTICK_") || known.iter().any(|k| k == name) {
            continue;
        }
        if ignored(name, ignore) {
            continue;
        }
        let (closest, d) = known
            .iter()
            .map(|k| (k, distance(name, k)))
            .min_by_key(|(_, d)| *d)
            .expect("KEYS is not empty");
        let in_table = prefixes.iter().any(|p| name.starts_with(p.as_str()));
        if !in_table && d > 2 {
            continue;
        }
        return Err(ConfigError {
            origin: Origin::Env(name.to_owned()),
            key: String::new(),
            message: format!(
                "no such variable: did you mean {closest}? (a variable meant for another \
                 program can be listed in UNSTICK_ENV_IGNORE, e.g. UNSTICK_ENV_IGNORE={name})"
            ),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_misspelled_key_names_the_closest_variable() {
        let e = check_names(["UNSTICK_TIMEOUTS_CONECT"], "").unwrap_err();
        assert_eq!(e.origin, Origin::Env("UNSTICK_TIMEOUTS_CONECT".into()));
        assert!(
            e.message.contains("did you mean UNSTICK_TIMEOUTS_CONNECT?"),
            "{}",
            e.message
        );
        // A top-level key, one edit away.
        let e = check_names(["UNSTICK_LISTN"], "").unwrap_err();
        assert!(e.message.contains("UNSTICK_LISTEN?"), "{}", e.message);
        // Far from every key, but in a table: still an error.
        let e = check_names(["UNSTICK_TLS_CERTIFICATE_CHAIN"], "").unwrap_err();
        assert!(e.message.contains("did you mean"), "{}", e.message);
    }

    #[test]
    fn known_and_foreign_variables_pass() {
        let fine = [
            "UNSTICK_TIMEOUTS_CONNECT",
            "UNSTICK_CONFIG",
            "UNSTICK_DEMO_STORE",
            "UNSTICK_TEST_REDIS",
            "UNSTICK_TEST_REDIS_IMAGE",
            "UNSTICK_IMAGE",
            "UNSTICK_DRAIN",
            "UNSTICK_BIN",
            "UNSTICK_ADMIN_PUBLISH",
            "UNSTICK_REQUIRE_BROWSER",
            "PATH",
        ];
        check_names(fine, "").unwrap();
    }

    #[test]
    fn the_ignore_list_exempts_names_and_prefixes() {
        check_names(["UNSTICK_TLS_BUNDLE_PATH"], "UNSTICK_TLS_BUNDLE*").unwrap();
        check_names(["UNSTICK_LISTN"], "UNSTICK_OTHER, UNSTICK_LISTN").unwrap();
        assert!(check_names(["UNSTICK_LISTN"], "UNSTICK_LIST").is_err());
    }
}
