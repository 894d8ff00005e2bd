//! Bundles (SPEC §4.8): a Quadlet directory as a gzip'd tar, the form in which a
//! workload travels to the API.
//!
//! [`unpack`] is written for hostile input: it checks the compressed size before
//! decompressing, counts every decompressed byte (so a gzip bomb stops after
//! `max_uncompressed_bytes`, with memory bounded by the same figure), and refuses
//! absolute paths, `..`, links, devices, duplicates, stray or unknown `.kat` files and
//! a missing `workload.kat` — before anything is parsed or stored.

use std::cell::Cell;
use std::collections::BTreeSet;
use std::io::{self, Read};
use std::path::Path;
use std::rc::Rc;

use flate2::Compression;
use flate2::read::GzDecoder;
use flate2::write::GzEncoder;

use crate::quadlet::{QUADLET_FILES, WORKLOAD_FILE};

/// Size limits for one bundle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_compressed_bytes: u64,
    /// Counted over the whole decompressed tar stream, headers included.
    pub max_uncompressed_bytes: u64,
    pub max_entries: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_compressed_bytes: 1024 * 1024,
            max_uncompressed_bytes: 8 * 1024 * 1024,
            max_entries: 256,
        }
    }
}

/// One `.kat` file taken from a bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BundleFile {
    /// Base name, e.g. `workload.kat`.
    pub name: String,
    pub data: Vec<u8>,
}

/// Why a bundle was refused. Every message names the entry concerned.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("bundle is {size} bytes; at most {limit} bytes (compressed) are accepted")]
    TooLarge { size: u64, limit: u64 },
    #[error(
        "bundle expands to more than {limit} bytes; at most {limit} bytes (uncompressed) are accepted"
    )]
    TooLargeUncompressed { limit: u64 },
    #[error("bundle has more than {limit} entries")]
    TooManyEntries { limit: usize },
    #[error("{path:?}: absolute paths are not allowed in a bundle")]
    AbsolutePath { path: String },
    #[error("{path:?}: '..' is not allowed in a bundle path")]
    ParentDir { path: String },
    #[error(
        "{path:?}: {kind} entries are not allowed in a bundle (only regular files and directories)"
    )]
    NotAFile { path: String, kind: &'static str },
    #[error("{path:?}: the entry name is not UTF-8")]
    NotUtf8 { path: String },
    #[error("{path:?} appears twice in the bundle")]
    Duplicate { path: String },
    #[error("{path:?}: unknown Quadlet file (a bundle holds {})", QUADLET_FILES.join(", "))]
    UnknownKatFile { path: String },
    #[error("{path:?}: Quadlet files must sit at the bundle's root or in one top folder")]
    Misplaced { path: String },
    #[error(
        "{path:?}: all Quadlet files must sit in the same folder (found {first:?} and {second:?})"
    )]
    MixedFolders {
        path: String,
        first: String,
        second: String,
    },
    #[error("bundle has no {WORKLOAD_FILE}")]
    MissingWorkload,
    #[error("bundle is not a valid gzip'd tar: {0}")]
    Corrupt(String),
    #[error("{path}: {source}")]
    Io { path: String, source: io::Error },
}

/// Counts bytes read and fails once more than `remaining` were asked for.
struct CountingReader<R> {
    inner: R,
    remaining: u64,
    exceeded: Rc<Cell<bool>>,
}

impl<R: Read> Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.remaining == 0 {
            // One byte more than allowed means the limit is exceeded.
            let mut probe = [0u8; 1];
            return match self.inner.read(&mut probe)? {
                0 => Ok(0),
                _ => {
                    self.exceeded.set(true);
                    Err(io::Error::other("uncompressed size limit exceeded"))
                }
            };
        }
        let cap = usize::try_from(self.remaining)
            .unwrap_or(usize::MAX)
            .min(buf.len());
        let n = self.inner.read(&mut buf[..cap])?;
        self.remaining -= n as u64;
        Ok(n)
    }
}

/// A path inside the bundle, split into its components (`./` and empty parts dropped).
fn components(path: &str) -> Result<Vec<&str>, BundleError> {
    if path.starts_with('/') {
        return Err(BundleError::AbsolutePath {
            path: path.to_owned(),
        });
    }
    let parts: Vec<&str> = path
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect();
    if parts.contains(&"..") {
        return Err(BundleError::ParentDir {
            path: path.to_owned(),
        });
    }
    Ok(parts)
}

