//! Quadlet files (SPEC §4): YAML `.kat` files parsed into the proto types, with every
//! default filled in and every rule checked.
//!
//! Parsing never stops at the first problem: each file is read completely and every
//! error is reported as `FILE: FIELD.PATH: reason`. A Quadlet directory (or bundle)
//! is checked file by file and then across files (names, namespaces, which companion
//! files fit which workload type).
//!
//! Entry points: [`parse_cluster_config`], [`parse_namespace`], [`parse_quadlet`] and
//! [`parse_bundle`] for bytes already in memory; [`read_quadlet_dir`] and [`load_path`]
//! for the file system.

mod cluster;
pub use cluster::ClusterSettings;
mod companions;
pub mod defaults;
mod encode;
mod meta;
mod reader;
mod workload;

use std::fmt;
use std::path::Path;

use serde_yaml_ng::Value;

use crate::bundle;
use crate::v1alpha1::{ClusterConfiguration, Namespace, Quadlet, WorkloadType};

pub use encode::{to_json, to_yaml};
use reader::{Node, Report};

/// The `apiVersion` of every KAT resource.
pub const API_VERSION: &str = "kat.dws.rip/v1alpha1";

/// File names a Quadlet directory may hold, with the kind each must contain.
pub const WORKLOAD_FILE: &str = "workload.kat";
pub const VLB_FILE: &str = "VirtualLoadBalancer.kat";
pub const JOB_FILE: &str = "job.kat";
pub const BUILD_FILE: &str = "build.kat";
pub const NAMESPACE_FILE: &str = "namespace.kat";
pub const CLUSTER_FILE: &str = "cluster.kat";

/// The files of a workload's Quadlet directory.
pub const QUADLET_FILES: [&str; 4] = [WORKLOAD_FILE, VLB_FILE, JOB_FILE, BUILD_FILE];

/// Largest single `.kat` file read from disk; real ones are a few KiB.
pub const MAX_FILE_BYTES: u64 = 1024 * 1024;

/// One problem in one file: `FILE: FIELD.PATH: reason`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// The file as the user named it (`examples/web/workload.kat`, `web.tar.gz/job.kat`).
    pub file: String,
    /// Dotted field path with list indexes (`spec.volumes[1].name`); empty for whole-file problems.
    pub path: String,
    pub reason: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}: {}", self.file, self.reason)
        } else {
            write!(f, "{}: {}: {}", self.file, self.path, self.reason)
        }
    }
}

/// Every problem found in a file, directory or bundle; never empty.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ValidationErrors {
    pub errors: Vec<FieldError>,
}

impl ValidationErrors {
    fn single(file: &str, reason: impl Into<String>) -> Self {
        Self::at(file, "", reason)
    }

    fn at(file: &str, path: &str, reason: impl Into<String>) -> Self {
        Self {
            errors: vec![FieldError {
                file: file.to_owned(),
                path: path.to_owned(),
                reason: reason.into(),
            }],
        }
    }
}

impl fmt::Display for ValidationErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

/// One `.kat` file in memory: its name inside the directory and how errors show it.
#[derive(Debug, Clone)]
pub struct SourceFile {
    /// Base name, e.g. `workload.kat`.
    pub name: String,
    /// What error messages call it, e.g. `examples/web/workload.kat`.
    pub display: String,
    pub data: Vec<u8>,
}

/// A validated document of any kind, as `katcall validate` and the API see it.
#[derive(Debug, Clone, PartialEq)]
pub enum Document {
    Cluster(ClusterConfiguration),
    Namespace(Namespace),
    Quadlet(Box<Quadlet>),
}

impl Document {
    /// One line saying what was validated.
    pub fn summary(&self) -> String {
        match self {
            Document::Cluster(c) => {
                let name = c
                    .metadata
                    .as_ref()
                    .map(|m| m.name.as_str())
                    .unwrap_or_default();
                let quorum = c.spec.as_ref().map(|s| s.quorum_size).unwrap_or_default();
                format!("ClusterConfiguration {name} (quorum size {quorum})")
            }
            Document::Namespace(n) => {
                format!(
                    "Namespace {}",
                    n.metadata
                        .as_ref()
                        .map(|m| m.name.as_str())
                        .unwrap_or_default()
                )
            }
            Document::Quadlet(q) => quadlet_summary(q),
        }
    }
}

