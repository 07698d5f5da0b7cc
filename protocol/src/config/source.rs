//! Turning text into typed configuration with located diagnostics.
//!
//! Parsing is pure: the caller reads the file and passes its name and text. Type errors
//! come with the parser's line and column and the field path (serde_path_to_error);
//! unknown fields become warnings (serde_ignored) located by [`locate`].

use super::diag::Diagnostic;
use serde::de::DeserializeOwned;

/// Largest configuration file accepted, checked before parsing.
pub const MAX_CONFIG_BYTES: usize = 1024 * 1024;

/// Unknown-field warnings reported one by one per file; the rest are summed up in one.
pub const MAX_UNKNOWN_FIELD_WARNINGS: usize = 100;

/// The text formats configuration comes in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Yaml,
    Json,
}

impl Format {
    /// Picks the format from a file name; anything not `.json` is YAML.
    pub fn from_path(path: &str) -> Self {
        if path.ends_with(".json") { Format::Json } else { Format::Yaml }
    }
}

/// Parses `text` (the content of `file`) into `T`.
///
/// On success returns the value and warnings for unknown fields; on failure one error
/// diagnostic naming file, line, column and field.
pub fn parse<T: DeserializeOwned>(file: &str, text: &str, format: Format) -> Result<(T, Vec<Diagnostic>), Diagnostic> {
    if text.len() > MAX_CONFIG_BYTES {
        return Err(Diagnostic::error(file, 0, 0, "", format!("file is {} bytes; the limit is {MAX_CONFIG_BYTES}", text.len())));
    }
    let mut ignored: Vec<String> = Vec::new();
    let mut cb = |p: serde_ignored::Path<'_>| ignored.push(ignored_path(&p));
    // (field path, line and column, message) of a failure.
    type Failure = (String, Option<(usize, usize)>, String);
    let result: Result<T, Failure> = match format {
        Format::Yaml => {
            if text.trim().is_empty() {
                return Err(Diagnostic::error(file, 0, 0, "", "file is empty"));
            }
            let de = serde_yaml_ng::Deserializer::from_str(text);
            let de = serde_ignored::Deserializer::new(de, &mut cb);
            serde_path_to_error::deserialize(de).map_err(|e| {
                let path = clean_path(&e.path().to_string());
                let inner = e.into_inner();
                let loc = inner.location().map(|l| (l.line(), l.column()));
                let msg = strip_location(&inner.to_string());
                (path.clone(), loc, strip_path_prefix(&msg, &path))
            })
        }
        Format::Json => {
            let mut de = serde_json::Deserializer::from_str(text);
            let r = {
                let de2 = serde_ignored::Deserializer::new(&mut de, &mut cb);
                serde_path_to_error::deserialize(de2)
            };
            match r {
                Ok(v) => de.end().map(|()| v).map_err(|e| (String::new(), Some((e.line(), e.column())), strip_location(&e.to_string()))),
                Err(e) => {
                    let path = clean_path(&e.path().to_string());
                    let inner = e.into_inner();
                    let loc = if inner.line() > 0 { Some((inner.line(), inner.column())) } else { None };
                    Err((path, loc, strip_location(&inner.to_string())))
                }
            }
        }
    };
    match result {
        Ok(v) => {
            // Each warning is located by a scan of the text, so a file made of thousands of
            // unknown keys would take quadratic time; past the cap one summary is enough.
            let extra = ignored.len().saturating_sub(MAX_UNKNOWN_FIELD_WARNINGS);
            let mut warnings: Vec<Diagnostic> = ignored
                .iter()
                .take(MAX_UNKNOWN_FIELD_WARNINGS)
                .map(|p| {
                    let p = clean_path(p);
                    let (line, col) = locate(text, &p);
                    Diagnostic::warning(file, line, col, p.clone(), "unknown field (ignored)")
                })
                .collect();
            if extra > 0 {
                let p = clean_path(&ignored[MAX_UNKNOWN_FIELD_WARNINGS]);
                let (line, col) = locate(text, &p);
                warnings.push(Diagnostic::warning(file, line, col, p, format!("{extra} more unknown fields (ignored), starting here")));
            }
            Ok((v, warnings))
        }
        Err((path, loc, msg)) => {
            let (line, col) = match loc {
                Some(l) => l,
                None => locate(text, &path),
            };
            Err(Diagnostic::error(file, line, col, path, msg))
        }
    }
}

