//! `examples/portcullis.toml` is the configuration reference (issue 11, item 5): it must list
//! every key the parser accepts, each with its default and one line of meaning, and nothing
//! else. The keys and defaults come from the code (`portcullis::config::reference::schema`),
//! so a key added to a config struct without its line here fails this test.
//!
//! The example's format, which this test reads line by line:
//! - `key = value   # meaning` for a key that is set, `# key = value   # meaning` for one shown
//!   but left unset (optional keys, alternatives such as `secret`/`secret_file`);
//! - tables as `[section]`, `[[routes]]`, `[routes.authorization]`, also commented out;
//! - a key with a default shows exactly that default (compared through the key's type, so
//!   `"7d"` and `"168h"` are equal); a key without one shows any value the parser takes;
//! - an enum key's meaning names every accepted value (`memory | redis | cookie`).

use std::collections::BTreeMap;

use figment::{
    Figment,
    providers::{Format, Toml},
};
use portcullis::config::{
    Config,
    reference::{SchemaKey, Shape, read_value, schema},
};

const EXAMPLE: &str = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/portcullis.toml"));

/// One key or table line of the example.
#[derive(Debug)]
struct Line {
    number: usize,
    /// Schema path: `refresh.lease_ttl`, `routes[].bearer`, `routes` for `[[routes]]`.
    path: String,
    /// The TOML text right of `=`; `None` for a table header.
    value: Option<String>,
    comment: String,
}

/// Whether `text` is one TOML value.
fn is_value(text: &str) -> bool {
    !text.is_empty() && Figment::from(Toml::string(&format!("v = {text}"))).extract_inner::<serde_json::Value>("v").is_ok()
}

fn bare_key(text: &str) -> bool {
    !text.is_empty() && text.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// `[a.b]` → `a.b` with `[]` after each array of tables (`routes.authorization` → `routes[].authorization`).
fn table_path(name: &str, schema: &[SchemaKey]) -> String {
    let mut path = String::new();
    for segment in name.split('.') {
        if !path.is_empty() {
            path.push('.');
        }
        path.push_str(segment);
        if schema.iter().any(|k| k.path == path && k.shape == Shape::TableArray) {
            path.push_str("[]");
        }
    }
    path
}

/// Reads the example's key and table lines; lines it cannot read as either are prose when
/// commented out and problems otherwise.
fn read_lines(text: &str, schema: &[SchemaKey], problems: &mut Vec<String>) -> Vec<Line> {
    let mut lines = Vec::new();
    let mut table = String::new();
    for (i, raw) in text.lines().enumerate() {
        let number = i + 1;
        let trimmed = raw.trim();
        let (body, commented_out) = match trimmed.strip_prefix('#') {
            Some(rest) => (rest.trim_start(), true),
            None => (trimmed, false),
        };
        if body.is_empty() || (!commented_out && body.starts_with('#')) {
            continue;
        }
        if let Some(header) = body.strip_prefix('[') {
            let (header, array) = match header.strip_prefix('[') {
                Some(h) => (h, true),
                None => (header, false),
            };
            let close = if array { "]]" } else { "]" };
            let Some((name, rest)) = header.split_once(close) else {
                if !commented_out {
                    problems.push(format!("line {number}: cannot read the table header {trimmed:?}"));
                }
                continue;
            };
            let rest = rest.trim();
            if !name.split('.').all(bare_key) || !(rest.is_empty() || rest.starts_with('#')) {
                if !commented_out {
                    problems.push(format!("line {number}: cannot read the table header {trimmed:?}"));
                }
                continue;
            }
            let path = table_path(name, schema);
            table = path.clone();
            let path = if array { path.trim_end_matches("[]").to_string() } else { path };
            lines.push(Line { number, path, value: None, comment: rest.trim_start_matches('#').trim().to_string() });
            continue;
        }
        let Some((key, right)) = body.split_once('=') else {
            if !commented_out {
                problems.push(format!("line {number}: neither a key nor a table: {trimmed:?}"));
            }
            continue;
        };
        let key = key.trim();
        // The value ends at the first `#` after which what precedes is one TOML value.
        let split = right.match_indices('#').map(|(at, _)| at).chain([right.len()]).find(|&at| is_value(right[..at].trim()));
        let (true, Some(at)) = (bare_key(key), split) else {
            if !commented_out {
                problems.push(format!("line {number}: cannot read {trimmed:?} as `key = value  # meaning`"));
            }
            continue;
        };
        let path = if table.is_empty() { key.to_string() } else { format!("{table}.{key}") };
        lines.push(Line {
            number,
            path,
            value: Some(right[..at].trim().to_string()),
            comment: right[at..].trim_start_matches('#').trim().to_string(),
        });
    }
    lines
}

/// Every way `text` fails to be the reference for `schema`.
fn check(text: &str, schema: &[SchemaKey]) -> Vec<String> {
    let mut problems = Vec::new();
    let lines = read_lines(text, schema, &mut problems);
    let keys: BTreeMap<&str, &SchemaKey> = schema.iter().map(|k| (k.path.as_str(), k)).collect();
    let is_map = |path: &str| keys.get(path).is_some_and(|k| k.shape == Shape::Map);

    for line in &lines {
        // Entries of a map table (`[oidc.extra_auth_params]`) are the user's, not keys.
        if line.path.rsplit_once('.').is_some_and(|(table, _)| is_map(table)) {
            continue;
        }
        let Some(key) = keys.get(line.path.as_str()) else {
            problems.push(format!("line {}: {} is not a configuration key", line.number, line.path));
            continue;
        };
        let Some(value) = &line.value else {
            if !matches!(key.shape, Shape::Table | Shape::TableArray | Shape::Map) {
                problems.push(format!("line {}: {} is a value, not a table", line.number, line.path));
            }
            continue;
        };
        match (read_value(&key.path, value), &key.default) {
            (Err(e), _) => problems.push(format!("line {}: {} = {value} is refused by the parser: {e}", line.number, key.path)),
            (Ok(read), Some(default)) if read != *default => problems.push(format!(
                "line {}: {} = {value}, but its default is {default} (show the default, or comment on why not)",
                line.number, key.path
            )),
            _ => {}
        }
    }

    for key in schema {
        let shown: Vec<&Line> = lines.iter().filter(|l| l.path == key.path).collect();
        if shown.is_empty() {
            let default = key.default.as_ref().map_or_else(|| "no default".to_string(), |d| format!("default {d}"));
            problems.push(format!(
                "{} ({:?}, {default}) is missing: add `{}` with one line of meaning",
                key.path,
                key.shape,
                suggestion(key)
            ));
            continue;
        }
        let documented: Vec<&&Line> = shown.iter().filter(|l| !l.comment.is_empty()).collect();
        if matches!(key.shape, Shape::Value | Shape::Map) && documented.is_empty() {
            problems.push(format!("line {}: {} has no `# meaning` comment", shown[0].number, key.path));
        }
        if !key.variants.is_empty() {
            let names_all = |l: &&&Line| {
                let words: Vec<&str> = l.comment.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).collect();
                key.variants.iter().all(|v| words.contains(v))
            };
            if !documented.iter().any(names_all) {
                problems.push(format!(
                    "line {}: {}'s comment must name every value: {}",
                    shown[0].number,
                    key.path,
                    key.variants.join(" | ")
                ));
            }
        }
    }
    problems
}

