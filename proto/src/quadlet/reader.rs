//! A strict, error-collecting reader over a parsed YAML tree.
//!
//! The Quadlet decoders walk a `serde_yaml_ng::Value` with these helpers instead of
//! deriving `Deserialize`, so that one pass reports *every* problem of a file with its
//! field path (`spec.container.resources.limits.memory`), unknown keys included, rather
//! than stopping at the first.

use serde_yaml_ng::{Mapping, Value};

use super::FieldError;

/// Collects the errors of one file.
#[derive(Debug)]
pub(crate) struct Report {
    file: String,
    errors: Vec<FieldError>,
}

impl Report {
    pub(crate) fn new(file: &str) -> Self {
        Self {
            file: file.to_owned(),
            errors: Vec::new(),
        }
    }

    pub(crate) fn error(&mut self, path: &str, reason: impl Into<String>) {
        self.errors.push(FieldError {
            file: self.file.clone(),
            path: path.to_owned(),
            reason: reason.into(),
        });
    }

    pub(crate) fn error_count(&self) -> usize {
        self.errors.len()
    }

    pub(crate) fn into_errors(self) -> Vec<FieldError> {
        self.errors
    }
}

/// Joins a field path and a key: `spec` + `replicas` -> `spec.replicas`.
pub(crate) fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

/// What a value is, for "expected X, found Y" messages.
fn describe(value: &Value) -> String {
    match value {
        Value::Null => "nothing (null)".to_owned(),
        Value::Bool(b) => format!("a boolean ({b})"),
        Value::Number(n) => format!("a number ({n})"),
        Value::String(s) => format!("a string ({s:?})"),
        Value::Sequence(_) => "a list".to_owned(),
        Value::Mapping(_) => "a mapping".to_owned(),
        Value::Tagged(t) => format!("a value tagged {}", t.tag),
    }
}

/// One value in the tree together with its field path.
#[derive(Debug, Clone)]
pub(crate) struct Node<'a> {
    pub(crate) path: String,
    pub(crate) value: &'a Value,
}

impl<'a> Node<'a> {
    pub(crate) fn root(value: &'a Value) -> Self {
        Self {
            path: String::new(),
            value,
        }
    }

    fn expected(&self, r: &mut Report, what: &str) {
        r.error(
            &self.path,
            format!("expected {what}, found {}", describe(self.value)),
        );
    }