/// Normalises a serde_path_to_error path: the root `.` becomes empty and `?` segments
/// (positions the deserializer could not name, e.g. after a JSON syntax error) are dropped.
fn clean_path(p: &str) -> String {
    if p == "." {
        return String::new();
    }
    p.split('.').filter(|s| *s != "?" && !s.is_empty()).collect::<Vec<_>>().join(".")
}

/// Renders a serde_ignored path in the same dotted form as serde_path_to_error
/// (`a.b[0].c`): sequence indexes in brackets, `Option`/newtype wrappers left out.
/// (serde_ignored's own `Display` writes `a.b.0.?.c`, which [`locate`] cannot follow.)
fn ignored_path(p: &serde_ignored::Path<'_>) -> String {
    use serde_ignored::Path;
    let mut segs: Vec<String> = Vec::new();
    let mut cur = p;
    loop {
        match cur {
            Path::Root => break,
            Path::Seq { parent, index } => {
                segs.push(format!("[{index}]"));
                cur = parent;
            }
            Path::Map { parent, key } => {
                segs.push(key.clone());
                cur = parent;
            }
            Path::Some { parent } | Path::NewtypeStruct { parent } | Path::NewtypeVariant { parent } => cur = parent,
        }
    }
    let mut out = String::new();
    for seg in segs.iter().rev() {
        if !out.is_empty() && !seg.starts_with('[') {
            out.push('.');
        }
        out.push_str(seg);
    }
    out
}

/// serde_yaml_ng starts some messages with the field path, which the diagnostic already
/// carries in `field`; drops that prefix.
fn strip_path_prefix(msg: &str, path: &str) -> String {
    if path.is_empty() {
        return msg.to_string();
    }
    msg.strip_prefix(path).and_then(|m| m.strip_prefix(": ")).unwrap_or(msg).to_string()
}

/// Removes the " at line X column Y" suffix both serde_yaml and serde_json append,
/// since the diagnostic carries the location separately.
fn strip_location(msg: &str) -> String {
    match msg.find(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg.to_string(),
    }
}

