//! The modules of `kat-actors` read top-down (see the table in `src/lib.rs`): no module
//! depends on one above it, and no group of modules depends on each other in a cycle
//! (a parent and its child included; a cycle inside one file's own items is fine).
//!
//! The graph is read from the source: every path that starts with `crate::`, `super::`,
//! `self::` or a child module's name is an edge to the module it names (a name a
//! module re-exports from its child counts as that child), and so is a call of a
//! `macro_rules!` macro defined in another module. Comments, string literals and
//! `#[cfg(test)] mod tests` blocks are not dependencies. Not followed: a module
//! brought into scope by `use` and then named (`use crate::x; x::child::f()` counts as
//! a dependency on `x`, not on `x::child`).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

/// Top-level modules by layer: a module may depend only on modules of a lower layer
/// (or on its own top-level module).
const LAYERS: &[(&str, u8)] = &[
    ("files", 0),
    ("metrics", 0),
    ("pki", 1),
    ("store", 2),
    ("supervision", 2),
    ("client", 2),
    ("listener", 2),
    ("state", 3),
    ("agent", 4),
    ("leader", 5),
    ("api", 6),
    ("control_plane", 7),
    ("tree", 8),
    ("procedures", 9),
];

/// A module path (`["leader", "scheduler"]`; the crate root is empty).
type Module = Vec<String>;

fn modules(src: &Path) -> BTreeMap<Module, PathBuf> {
    fn walk(dir: &Path, src: &Path, out: &mut BTreeMap<Module, PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, src, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let rel = path.strip_prefix(src).unwrap().with_extension("");
                let mut parts: Vec<String> = rel
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy().into_owned())
                    .collect();
                if matches!(parts.last().map(String::as_str), Some("mod" | "lib")) {
                    parts.pop();
                }
                out.insert(parts, path);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(src, src, &mut out);
    out
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Ident(String),
    /// `::`
    Sep,
    Punct(char),
}