    pub(crate) fn map(&self, r: &mut Report) -> Option<MapReader<'a>> {
        match self.value {
            Value::Mapping(map) => Some(MapReader {
                path: self.path.clone(),
                map,
                known: Vec::new(),
            }),
            _ => {
                self.expected(r, "a mapping");
                None
            }
        }
    }

    pub(crate) fn str(&self, r: &mut Report) -> Option<&'a str> {
        match self.value {
            Value::String(s) => Some(s.as_str()),
            Value::Number(_) | Value::Bool(_) => {
                r.error(
                    &self.path,
                    format!(
                        "expected a string, found {} (quote it)",
                        describe(self.value)
                    ),
                );
                None
            }
            _ => {
                self.expected(r, "a string");
                None
            }
        }
    }

    pub(crate) fn string(&self, r: &mut Report) -> Option<String> {
        self.str(r).map(str::to_owned)
    }

    /// A string or a plain number, as text (quantities such as `cpu: 1` or `cpu: "250m"`).
    pub(crate) fn scalar_text(&self, r: &mut Report) -> Option<String> {
        match self.value {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => {
                self.expected(r, "a string or a number");
                None
            }
        }
    }

    pub(crate) fn bool(&self, r: &mut Report) -> Option<bool> {
        match self.value {
            Value::Bool(b) => Some(*b),
            _ => {
                self.expected(r, "true or false");
                None
            }
        }
    }

    /// A whole number within `min..=max`.
    pub(crate) fn int_in(&self, r: &mut Report, min: i64, max: i64) -> Option<i64> {
        let Value::Number(n) = self.value else {
            self.expected(r, "a whole number");
            return None;
        };
        let Some(v) = n.as_i64() else {
            if n.as_u64().is_some() {
                r.error(&self.path, format!("{n} is too large (at most {max})"));
            } else {
                r.error(&self.path, format!("expected a whole number, found {n}"));
            }
            return None;
        };
        if v < min {
            let reason = if min == 0 {
                format!("must not be negative, found {v}")
            } else {
                format!("must be at least {min}, found {v}")
            };
            r.error(&self.path, reason);
            return None;
        }
        if v > max {
            r.error(&self.path, format!("{v} is too large (at most {max})"));
            return None;
        }
        Some(v)
    }

    pub(crate) fn u32_in(&self, r: &mut Report, min: u32, max: u32) -> Option<u32> {
        self.int_in(r, i64::from(min), i64::from(max))
            .and_then(|v| u32::try_from(v).ok())
    }

    pub(crate) fn u32(&self, r: &mut Report) -> Option<u32> {
        self.u32_in(r, 0, u32::MAX)
    }

    pub(crate) fn seq(&self, r: &mut Report) -> Option<Vec<Node<'a>>> {
        match self.value {
            Value::Sequence(items) => Some(
                items
                    .iter()
                    .enumerate()
                    .map(|(i, value)| Node {
                        path: format!("{}[{i}]", self.path),
                        value,
                    })
                    .collect(),
            ),
            _ => {
                self.expected(r, "a list");
                None
            }
        }
    }

    /// A list of strings; wrong items are reported and skipped.
    pub(crate) fn string_list(&self, r: &mut Report) -> Vec<String> {
        self.seq(r)
            .unwrap_or_default()
            .iter()
            .filter_map(|item| item.string(r))
            .collect()
    }

    /// A mapping of strings to strings (labels, selectors, build args).
    pub(crate) fn string_map(&self, r: &mut Report) -> Vec<(String, String)> {
        let Value::Mapping(map) = self.value else {
            self.expected(r, "a mapping of names to strings");
            return Vec::new();
        };
        let mut out = Vec::new();
        for (key, value) in map {
            let Some(key) = key_text(key, &self.path, r) else {
                continue;
            };
            let node = Node {
                path: join(&self.path, &key),
                value,
            };
            if let Some(value) = node.string(r) {
                out.push((key, value));
            }
        }
        out
    }

    /// One of a fixed set of enum names, matched exactly.
    pub(crate) fn one_of<T: Copy>(&self, r: &mut Report, choices: &[(&str, T)]) -> Option<T> {
        let text = self.str(r)?;
        if let Some((_, v)) = choices.iter().find(|(name, _)| *name == text) {
            return Some(*v);
        }
        let names: Vec<&str> = choices.iter().map(|(name, _)| *name).collect();
        let hint = choices
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(text))
            .map(|(name, _)| format!("; did you mean {name}?"))
            .unwrap_or_default();
        r.error(
            &self.path,
            format!("{text:?} is not one of {}{hint}", names.join(", ")),
        );
        None
    }
}

fn key_text(key: &Value, path: &str, r: &mut Report) -> Option<String> {
    match key {
        Value::String(s) => Some(s.clone()),
        other => {
            r.error(
                path,
                format!("keys must be strings, found {}", describe(other)),
            );
            None
        }
    }
}

/// Reads the fields of one mapping; `finish` reports the keys nobody asked for.
#[derive(Debug)]
pub(crate) struct MapReader<'a> {
    path: String,
    map: &'a Mapping,
    known: Vec<&'static str>,
}

impl<'a> MapReader<'a> {
    pub(crate) fn path(&self) -> &str {
        &self.path
    }

    pub(crate) fn child_path(&self, key: &str) -> String {
        join(&self.path, key)
    }