/// Best-effort location of a dotted field path (`a.b[2].c`) in YAML or JSON text.
///
/// Walks the text line by line looking for each key at a deeper indentation than its
/// parent. Returns (line, column), 1-based, or the closest ancestor found; (0, 0) when
/// nothing matched. Used for warnings and for errors found after parsing.
pub fn locate(text: &str, path: &str) -> (usize, usize) {
    let lines: Vec<&str> = text.lines().collect();
    let mut pos = 0usize; // index of the line to start searching from
    let mut parent_indent: isize = -1;
    let mut found: (usize, usize) = (0, 0);
    // Whether `pos` is the line of a key (its children start below it) rather than the
    // start of the file or a `- ` item (whose first key may sit on the same line).
    let mut after_key = false;
    for seg in split_path(path) {
        match seg {
            Seg::Key(key) => {
                // A direct child sits at the block's child column: the column of the first
                // key in the block. Deeper keys with the same name (a `health_endpoint`
                // inside a strategy, below a misplaced one) and the parent's own line must
                // not match; when nothing matches at the child column (flow style,
                // irregular indentation) the shallowest match in the block is used.
                let start = if after_key { pos + 1 } else { pos };
                let (plain, double, single) = (format!("{key}:"), format!("\"{key}\""), format!("'{key}'"));
                let mut child_col: Option<usize> = None;
                let mut hit: Option<(usize, usize)> = None;
                for (i, line) in lines.iter().enumerate().skip(start) {
                    let indent = line.len() - line.trim_start().len();
                    let t = line.trim_start().trim_start_matches("- ");
                    let dash_extra = line.trim_start().len() - t.len();
                    if t.is_empty() || t.starts_with('#') {
                        continue;
                    }
                    let only_brackets = t.chars().all(|c| matches!(c, '{' | '}' | '[' | ']' | ',') || c.is_whitespace());
                    if (indent as isize) <= parent_indent && i > pos {
                        // left the parent's block
                        if !(t.starts_with('}') || t.starts_with(']')) {
                            break;
                        }
                    }
                    if only_brackets {
                        continue;
                    }
                    let col = indent + dash_extra;
                    let child = *child_col.get_or_insert(col);
                    if t.starts_with(&plain) || t.starts_with(&double) || t.starts_with(&single) {
                        if col == child {
                            hit = Some((i, col));
                            break;
                        }
                        if hit.is_none_or(|(_, c)| col < c) {
                            hit = Some((i, col));
                        }
                    }
                }
                match hit {
                    Some((i, col)) => {
                        found = (i + 1, col + 1);
                        pos = i;
                        parent_indent = col as isize;
                        after_key = true;
                    }
                    None => return found,
                }
            }
            Seg::Index(n) => {
                // YAML block sequences: the n-th "- " item below the current line.
                let mut count = 0usize;
                let mut hit = None;
                for (i, line) in lines.iter().enumerate().skip(pos + 1) {
                    let indent = line.len() - line.trim_start().len();
                    let t = line.trim_start();
                    if t.is_empty() || t.starts_with('#') {
                        continue;
                    }
                    if (indent as isize) < parent_indent {
                        break;
                    }
                    if t.starts_with("- ") || t == "-" {
                        if count == n {
                            hit = Some((i, indent));
                            break;
                        }
                        count += 1;
                    }
                }
                match hit {
                    Some((i, col)) => {
                        found = (i + 1, col + 1);
                        pos = i;
                        // keys of this item sit two columns right of the dash
                        parent_indent = col as isize;
                        after_key = false;
                    }
                    None => return found,
                }
            }
        }
    }
    found
}

enum Seg<'a> {
    Key(&'a str),
    Index(usize),
}

fn split_path(path: &str) -> Vec<Seg<'_>> {
    let mut out = Vec::new();
    for part in path.split('.').filter(|p| !p.is_empty()) {
        let mut rest = part;
        if let Some(b) = rest.find('[') {
            if b > 0 {
                out.push(Seg::Key(&rest[..b]));
            }
            rest = &rest[b..];
            while let Some(stripped) = rest.strip_prefix('[') {
                match stripped.find(']') {
                    Some(e) => {
                        if let Ok(n) = stripped[..e].parse() {
                            out.push(Seg::Index(n));
                        }
                        rest = &stripped[e + 1..];
                    }
                    None => break,
                }
            }
        } else {
            out.push(Seg::Key(rest));
        }
    }
    out
}