/// Unpacks and checks a bundle; returns its `.kat` files (other files are read, counted
/// against the limits and dropped).
pub fn unpack(data: &[u8], limits: &Limits) -> Result<Vec<BundleFile>, BundleError> {
    let size = data.len() as u64;
    if size > limits.max_compressed_bytes {
        return Err(BundleError::TooLarge {
            size,
            limit: limits.max_compressed_bytes,
        });
    }
    let exceeded = Rc::new(Cell::new(false));
    let reader = CountingReader {
        inner: GzDecoder::new(data),
        remaining: limits.max_uncompressed_bytes,
        exceeded: exceeded.clone(),
    };
    let too_large = || BundleError::TooLargeUncompressed {
        limit: limits.max_uncompressed_bytes,
    };
    let corrupt = |e: io::Error| {
        if exceeded.get() {
            too_large()
        } else {
            BundleError::Corrupt(e.to_string())
        }
    };

    let mut archive = tar::Archive::new(reader);
    let mut seen: BTreeSet<String> = BTreeSet::new();
    let mut files: Vec<(Option<String>, BundleFile)> = Vec::new();
    let mut count = 0usize;

    for entry in archive.entries().map_err(corrupt)? {
        let mut entry = entry.map_err(corrupt)?;
        count += 1;
        if count > limits.max_entries {
            return Err(BundleError::TooManyEntries {
                limit: limits.max_entries,
            });
        }
        let raw = entry.path_bytes().into_owned();
        let path = String::from_utf8(raw).map_err(|e| BundleError::NotUtf8 {
            path: String::from_utf8_lossy(e.as_bytes()).into_owned(),
        })?;
        let parts = components(&path)?;
        use tar::EntryType as T;
        let kind = entry.header().entry_type();
        match kind {
            T::Regular | T::Continuous => {}
            T::Directory => continue,
            T::XGlobalHeader => continue,
            T::Symlink => {
                return Err(BundleError::NotAFile {
                    path,
                    kind: "symbolic link",
                });
            }
            T::Link => {
                return Err(BundleError::NotAFile {
                    path,
                    kind: "hard link",
                });
            }
            T::Char | T::Block => {
                return Err(BundleError::NotAFile {
                    path,
                    kind: "device",
                });
            }
            T::Fifo => return Err(BundleError::NotAFile { path, kind: "FIFO" }),
            _ => {
                return Err(BundleError::NotAFile {
                    path,
                    kind: "special",
                });
            }
        }
        if parts.is_empty() {
            return Err(BundleError::Corrupt(format!(
                "{path:?}: a file entry without a name"
            )));
        }
        let normal = parts.join("/");
        if !seen.insert(normal.clone()) {
            return Err(BundleError::Duplicate { path });
        }
        // The header's size is known before reading: refuse early if it cannot fit.
        if entry.size() > limits.max_uncompressed_bytes {
            return Err(too_large());
        }
        let name = parts[parts.len() - 1];
        let is_kat = name.ends_with(".kat");
        let mut data = Vec::new();
        entry.read_to_end(&mut data).map_err(corrupt)?;
        if !is_kat {
            continue;
        }
        if parts.len() > 2 {
            return Err(BundleError::Misplaced { path });
        }
        if !QUADLET_FILES.contains(&name) {
            return Err(BundleError::UnknownKatFile { path });
        }
        let folder = (parts.len() == 2).then(|| parts[0].to_owned());
        if let Some((first_folder, first)) = files
            .first()
            .map(|(f, file)| (f.clone(), file.name.clone()))
            && first_folder != folder
        {
            let at = |f: &Option<String>, n: &str| {
                f.as_ref().map_or(n.to_owned(), |f| format!("{f}/{n}"))
            };
            return Err(BundleError::MixedFolders {
                path: path.clone(),
                first: at(&first_folder, &first),
                second: path,
            });
        }
        files.push((
            folder,
            BundleFile {
                name: name.to_owned(),
                data,
            },
        ));
    }
    // Whatever follows the tar's end marker still counts: a bomb of zeros past the end
    // (or a plain gzip of zeros, which reads as an empty tar) must hit the limit too.
    let mut rest = archive.into_inner();
    io::copy(&mut rest, &mut io::sink()).map_err(corrupt)?;
    if exceeded.get() {
        return Err(too_large());
    }
    if !files.iter().any(|(_, f)| f.name == WORKLOAD_FILE) {
        return Err(BundleError::MissingWorkload);
    }
    Ok(files.into_iter().map(|(_, f)| f).collect())
}

/// Packs the `.kat` files of a Quadlet directory into a bundle (files at the root,
/// fixed modes and times so the same directory always gives the same bytes).
pub fn pack_dir(dir: &Path) -> Result<Vec<u8>, BundleError> {
    let io_err = |path: &Path, source| BundleError::Io {
        path: path.display().to_string(),
        source,
    };
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| io_err(dir, e))? {
        let entry = entry.map_err(|e| io_err(dir, e))?;
        let path = entry.path();
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        if !name.ends_with(".kat") || !path.is_file() {
            continue;
        }
        let data = std::fs::read(&path).map_err(|e| io_err(&path, e))?;
        files.push(BundleFile { name, data });
    }
    files.sort_by(|a, b| a.name.cmp(&b.name));
    pack(&files, &Limits::default())
}

/// Packs files into a bundle, refusing one the server would refuse for its size.
pub fn pack(files: &[BundleFile], limits: &Limits) -> Result<Vec<u8>, BundleError> {
    let total: u64 = files.iter().map(|f| f.data.len() as u64 + 1024).sum();
    if total > limits.max_uncompressed_bytes {
        return Err(BundleError::TooLargeUncompressed {
            limit: limits.max_uncompressed_bytes,
        });
    }
    let mut builder = tar::Builder::new(GzEncoder::new(Vec::new(), Compression::default()));
    for f in files {
        let mut header = tar::Header::new_ustar();
        header.set_size(f.data.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(0);
        header.set_uid(0);
        header.set_gid(0);
        header.set_entry_type(tar::EntryType::Regular);
        builder
            .append_data(&mut header, &f.name, f.data.as_slice())
            .map_err(|e| BundleError::Io {
                path: f.name.clone(),
                source: e,
            })?;
    }
    let gz = builder.into_inner().map_err(|e| BundleError::Io {
        path: "bundle".to_owned(),
        source: e,
    })?;
    let bytes = gz.finish().map_err(|e| BundleError::Io {
        path: "bundle".to_owned(),
        source: e,
    })?;
    if bytes.len() as u64 > limits.max_compressed_bytes {
        return Err(BundleError::TooLarge {
            size: bytes.len() as u64,
            limit: limits.max_compressed_bytes,
        });
    }
    Ok(bytes)
}