fn quadlet_summary(q: &Quadlet) -> String {
    let Some(w) = &q.workload else {
        return "empty Quadlet".to_owned();
    };
    let meta = w.metadata.clone().unwrap_or_default();
    let spec = w.spec.clone().unwrap_or_default();
    let kind = match spec.r#type() {
        WorkloadType::Service => format!("SERVICE, {} replicas", spec.replicas.unwrap_or_default()),
        WorkloadType::Job => "JOB".to_owned(),
        WorkloadType::DaemonService => "DAEMON_SERVICE".to_owned(),
        WorkloadType::Unspecified => "no type".to_owned(),
    };
    let mut with = Vec::new();
    if q.virtual_load_balancer.is_some() {
        with.push(VLB_FILE);
    }
    if q.job.is_some() {
        with.push(JOB_FILE);
    }
    if q.build.is_some() {
        with.push(BUILD_FILE);
    }
    let with = if with.is_empty() {
        String::new()
    } else {
        format!(" with {}", with.join(", "))
    };
    format!("Workload {}/{} ({kind}){with}", meta.namespace, meta.name)
}

/// Parses one file's YAML; syntax errors (with line and column) go to the report.
fn parse_yaml(r: &mut Report, data: &[u8]) -> Option<Value> {
    let text = match std::str::from_utf8(data) {
        Ok(text) => text,
        Err(e) => {
            r.error("", format!("is not UTF-8 text ({e})"));
            return None;
        }
    };
    match serde_yaml_ng::from_str::<Value>(text) {
        Ok(Value::Null) => {
            r.error("", "is empty");
            None
        }
        Ok(value) => Some(value),
        Err(e) => {
            r.error("", format!("is not valid YAML: {e}"));
            None
        }
    }
}

fn finish<T>(value: T, r: Report) -> Result<T, ValidationErrors> {
    if r.error_count() == 0 {
        Ok(value)
    } else {
        Err(ValidationErrors {
            errors: r.into_errors(),
        })
    }
}

/// Parses and validates a `cluster.kat`, filling in every default.
pub fn parse_cluster_config(
    file: &str,
    data: &[u8],
) -> Result<ClusterConfiguration, ValidationErrors> {
    let mut r = Report::new(file);
    let Some(value) = parse_yaml(&mut r, data) else {
        return finish(Default::default(), r);
    };
    let config = cluster::parse(&Node::root(&value), &mut r);
    finish(config, r)
}

/// Parses and validates a standalone `namespace.kat`.
pub fn parse_namespace(file: &str, data: &[u8]) -> Result<Namespace, ValidationErrors> {
    let mut r = Report::new(file);
    let Some(value) = parse_yaml(&mut r, data) else {
        return finish(Default::default(), r);
    };
    let namespace = meta::parse_namespace(&Node::root(&value), &mut r);
    finish(namespace, r)
}

/// Parses and validates the files of one Quadlet directory (from disk or a bundle),
/// then checks them against each other. `dir` names the directory in errors that
/// belong to no single file.
pub fn parse_quadlet(dir: &str, files: &[SourceFile]) -> Result<Quadlet, ValidationErrors> {
    companions::parse_quadlet(dir, files)
}

/// Unpacks a bundle safely and parses its Quadlet; errors name files as
/// `BUNDLE/workload.kat`.
pub fn parse_bundle(
    bundle_name: &str,
    data: &[u8],
    limits: &bundle::Limits,
) -> Result<Quadlet, ValidationErrors> {
    let files = bundle::unpack(data, limits)
        .map_err(|e| ValidationErrors::single(bundle_name, e.to_string()))?;
    parse_bundle_files(bundle_name, files)
}

/// Parses the files [`bundle::unpack`] returned.
pub fn parse_bundle_files(
    bundle_name: &str,
    files: Vec<bundle::BundleFile>,
) -> Result<Quadlet, ValidationErrors> {
    let files: Vec<SourceFile> = files
        .into_iter()
        .map(|f| SourceFile {
            display: format!("{bundle_name}/{}", f.name),
            name: f.name,
            data: f.data,
        })
        .collect();
    parse_quadlet(bundle_name, &files)
}

/// Reads the `.kat` files of a directory (other files are ignored).
pub fn read_quadlet_dir(dir: &Path) -> Result<Vec<SourceFile>, ValidationErrors> {
    let shown = dir.display().to_string();
    let entries = std::fs::read_dir(dir)
        .map_err(|e| ValidationErrors::single(&shown, format!("cannot read directory: {e}")))?;
    let mut files = Vec::new();
    let mut errors = Vec::new();
    for entry in entries {
        let entry = entry
            .map_err(|e| ValidationErrors::single(&shown, format!("cannot read directory: {e}")))?;
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        if !name.ends_with(".kat") {
            continue;
        }
        let path = entry.path();
        let display = path.display().to_string();
        match read_limited(&path) {
            Ok(data) => files.push(SourceFile {
                name,
                display,
                data,
            }),
            Err(reason) => errors.push(FieldError {
                file: display,
                path: String::new(),
                reason,
            }),
        }
    }
    files.sort_by(|a, b| a.name.cmp(&b.name));
    if errors.is_empty() {
        Ok(files)
    } else {
        Err(ValidationErrors { errors })
    }
}

