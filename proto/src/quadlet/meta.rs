//! The parts every `.kat` file shares: `apiVersion`, `kind`, `metadata`; and the
//! standalone Namespace kind.

use super::API_VERSION;
use super::defaults::DEFAULT_NAMESPACE;
use super::reader::{MapReader, Node, Report};
use crate::names;
use crate::v1alpha1::{Namespace, ObjectMeta};

/// Reads `apiVersion` and `kind` of a file that must hold `expected_kind`; returns the
/// top-level mapping for the caller to read `metadata` and `spec` from.
pub(crate) fn header<'a>(
    root: &Node<'a>,
    r: &mut Report,
    expected_kind: &str,
) -> Option<MapReader<'a>> {
    let mut top = root.map(r)?;
    if let Some(v) = top.required(r, "apiVersion").and_then(|n| n.str(r))
        && v != API_VERSION
    {
        r.error(
            "apiVersion",
            format!("{v:?} is not supported (use {API_VERSION})"),
        );
    }
    if let Some(kind) = top.required(r, "kind").and_then(|n| n.str(r))
        && kind != expected_kind
    {
        r.error(
            "kind",
            format!("{kind:?} does not belong in this file (expected {expected_kind})"),
        );
    }
    Some(top)
}

/// `metadata` as read, and whether the namespace was given explicitly (companion files
/// inherit the workload's namespace when they leave it out).
#[derive(Debug, Default)]
pub(crate) struct Meta {
    pub(crate) meta: ObjectMeta,
    pub(crate) namespace_given: bool,
}

/// Reads `metadata`. Namespaced kinds default the namespace to `default`; the
/// server-set fields are refused.
pub(crate) fn metadata(top: &mut MapReader<'_>, r: &mut Report, namespaced: bool) -> Meta {
    let mut out = Meta::default();
    let Some(node) = top.required(r, "metadata") else {
        return out;
    };
    let Some(mut m) = node.map(r) else { return out };
    if let Some(name) = m.required(r, "name").and_then(|n| n.string(r)) {
        if let Some(problem) = names::dns_label_problem(&name) {
            r.error(&m.child_path("name"), problem);
        }
        out.meta.name = name;
    }
    match m.field("namespace") {
        Some(n) if !namespaced => {
            r.error(&n.path, "this kind is not namespaced; remove the field");
        }
        Some(n) => {
            if let Some(ns) = n.string(r) {
                if let Some(problem) = names::dns_label_problem(&ns) {
                    r.error(&n.path, problem);
                }
                out.meta.namespace = ns;
                out.namespace_given = true;
            }
        }
        None if namespaced => out.meta.namespace = DEFAULT_NAMESPACE.to_owned(),
        None => {}
    }
    if let Some(labels) = m.field("labels") {
        out.meta.labels = label_map(&labels, r);
    }
    for server_set in ["uid", "generation", "createdAt", "updatedAt"] {
        if let Some(n) = m.field(server_set) {
            r.error(&n.path, "is set by the server; remove it from the file");
        }
    }
    m.finish(r);
    out
}

/// A `key: value` mapping whose keys and values follow the label rules
/// (labels, node selectors).
pub(crate) fn label_map(
    node: &Node<'_>,
    r: &mut Report,
) -> std::collections::BTreeMap<String, String> {
    let mut out = std::collections::BTreeMap::new();
    for (key, value) in node.string_map(r) {
        let path = super::reader::join(&node.path, &key);
        if let Some(problem) = names::label_key_problem(&key) {
            r.error(&path, problem);
        }
        if let Some(problem) = names::label_value_problem(&value) {
            r.error(&path, problem);
        }
        out.insert(key, value);
    }
    out
}

pub(crate) fn parse_namespace(root: &Node<'_>, r: &mut Report) -> Namespace {
    let Some(mut top) = header(root, r, "Namespace") else {
        return Namespace::default();
    };
    let meta = metadata(&mut top, r, false);
    top.finish(r);
    Namespace {
        api_version: API_VERSION.to_owned(),
        kind: "Namespace".to_owned(),
        metadata: Some(meta.meta),
        status: None,
    }
}