fn suggestion(key: &SchemaKey) -> String {
    let name = key.path.rsplit('.').next().unwrap_or(&key.path);
    match (key.shape, &key.default) {
        (Shape::Table, _) => format!("[{}]", key.path.replace("[]", "")),
        (Shape::TableArray, _) => format!("[[{}]]", key.path),
        (_, Some(default)) => format!("{name} = {default}   # …"),
        (_, None) => format!("# {name} = …   # …"),
    }
}

#[test]
fn the_example_lists_every_key_with_its_default_and_nothing_else() {
    let problems = check(EXAMPLE, &schema());
    assert!(problems.is_empty(), "examples/portcullis.toml does not match the schema:\n  {}", problems.join("\n  "));
}

/// The checker itself: each kind of drift is caught, so the test above cannot pass vacuously.
#[test]
fn drift_of_each_kind_is_caught() {
    let schema = schema();
    assert!(schema.len() > 60, "the schema lost keys: {}", schema.len());
    let mutate = |from: &str, to: &str| {
        assert!(EXAMPLE.contains(from), "the example no longer has {from:?}");
        check(&EXAMPLE.replacen(from, to, 1), &schema).join("\n")
    };
    // A key dropped from the example.
    let dropped = EXAMPLE.lines().filter(|l| !l.trim_start().starts_with("lease_ttl")).collect::<Vec<_>>().join("\n");
    assert!(check(&dropped, &schema).join("\n").contains("refresh.lease_ttl"), "a missing key passes");
    // A default that differs from the code's.
    assert!(mutate("max_wait = \"15s\"", "max_wait = \"16s\"").contains("refresh.max_wait"), "a wrong default passes");
    // A key the parser does not know.
    assert!(mutate("[refresh]", "[refresh]\nmax_wiat = \"15s\"   # typo").contains("refresh.max_wiat"), "an unknown key passes");
    // A key without its meaning.
    let bare = EXAMPLE.lines().map(|l| if l.starts_with("lease_ttl") { "lease_ttl = \"5s\"" } else { l }).collect::<Vec<_>>().join("\n");
    assert!(check(&bare, &schema).join("\n").contains("refresh.lease_ttl has no"), "a key without meaning passes");
    // An enum whose comment forgets a value.
    assert!(mutate("# memory | redis | cookie", "# memory | redis").contains("session.store"), "an undocumented variant passes");
    // A route key under [[routes]], and a table that is not one.
    assert!(mutate("bearer = \"off\"", "bearer = \"of\"").contains("routes[].bearer"), "a bad route value passes");
}

/// The example, as written (only the secret file's path replaced), is a valid configuration.
#[test]
fn the_example_is_a_valid_config() {
    let dir = std::env::temp_dir().join(format!("portcullis-config-reference-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let secret = dir.join("session_secret");
    std::fs::write(&secret, portcullis::config::generate_secret()).unwrap();
    let path = "/run/secrets/portcullis_session_secret";
    assert!(EXAMPLE.contains(path), "the example no longer reads the session secret from {path}");
    let text = EXAMPLE.replace(path, secret.to_str().unwrap());
    let result = Config::from_toml_str(&text);
    std::fs::remove_dir_all(&dir).ok();
    let config = result.unwrap_or_else(|e| panic!("examples/portcullis.toml is refused: {e}"));
    assert_eq!(config.routes.len(), 2);
}