fn read_limited(path: &Path) -> Result<Vec<u8>, String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot read: {e}"))?;
    if !meta.is_file() {
        return Err("is not a regular file".to_owned());
    }
    if meta.len() > MAX_FILE_BYTES {
        return Err(format!(
            "is {} bytes; a .kat file may be at most {MAX_FILE_BYTES}",
            meta.len()
        ));
    }
    std::fs::read(path).map_err(|e| format!("cannot read: {e}"))
}

/// Validates whatever `path` is: a Quadlet directory, a bundle (`.tar.gz`/`.tgz` or any
/// gzip file), or a single `.kat` file (decided by its `kind`).
pub fn load_path(path: &Path) -> Result<Document, ValidationErrors> {
    let shown = path.display().to_string();
    let meta = std::fs::metadata(path)
        .map_err(|e| ValidationErrors::single(&shown, format!("cannot read: {e}")))?;
    if meta.is_dir() {
        let files = read_quadlet_dir(path)?;
        return load_dir_files(&shown, &files);
    }
    let data = read_whole(path, &meta)?;
    if data.starts_with(&[0x1f, 0x8b]) {
        return parse_bundle(&shown, &data, &bundle::Limits::default())
            .map(|q| Document::Quadlet(Box::new(q)));
    }
    load_single_file(&shown, &data)
}

fn read_whole(path: &Path, meta: &std::fs::Metadata) -> Result<Vec<u8>, ValidationErrors> {
    let shown = path.display().to_string();
    // Bundles are checked against their own limit when unpacked; refuse absurd files early.
    let limit = bundle::Limits::default()
        .max_compressed_bytes
        .max(MAX_FILE_BYTES);
    if meta.len() > limit {
        return Err(ValidationErrors::single(
            &shown,
            format!(
                "is {} bytes; at most {limit} bytes are accepted",
                meta.len()
            ),
        ));
    }
    std::fs::read(path).map_err(|e| ValidationErrors::single(&shown, format!("cannot read: {e}")))
}

/// A directory holds either a workload's Quadlet files or a single `namespace.kat` or
/// `cluster.kat`.
fn load_dir_files(dir: &str, files: &[SourceFile]) -> Result<Document, ValidationErrors> {
    if let [only] = files {
        if only.name == NAMESPACE_FILE {
            return parse_namespace(&only.display, &only.data).map(Document::Namespace);
        }
        if only.name == CLUSTER_FILE {
            return parse_cluster_config(&only.display, &only.data).map(Document::Cluster);
        }
    }
    parse_quadlet(dir, files).map(|q| Document::Quadlet(Box::new(q)))
}

/// A single file is parsed according to the `kind` it declares.
fn load_single_file(shown: &str, data: &[u8]) -> Result<Document, ValidationErrors> {
    let mut r = Report::new(shown);
    let Some(value) = parse_yaml(&mut r, data) else {
        return Err(ValidationErrors {
            errors: r.into_errors(),
        });
    };
    let kind = value
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let as_file = |name: &str| SourceFile {
        name: name.to_owned(),
        display: shown.to_owned(),
        data: data.to_vec(),
    };
    match kind.as_str() {
        "ClusterConfiguration" => parse_cluster_config(shown, data).map(Document::Cluster),
        "Namespace" => parse_namespace(shown, data).map(Document::Namespace),
        "Workload" => {
            parse_quadlet(shown, &[as_file(WORKLOAD_FILE)]).map(|q| Document::Quadlet(Box::new(q)))
        }
        "VirtualLoadBalancer" | "JobDefinition" | "BuildDefinition" => {
            Err(ValidationErrors::single(
                shown,
                format!(
                    "a {kind} belongs to a Quadlet directory; validate the directory that holds it"
                ),
            ))
        }
        "" => Err(ValidationErrors::at(shown, "kind", "is required")),
        other => Err(ValidationErrors::at(
            shown,
            "kind",
            format!(
                "{other:?} is not a KAT kind (ClusterConfiguration, Namespace, Workload, \
                 VirtualLoadBalancer, JobDefinition, BuildDefinition)"
            ),
        )),
    }
}

#[cfg(test)]
mod tests;