/// Expands `${VAR}` and `${VAR:-default}` in `value` using `lookup`.
///
/// Returns the expanded string, or the name of the first variable that is unset and has
/// no default. A `$` not followed by `{` is kept as is; an unterminated `${` is an error.
pub fn expand_env(value: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<String, EnvError> {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(i) = rest.find("${") {
        out.push_str(&rest[..i]);
        let after = &rest[i + 2..];
        let Some(end) = after.find('}') else {
            return Err(EnvError::Unterminated);
        };
        let inner = &after[..end];
        let (name, default) = match inner.find(":-") {
            Some(d) => (&inner[..d], Some(&inner[d + 2..])),
            None => (inner, None),
        };
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(EnvError::BadName(name.to_string()));
        }
        match (lookup(name), default) {
            (Some(v), _) => out.push_str(&v),
            (None, Some(d)) => out.push_str(d),
            (None, None) => return Err(EnvError::Unset(name.to_string())),
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Why a `${...}` placeholder could not be expanded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvError {
    #[error("environment variable `{0}` is not set (use `${{{0}:-default}}` to give a default)")]
    Unset(String),
    #[error("`${{` without a closing `}}`")]
    Unterminated,
    #[error("`{0}` is not a valid environment variable name")]
    BadName(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locate_finds_nested_yaml_keys_and_items() {
        let text = "a:\n  b:\n    c: 1\n  list:\n    - x: 1\n    - y: 2\n      z: 3\n";
        assert_eq!(locate(text, "a.b.c"), (3, 5));
        assert_eq!(locate(text, "a.list[1].z"), (7, 7));
        assert_eq!(locate(text, "a.list[1]"), (6, 5));
        assert_eq!(locate(text, "a.missing"), (1, 1));
    }

    #[test]
    fn locate_prefers_direct_children_over_deeper_or_parent_keys() {
        // `a.a` is the child, not the parent's own line.
        assert_eq!(locate("a:\n  a: 1\n", "a.a"), (2, 3));
        // a misplaced key below a nested one of the same name
        let text = "s:\n  strategies:\n    - health_endpoint: /h\n  health_endpoint: /x\n";
        assert_eq!(locate(text, "s.health_endpoint"), (4, 3));
        // a top-level key after a nested one of the same name
        let text = "servers:\n  x:\n    version: 2\nversion: 1\n";
        assert_eq!(locate(text, "version"), (4, 1));
        // keys of a sequence item, first on the dash line and below it
        let text = "list:\n  - type: a\n    ports: [1]\n  - type: b\n    ports: [2]\n";
        assert_eq!(locate(text, "list[1].ports"), (5, 5));
        assert_eq!(locate(text, "list[1].type"), (4, 5));
    }

    #[test]
    fn parse_reports_unknown_fields_with_clean_paths_and_lines() {
        #[derive(Debug, serde::Deserialize)]
        #[allow(dead_code)]
        struct Inner {
            x: Option<u32>,
        }
        #[derive(Debug, serde::Deserialize)]
        #[allow(dead_code)]
        struct Outer {
            opt: Option<Inner>,
            list: Vec<Inner>,
        }
        let text = "opt:\n  x: 1\n  typo: 2\nlist:\n  - x: 1\n  - x: 2\n    typo2: 3\n";
        let (_, w) = parse::<Outer>("f.yaml", text, Format::Yaml).expect("parses");
        let got: Vec<(String, usize)> = w.iter().map(|d| (d.field.clone(), d.line)).collect();
        assert_eq!(got, [("opt.typo".to_string(), 3), ("list[1].typo2".to_string(), 7)]);
    }

    #[test]
    fn parse_errors_do_not_repeat_the_path_in_the_message() {
        let e = parse::<std::collections::BTreeMap<String, u32>>("f.yaml", "a: 1\nb: x\n", Format::Yaml).expect_err("type error");
        assert_eq!((e.field.as_str(), e.line), ("b", 2));
        assert!(!e.message.starts_with("b:"), "{}", e.message);
        // a JSON syntax error names the field it happened in, without `?` segments
        let e = parse::<std::collections::BTreeMap<String, std::collections::BTreeMap<String, u32>>>(
            "f.json",
            "{\n  \"a\": {\n    \"b\": 1\n    \"c\": 2\n  }\n}\n",
            Format::Json,
        )
        .expect_err("syntax error");
        assert_eq!((e.field.as_str(), e.line), ("a", 4));
    }

    #[test]
    fn locate_finds_json_keys() {
        let text = "{\n  \"mcpServers\": {\n    \"zen\": {\n      \"command\": \"x\"\n    }\n  }\n}\n";
        assert_eq!(locate(text, "mcpServers.zen.command"), (4, 7));
    }

    #[test]
    fn expand_env_handles_defaults_and_unset() {
        let lookup = |k: &str| (k == "SET").then(|| "v".to_string());
        assert_eq!(expand_env("a${SET}b", &lookup).as_deref(), Ok("avb"));
        assert_eq!(expand_env("${NOPE:-d}", &lookup).as_deref(), Ok("d"));
        assert_eq!(expand_env("$HOME ${NOPE:-}", &lookup).as_deref(), Ok("$HOME "));
        assert_eq!(expand_env("${NOPE}", &lookup), Err(EnvError::Unset("NOPE".into())));
        assert_eq!(expand_env("${OPEN", &lookup), Err(EnvError::Unterminated));
        assert_eq!(expand_env("${a b}", &lookup), Err(EnvError::BadName("a b".into())));
    }
}