/// Identifiers, `::` and punctuation; comments, strings and chars are dropped.
fn tokens(text: &str) -> Vec<Token> {
    let b: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let next = b.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < b.len() && b[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            i += 2;
            while i + 1 < b.len() && !(b[i] == '*' && b[i + 1] == '/') {
                i += 1;
            }
            i += 2;
        } else if c == 'r' && (next == Some('"') || next == Some('#')) && {
            let mut j = i + 1;
            while b.get(j) == Some(&'#') {
                j += 1;
            }
            b.get(j) == Some(&'"')
        } {
            let mut hashes = 0;
            i += 1;
            while b[i] == '#' {
                hashes += 1;
                i += 1;
            }
            i += 1;
            loop {
                if b[i] == '"' && (0..hashes).all(|k| b.get(i + 1 + k) == Some(&'#')) {
                    i += 1 + hashes;
                    break;
                }
                i += 1;
            }
        } else if c == '"' {
            i += 1;
            while b[i] != '"' {
                i += if b[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
        } else if c == '\'' {
            if next == Some('\\') {
                i += 2;
                while b[i] != '\'' {
                    i += 1;
                }
                i += 1;
            } else if b.get(i + 2) == Some(&'\'') {
                i += 3;
            } else {
                i += 1; // a lifetime
            }
        } else if c.is_alphabetic() || c == '_' {
            let start = i;
            while i < b.len() && (b[i].is_alphanumeric() || b[i] == '_') {
                i += 1;
            }
            out.push(Token::Ident(b[start..i].iter().collect()));
        } else if c == ':' && next == Some(':') {
            out.push(Token::Sep);
            i += 2;
        } else {
            if !c.is_whitespace() {
                out.push(Token::Punct(c));
            }
            i += 1;
        }
    }
    out
}

/// Drops `#[cfg(test)] mod tests { ... }` (test code may use anything).
fn without_test_modules(tokens: Vec<Token>) -> Vec<Token> {
    let ident = |t: &Token, s: &str| matches!(t, Token::Ident(x) if x == s);
    let mut out = Vec::new();
    let mut i = 0;
    while i < tokens.len() {
        let is_cfg_test = tokens[i] == Token::Punct('#')
            && tokens.get(i + 1) == Some(&Token::Punct('['))
            && tokens.get(i + 2).is_some_and(|t| ident(t, "cfg"))
            && tokens.get(i + 3) == Some(&Token::Punct('('))
            && tokens.get(i + 4).is_some_and(|t| ident(t, "test"))
            && tokens.get(i + 5) == Some(&Token::Punct(')'))
            && tokens.get(i + 6) == Some(&Token::Punct(']'))
            && tokens.get(i + 7).is_some_and(|t| ident(t, "mod"))
            && tokens.get(i + 9) == Some(&Token::Punct('{'));
        if is_cfg_test {
            let mut depth = 0;
            let mut j = i + 9;
            loop {
                match tokens[j] {
                    Token::Punct('{') => depth += 1,
                    Token::Punct('}') => {
                        depth -= 1;
                        if depth == 0 {
                            break;
                        }
                    }
                    _ => {}
                }
                j += 1;
            }
            i = j + 1;
        } else {
            out.push(tokens[i].clone());
            i += 1;
        }
    }
    out
}

/// The full paths of a path or use tree starting at `tokens[*i]` (an identifier):
/// `a::b::{c, d::{e, f}}` gives `a::b::c`, `a::b::d::e`, `a::b::d::f`.
fn paths_at(tokens: &[Token], i: &mut usize, prefix: &[String], out: &mut Vec<Vec<String>>) {
    let mut path = prefix.to_vec();
    loop {
        match tokens.get(*i) {
            Some(Token::Ident(name)) => {
                path.push(name.clone());
                *i += 1;
            }
            Some(Token::Punct('{')) => {
                *i += 1;
                loop {
                    match tokens.get(*i) {
                        Some(Token::Punct('}')) => {
                            *i += 1;
                            return;
                        }
                        Some(Token::Punct(',')) => *i += 1,
                        Some(Token::Ident(_)) => paths_at(tokens, i, &path, out),
                        Some(_) => *i += 1,
                        None => return,
                    }
                }
            }
            _ => {
                out.push(path);
                return;
            }
        }
        if tokens.get(*i) == Some(&Token::Sep) {
            *i += 1;
        } else {
            out.push(path);
            return;
        }
    }
}

struct Graph {
    modules: BTreeMap<Module, PathBuf>,
    /// (module, name) → the child module it re-exports that name from.
    reexports: HashMap<(Module, String), Module>,
    /// `macro_rules!` name → the module that defines it.
    macros: HashMap<String, Module>,
}

impl Graph {
    fn new(src: &Path) -> Self {
        let modules = modules(src);
        let mut reexports = HashMap::new();
        let mut macros = HashMap::new();
        for (module, file) in &modules {
            let toks = without_test_modules(tokens(&std::fs::read_to_string(file).unwrap()));
            for w in toks.windows(3) {
                if let [Token::Ident(m), Token::Punct('!'), Token::Ident(name)] = w
                    && m == "macro_rules"
                {
                    macros.insert(name.clone(), module.clone());
                }
            }
            for k in 0..toks.len() {
                let is_pub_use = matches!(&toks[k], Token::Ident(p) if p == "pub")
                    && matches!(toks.get(k + 1), Some(Token::Ident(u)) if u == "use");
                if !is_pub_use {
                    continue;
                }
                let mut i = k + 2;
                let mut paths = Vec::new();
                paths_at(&toks, &mut i, &[], &mut paths);
                for path in paths {
                    let path: Vec<String> = path.into_iter().skip_while(|p| p == "self").collect();
                    if path.len() >= 2 {
                        let mut child = module.clone();
                        child.push(path[0].clone());
                        if modules.contains_key(&child) {
                            let name = path.last().unwrap().clone();
                            reexports.insert((module.clone(), name), child);
                        }
                    }
                }
            }
        }
        Self {
            modules,
            reexports,
            macros,
        }
    }

    /// The module a crate-relative path names.
    fn resolve(&self, path: &[String]) -> Option<Module> {
        for len in (0..=path.len()).rev() {
            let module = path[..len].to_vec();
            if self.modules.contains_key(&module) {
                if let Some(name) = path.get(len)
                    && let Some(child) = self.reexports.get(&(module.clone(), name.clone()))
                {
                    return Some(child.clone());
                }
                return Some(module);
            }
        }
        None
    }

    fn edges(&self) -> BTreeMap<Module, BTreeSet<Module>> {
        let mut edges = BTreeMap::new();
        for (module, file) in &self.modules {
            let mut to = BTreeSet::new();
            if module.last().is_some_and(|m| m == "tests") {
                edges.insert(module.clone(), to);
                continue;
            }
            let toks = without_test_modules(tokens(&std::fs::read_to_string(file).unwrap()));
            let children: BTreeSet<String> = self
                .modules
                .keys()
                .filter(|m| m.len() == module.len() + 1 && m.starts_with(module))
                .map(|m| m.last().unwrap().clone())
                .collect();
            for w in toks.windows(2) {
                if let [Token::Ident(name), Token::Punct('!')] = w
                    && let Some(home) = self.macros.get(name)
                    && home != module
                {
                    to.insert(home.clone());
                }
            }
            let mut i = 0;
            while i < toks.len() {
                let after_sep = i > 0 && toks[i - 1] == Token::Sep;
                let starts = match &toks[i] {
                    Token::Ident(first) if !after_sep && toks.get(i + 1) == Some(&Token::Sep) => {
                        first == "crate"
                            || first == "super"
                            || first == "self"
                            || children.contains(first)
                    }
                    _ => false,
                };
                if !starts {
                    i += 1;
                    continue;
                }
                let mut paths = Vec::new();
                paths_at(&toks, &mut i, &[], &mut paths);
                for path in paths {
                    let absolute = match path[0].as_str() {
                        "crate" => path[1..].to_vec(),
                        "self" => {
                            let mut base = module.clone();
                            base.extend(path[1..].iter().cloned());
                            base
                        }
                        "super" => {
                            let ups = path.iter().take_while(|p| *p == "super").count();
                            let mut base = module[..module.len().saturating_sub(ups)].to_vec();
                            base.extend(path[ups..].iter().cloned());
                            base
                        }
                        _ => {
                            let mut base = module.clone();
                            base.extend(path.iter().cloned());
                            base
                        }
                    };
                    if let Some(target) = self.resolve(&absolute)
                        && target != *module
                    {
                        to.insert(target);
                    }
                }
            }
            edges.insert(module.clone(), to);
        }
        edges
    }
}

fn name(m: &Module) -> String {
    if m.is_empty() {
        "crate".to_owned()
    } else {
        m.join("::")
    }
}

/// The strongly connected groups of more than one module (Tarjan).
fn cycles(edges: &BTreeMap<Module, BTreeSet<Module>>) -> Vec<Vec<String>> {
    struct Walk<'a> {
        edges: &'a BTreeMap<Module, BTreeSet<Module>>,
        index: HashMap<&'a Module, usize>,
        low: HashMap<&'a Module, usize>,
        stack: Vec<&'a Module>,
        found: Vec<Vec<String>>,
    }
    fn visit<'a>(w: &mut Walk<'a>, v: &'a Module) {
        let n = w.index.len();
        w.index.insert(v, n);
        w.low.insert(v, n);
        w.stack.push(v);
        for t in &w.edges[v] {
            if !w.index.contains_key(t) {
                visit(w, t);
                let low = w.low[v].min(w.low[t]);
                w.low.insert(v, low);
            } else if w.stack.contains(&t) {
                let low = w.low[v].min(w.index[t]);
                w.low.insert(v, low);
            }
        }
        if w.low[v] == w.index[v] {
            let mut group = Vec::new();
            while let Some(m) = w.stack.pop() {
                group.push(name(m));
                if m == v {
                    break;
                }
            }
            if group.len() > 1 {
                group.sort();
                w.found.push(group);
            }
        }
    }
    let mut w = Walk {
        edges,
        index: HashMap::new(),
        low: HashMap::new(),
        stack: Vec::new(),
        found: Vec::new(),
    };
    for v in edges.keys() {
        if !w.index.contains_key(v) {
            visit(&mut w, v);
        }
    }
    w.found
}