    /// The value under `key`; absent and `null` both read as `None`.
    pub(crate) fn field(&mut self, key: &'static str) -> Option<Node<'a>> {
        self.known.push(key);
        match self.map.get(key) {
            None | Some(Value::Null) => None,
            Some(value) => Some(Node {
                path: join(&self.path, key),
                value,
            }),
        }
    }

    /// Like `field`, but a missing value is an error.
    pub(crate) fn required(&mut self, r: &mut Report, key: &'static str) -> Option<Node<'a>> {
        let node = self.field(key);
        if node.is_none() {
            r.error(&join(&self.path, key), "is required");
        }
        node
    }

    /// Reports every key that no `field` call asked for.
    pub(crate) fn finish(self, r: &mut Report) {
        for key in self.map.keys() {
            let Some(key) = key_text(key, &self.path, r) else {
                continue;
            };
            if self.known.contains(&key.as_str()) {
                continue;
            }
            let hint = closest(&key, &self.known)
                .map(|k| format!("did you mean {k:?}?"))
                .unwrap_or_else(|| {
                    let mut known = self.known.clone();
                    known.sort_unstable();
                    format!("expected one of: {}", known.join(", "))
                });
            r.error(&join(&self.path, &key), format!("unknown field ({hint})"));
        }
    }
}

/// The known name closest to `word` when it is plausibly a typo of it.
fn closest<'k>(word: &str, known: &[&'k str]) -> Option<&'k str> {
    let lower = word.to_ascii_lowercase();
    known
        .iter()
        .map(|k| (edit_distance(&lower, &k.to_ascii_lowercase()), *k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 4))
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn yaml(text: &str) -> Value {
        serde_yaml_ng::from_str(text).unwrap()
    }

    #[test]
    fn unknown_field_suggests_the_closest_known_name() {
        let v = yaml("replica: 3\ntype: SERVICE\n");
        let mut r = Report::new("workload.kat");
        let mut m = Node::root(&v).map(&mut r).unwrap();
        m.field("replicas");
        m.field("type");
        m.finish(&mut r);
        let errors = r.into_errors();
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].path, "replica");
        assert_eq!(
            errors[0].reason,
            "unknown field (did you mean \"replicas\"?)"
        );
    }

    #[test]
    fn unknown_field_without_a_close_match_lists_the_known_names() {
        let v = yaml("zzz: 1\n");
        let mut r = Report::new("f");
        let mut m = Node::root(&v).map(&mut r).unwrap();
        m.field("name");
        m.field("labels");
        m.finish(&mut r);
        assert_eq!(
            r.into_errors()[0].reason,
            "unknown field (expected one of: labels, name)"
        );
    }

    #[test]
    fn numbers_where_strings_are_expected_say_quote_it() {
        let v = yaml("1.2");
        let mut r = Report::new("f");
        assert_eq!(Node::root(&v).str(&mut r), None);
        assert!(r.into_errors()[0].reason.contains("quote it"));
    }

    #[test]
    fn integers_are_range_checked() {
        let mut r = Report::new("f");
        assert_eq!(Node::root(&yaml("-1")).u32(&mut r), None);
        assert_eq!(Node::root(&yaml("1.5")).u32(&mut r), None);
        assert_eq!(Node::root(&yaml("70000")).u32_in(&mut r, 1, 65535), None);
        assert_eq!(Node::root(&yaml("\"5\"")).u32(&mut r), None);
        assert_eq!(Node::root(&yaml("5")).u32(&mut r), Some(5));
        let reasons: Vec<String> = r.into_errors().into_iter().map(|e| e.reason).collect();
        assert_eq!(
            reasons,
            [
                "must not be negative, found -1",
                "expected a whole number, found 1.5",
                "70000 is too large (at most 65535)",
                "expected a whole number, found a string (\"5\")",
            ]
        );
    }

    #[test]
    fn enum_names_match_exactly_with_a_case_hint() {
        let mut r = Report::new("f");
        let choices = [("SERVICE", 1), ("JOB", 2)];
        assert_eq!(Node::root(&yaml("JOB")).one_of(&mut r, &choices), Some(2));
        assert_eq!(Node::root(&yaml("service")).one_of(&mut r, &choices), None);
        assert_eq!(
            r.into_errors()[0].reason,
            "\"service\" is not one of SERVICE, JOB; did you mean SERVICE?"
        );
    }

    #[test]
    fn list_items_carry_their_index_in_the_path() {
        let v = yaml("[a, 1, b]");
        let mut r = Report::new("f");
        let node = Node {
            path: "spec.args".into(),
            value: &v,
        };
        assert_eq!(node.string_list(&mut r), ["a", "b"]);
        assert_eq!(r.into_errors()[0].path, "spec.args[1]");
    }
}