fn graph() -> BTreeMap<Module, BTreeSet<Module>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    Graph::new(&src).edges()
}

#[test]
fn no_module_is_part_of_an_import_cycle() {
    let found = cycles(&graph());
    assert!(found.is_empty(), "import cycles: {found:#?}");
}

#[test]
fn modules_depend_only_on_lower_layers() {
    let layers: HashMap<&str, u8> = LAYERS.iter().copied().collect();
    let mut upward = Vec::new();
    for (from, targets) in graph() {
        let Some(top) = from.first() else { continue };
        let Some(&rank) = layers.get(top.as_str()) else {
            panic!("{} is not in LAYERS: give it a layer", name(&from));
        };
        for to in targets {
            let other = &to[0];
            if other == top {
                continue;
            }
            if layers[other.as_str()] >= rank {
                upward.push(format!("{} -> {}", name(&from), name(&to)));
            }
        }
    }
    assert!(
        upward.is_empty(),
        "dependencies that do not point down: {upward:#?}"
    );
}

#[test]
fn a_macro_defined_in_a_parent_and_called_in_its_child_is_a_dependency() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path();
    std::fs::create_dir(src.join("a")).unwrap();
    std::fs::write(src.join("lib.rs"), "pub mod a;\n").unwrap();
    std::fs::write(
        src.join("a/mod.rs"),
        "macro_rules! tri { ($e:expr) => { $e } }\nmod b;\nuse b::f;\n",
    )
    .unwrap();
    std::fs::write(src.join("a/b.rs"), "pub fn f() -> u8 { tri!(1) }\n").unwrap();
    let edges = Graph::new(src).edges();
    let m = |p: &str| p.split("::").map(str::to_owned).collect::<Vec<_>>();
    assert!(edges[&m("a")].contains(&m("a::b")), "{edges:?}");
    assert!(edges[&m("a::b")].contains(&m("a")), "{edges:?}");
    assert_eq!(cycles(&edges), [["a", "a::b"]]);
}

#[test]
fn the_reader_finds_paths_and_skips_comments_strings_and_tests() {
    let toks = without_test_modules(tokens(
        "use crate::a::{b, c::{d, E}};\n// crate::x::y\nlet s = \"crate::z\";\nlet c = '\"';\n\
         fn f<'a>(x: &'a str) -> super::g::H { x }\n#[cfg(test)]\nmod tests { use crate::t; }",
    ));
    let mut found = Vec::new();
    let mut i = 0;
    while i < toks.len() {
        if matches!(&toks[i], Token::Ident(x) if x == "crate" || x == "super")
            && toks.get(i + 1) == Some(&Token::Sep)
        {
            paths_at(&toks, &mut i, &[], &mut found);
        } else {
            i += 1;
        }
    }
    let found: Vec<String> = found.iter().map(|p| p.join("::")).collect();
    assert_eq!(
        found,
        [
            "crate::a::b",
            "crate::a::c::d",
            "crate::a::c::E",
            "super::g::H"
        ]
    );
}
