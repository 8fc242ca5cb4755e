//! The workspace's layering, checked by reading its source (no VM, no
//! daemon):
//!
//! 1. the daemon's mechanism modules (`runtime/src/{sandbox,container,image,
//!    network,host,state}`) never refer to the CRI layer (`crate::cri`):
//!    data flows from `cri/` down, never back up;
//! 2. no crate (`runtime`, `shim`, `guest-agent`) has an import circle
//!    between its files.
//!
//! The file graph has an edge A → B when A names a path that resolves to
//! B: `crate::a::b::Item` → `a/b.rs` or `a/b/mod.rs` (the longest prefix
//! that is a file module), `super::`/`self::` relative to A's module (inline
//! `mod tests { use super::*; }` included), a bare `child::Item` relative to
//! A's module, grouped `use` trees expanded. A `mod child;` declaration
//! alone is no edge. Comments and string/char literals are blanked first,
//! so what they mention does not count.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The mechanism modules of the daemon that must not reach up into `cri`.
const MECHANISM: &[&str] = &["sandbox", "container", "image", "network", "host", "state"];

// ---------------------------------------------------------------------------
// Source text: comments and literals blanked, newlines kept.

fn is_ident_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// `src` with comments and the contents of string, byte-string, raw-string
/// and char literals replaced by spaces, so that line numbers stay right.
fn strip(src: &str) -> String {
    let b: Vec<char> = src.chars().collect();
    let n = b.len();
    let at = |i: usize| b.get(i).copied().unwrap_or('\0');
    let blank = |c: char| if c == '\n' { '\n' } else { ' ' };
    let mut out = String::with_capacity(src.len());
    let mut i = 0;
    while i < n {
        let c = b[i];
        if c == '/' && at(i + 1) == '/' {
            while i < n && b[i] != '\n' {
                out.push(' ');
                i += 1;
            }
            continue;
        }
        if c == '/' && at(i + 1) == '*' {
            // Block comments nest.
            let mut depth = 0;
            while i < n {
                if b[i] == '/' && at(i + 1) == '*' {
                    depth += 1;
                    out.push_str("  ");
                    i += 2;
                } else if b[i] == '*' && at(i + 1) == '/' {
                    depth -= 1;
                    out.push_str("  ");
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    out.push(blank(b[i]));
                    i += 1;
                }
            }
            continue;
        }
        // r"…", r#"…"#, br"…": an `r` that starts a token (or follows a
        // token-starting `b`), then hashes, then a quote.
        let starts_token = |k: usize| k == 0 || !is_ident_char(b[k - 1]);
        if c == 'r' && (starts_token(i) || (b[i - 1] == 'b' && starts_token(i - 1))) {
            let mut j = i + 1;
            while at(j) == '#' {
                j += 1;
            }
            if at(j) == '"' {
                let hashes = j - i - 1;
                for _ in i..=j {
                    out.push(' ');
                }
                i = j + 1;
                while i < n {
                    if b[i] == '"' && (1..=hashes).all(|h| at(i + h) == '#') {
                        for _ in 0..=hashes {
                            out.push(' ');
                        }
                        i += hashes + 1;
                        break;
                    }
                    out.push(blank(b[i]));
                    i += 1;
                }
                continue;
            }
        }
        if c == '"' {
            out.push(' ');
            i += 1;
            while i < n && b[i] != '"' {
                if b[i] == '\\' && i + 1 < n {
                    out.push(' ');
                    i += 1;
                }
                out.push(blank(b[i]));
                i += 1;
            }
            out.push(' ');
            i += 1;
            continue;
        }
        if c == '\'' {
            // A char literal ('x', '\n', '\u{..}', '"'); otherwise a
            // lifetime or a label, which stays.
            let end = if at(i + 1) == '\\' {
                (i + 3..n).find(|&k| b[k] == '\'')
            } else if at(i + 2) == '\'' && at(i + 1) != '\n' {
                Some(i + 2)
            } else {
                None
            };
            if let Some(end) = end {
                out.extend(b[i..=end].iter().map(|&c| blank(c)));
                i = end + 1;
                continue;
            }
        }
        out.push(c);
        i += 1;
    }
    out
}

// ---------------------------------------------------------------------------
// Tokens: just enough of Rust's to read paths, `use` trees and `mod` items.

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    PathSep,
    Open,
    Close,
    Comma,
    Semi,
    Star,
    Other,
}

fn tokenize(code: &str) -> Vec<(Tok, usize)> {
    let b: Vec<char> = code.chars().collect();
    let mut toks = Vec::new();
    let mut line = 1;
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let tok = match c {
            '\n' => {
                line += 1;
                i += 1;
                continue;
            }
            c if c.is_whitespace() => {
                i += 1;
                continue;
            }
            '$' | 'a'..='z' | 'A'..='Z' | '_' => {
                let start = i;
                i += 1;
                while i < b.len() && is_ident_char(b[i]) {
                    i += 1;
                }
                toks.push((Tok::Ident(b[start..i].iter().collect()), line));
                continue;
            }
            '0'..='9' => {
                while i < b.len() && is_ident_char(b[i]) {
                    i += 1;
                }
                toks.push((Tok::Other, line));
                continue;
            }
            ':' if b.get(i + 1) == Some(&':') => {
                i += 2;
                toks.push((Tok::PathSep, line));
                continue;
            }
            '{' => Tok::Open,
            '}' => Tok::Close,
            ',' => Tok::Comma,
            ';' => Tok::Semi,
            '*' => Tok::Star,
            _ => Tok::Other,
        };
        toks.push((tok, line));
        i += 1;
    }
    toks
}

fn ident(t: Option<&(Tok, usize)>) -> Option<&str> {
    match t {
        Some((Tok::Ident(s), _)) => Some(s),
        _ => None,
    }
}

/// One path a file names, as written, with the module it is written in.
#[derive(Debug, Clone)]
struct PathUse {
    line: usize,
    /// The module the path is written in (file module plus inline modules).
    module: Vec<String>,
    segments: Vec<String>,
}

/// What one file says: the modules it declares (`mod x;` → a file, `mod x
/// { … }` → inline) and the paths it names.
#[derive(Debug, Default)]
struct FileItems {
    file_children: Vec<Vec<String>>,
    inline_modules: Vec<Vec<String>>,
    paths: Vec<PathUse>,
}

/// Expands the `use` tree starting at `toks[*i]` into full paths (a group's
/// `self` and a glob `*` stand for their prefix; `as` renames are dropped).
fn use_tree(
    toks: &[(Tok, usize)],
    i: &mut usize,
    prefix: &[String],
    out: &mut Vec<(Vec<String>, usize)>,
) {
    let mut path = prefix.to_vec();
    if toks.get(*i).map(|t| &t.0) == Some(&Tok::PathSep) {
        // `use ::extern_crate::…`
        path.push("::".into());
        *i += 1;
    }
    loop {
        match toks.get(*i) {
            Some((Tok::Ident(s), l)) if s != "as" => {
                let line = *l;
                path.push(s.clone());
                *i += 1;
                if toks.get(*i).map(|t| &t.0) == Some(&Tok::PathSep) {
                    *i += 1;
                    continue;
                }
                if ident(toks.get(*i)) == Some("as") {
                    *i += 2;
                }
                // `self` in a group names the group's prefix.
                if path.len() > 1 && path.last().is_some_and(|s| s == "self") {
                    path.pop();
                }
                out.push((path, line));
                return;
            }
            Some((Tok::Star, l)) => {
                *i += 1;
                out.push((path, *l));
                return;
            }
            Some((Tok::Open, _)) => {
                *i += 1;
                loop {
                    match toks.get(*i).map(|t| &t.0) {
                        Some(Tok::Close) => {
                            *i += 1;
                            return;
                        }
                        Some(Tok::Comma) => *i += 1,
                        None => return,
                        Some(_) => {
                            let before = *i;
                            use_tree(toks, i, &path, out);
                            if *i == before {
                                *i += 1;
                            }
                        }
                    }
                }
            }
            _ => return,
        }
    }
}

/// Reads the `mod` items and the paths of one file whose module is
/// `module`.
fn scan(code: &str, module: &[String]) -> FileItems {
    let toks = tokenize(code);
    let mut items = FileItems::default();
    // One entry per open brace: the inline module it opens, if any.
    let mut braces: Vec<Option<String>> = Vec::new();
    let current = |braces: &[Option<String>]| -> Vec<String> {
        let mut m = module.to_vec();
        m.extend(braces.iter().flatten().cloned());
        m
    };
    let mut i = 0;
    while i < toks.len() {
        match &toks[i].0 {
            Tok::Ident(kw) if kw == "mod" => {
                if let Some(name) = ident(toks.get(i + 1)) {
                    let mut m = current(&braces);
                    m.push(name.to_string());
                    match toks.get(i + 2).map(|t| &t.0) {
                        Some(Tok::Semi) => {
                            items.file_children.push(m);
                            i += 3;
                            continue;
                        }
                        Some(Tok::Open) => {
                            items.inline_modules.push(m);
                            braces.push(Some(name.to_string()));
                            i += 3;
                            continue;
                        }
                        _ => {}
                    }
                }
                i += 1;
            }
            Tok::Ident(kw) if kw == "use" => {
                i += 1;
                let mut leaves = Vec::new();
                use_tree(&toks, &mut i, &[], &mut leaves);
                let m = current(&braces);
                for (segments, line) in leaves {
                    items.paths.push(PathUse {
                        line,
                        module: m.clone(),
                        segments,
                    });
                }
                while i < toks.len() && toks[i].0 != Tok::Semi {
                    i += 1;
                }
            }
            Tok::Open => {
                braces.push(None);
                i += 1;
            }
            Tok::Close => {
                braces.pop();
                i += 1;
            }
            Tok::Ident(first)
                if toks.get(i + 1).map(|t| &t.0) == Some(&Tok::PathSep)
                    && (i == 0 || toks[i - 1].0 != Tok::PathSep) =>
            {
                let line = toks[i].1;
                let mut segments = vec![first.clone()];
                i += 1;
                while toks.get(i).map(|t| &t.0) == Some(&Tok::PathSep) {
                    match ident(toks.get(i + 1)) {
                        Some(s) => {
                            segments.push(s.to_string());
                            i += 2;
                        }
                        None => break,
                    }
                }
                items.paths.push(PathUse {
                    line,
                    module: current(&braces),
                    segments,
                });
            }
            _ => i += 1,
        }
    }
    items
}

// ---------------------------------------------------------------------------
// Crates: the module tree from a root file, and the file graph.

/// A path one file names and the file it resolves to.
#[derive(Debug, Clone)]
struct Reference {
    line: usize,
    /// Absolute module path the reference resolves to (without `crate`).
    target: Vec<String>,
    written: String,
}

#[derive(Debug, Default)]
struct Crate {
    /// Module path → file, for every file module.
    files: BTreeMap<Vec<String>, PathBuf>,
    /// Every module, file or inline.
    modules: BTreeSet<Vec<String>>,
    /// File → what it refers to inside the crate.
    references: BTreeMap<PathBuf, Vec<Reference>>,
}

impl Crate {
    /// Reads the crate whose root is `root` (`main.rs`, `lib.rs`,
    /// `bin/x.rs`), following `mod x;` declarations.
    fn load(root: &Path) -> Crate {
        let mut krate = Crate::default();
        let mut scanned: Vec<(PathBuf, Vec<String>, FileItems)> = Vec::new();
        // (file, module path, dir its `mod x;` children live in)
        let root_dir = root.parent().expect("root has a dir").to_path_buf();
        let mut todo = vec![(root.to_path_buf(), Vec::<String>::new(), root_dir)];
        while let Some((file, module, child_dir)) = todo.pop() {
            let src = std::fs::read_to_string(&file)
                .unwrap_or_else(|e| panic!("cannot read {}: {e}", file.display()));
            let items = scan(&strip(&src), &module);
            for child in &items.file_children {
                // Nested inline modules in between are directories too.
                let mut dir = child_dir.clone();
                for seg in &child[module.len()..child.len() - 1] {
                    dir.push(seg);
                }
                let name = child.last().expect("child has a name");
                let flat = dir.join(format!("{name}.rs"));
                let nested = dir.join(name).join("mod.rs");
                if flat.is_file() {
                    todo.push((flat, child.clone(), dir.join(name)));
                } else if nested.is_file() {
                    todo.push((nested, child.clone(), dir.join(name)));
                }
            }
            krate.modules.insert(module.clone());
            krate.modules.extend(items.inline_modules.iter().cloned());
            krate.files.insert(module.clone(), file.clone());
            scanned.push((file, module, items));
        }
        for (file, _, items) in scanned {
            let refs = items
                .paths
                .iter()
                .filter_map(|p| {
                    krate
                        .resolve(&p.module, &p.segments)
                        .map(|target| Reference {
                            line: p.line,
                            target,
                            written: p.segments.join("::"),
                        })
                })
                .collect();
            krate.references.insert(file, refs);
        }
        krate
    }

    /// The absolute module path `segments` names from `module`, if it is
    /// inside this crate.
    fn resolve(&self, module: &[String], segments: &[String]) -> Option<Vec<String>> {
        let first = segments.first()?.as_str();
        let (mut base, mut rest) = match first {
            "crate" | "$crate" => (Vec::new(), &segments[1..]),
            "self" => (module.to_vec(), &segments[1..]),
            "super" => (module.to_vec(), segments),
            _ => {
                // A bare path: only a child module of `module` is ours.
                let mut child = module.to_vec();
                child.push(first.to_string());
                if !self.modules.contains(&child) {
                    return None;
                }
                (module.to_vec(), segments)
            }
        };
        while rest.first().is_some_and(|s| s == "super") {
            base.pop()?;
            rest = &rest[1..];
        }
        base.extend(rest.iter().cloned());
        Some(base)
    }

    /// The file a resolved module path lands in: the longest prefix that
    /// is a file module.
    fn file_of(&self, target: &[String]) -> &Path {
        (0..=target.len())
            .rev()
            .find_map(|n| self.files.get(&target[..n]))
            .expect("the crate root is a file")
    }

    /// File → file → the first line in the source that makes the edge.
    fn graph(&self) -> BTreeMap<PathBuf, BTreeMap<PathBuf, usize>> {
        let mut g: BTreeMap<PathBuf, BTreeMap<PathBuf, usize>> = BTreeMap::new();
        for (file, refs) in &self.references {
            let out = g.entry(file.clone()).or_default();
            for r in refs {
                let to = self.file_of(&r.target);
                if to != file {
                    let line = out.entry(to.to_path_buf()).or_insert(r.line);
                    *line = (*line).min(r.line);
                }
            }
        }
        g
    }
}

/// Every elementary cycle of `g`, each as its files in order starting from
/// the smallest; at most `limit` of them.
fn cycles(g: &BTreeMap<PathBuf, BTreeMap<PathBuf, usize>>, limit: usize) -> Vec<Vec<PathBuf>> {
    let nodes: Vec<&PathBuf> = g.keys().collect();
    let index: BTreeMap<&PathBuf, usize> = nodes.iter().enumerate().map(|(i, n)| (*n, i)).collect();
    let succ: Vec<Vec<usize>> = nodes
        .iter()
        .map(|n| g[*n].keys().filter_map(|m| index.get(m).copied()).collect())
        .collect();
    let mut found = Vec::new();
    // Cycles whose smallest node is `start`: DFS through larger nodes only.
    fn dfs(
        start: usize,
        at: usize,
        succ: &[Vec<usize>],
        stack: &mut Vec<usize>,
        on: &mut [bool],
        found: &mut Vec<Vec<usize>>,
        limit: usize,
    ) {
        for &next in &succ[at] {
            if found.len() >= limit {
                return;
            }
            if next == start {
                found.push(stack.clone());
            } else if next > start && !on[next] {
                on[next] = true;
                stack.push(next);
                dfs(start, next, succ, stack, on, found, limit);
                stack.pop();
                on[next] = false;
            }
        }
    }
    let mut raw = Vec::new();
    for start in 0..nodes.len() {
        let mut on = vec![false; nodes.len()];
        on[start] = true;
        dfs(
            start,
            start,
            &succ,
            &mut vec![start],
            &mut on,
            &mut raw,
            limit,
        );
    }
    for c in raw {
        found.push(c.into_iter().map(|i| nodes[i].clone()).collect());
    }
    found
}

// ---------------------------------------------------------------------------
// The rules.

/// The crates below `src`: `main.rs`, `lib.rs` and each `bin/*.rs` is a
/// root of its own.
fn crate_roots(src: &Path) -> Vec<PathBuf> {
    let mut roots: Vec<PathBuf> = ["lib.rs", "main.rs"]
        .iter()
        .map(|f| src.join(f))
        .filter(|p| p.is_file())
        .collect();
    if let Ok(dir) = std::fs::read_dir(src.join("bin")) {
        let mut bins: Vec<PathBuf> = dir
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "rs"))
            .collect();
        bins.sort();
        roots.extend(bins);
    }
    roots
}

fn shown(root: &Path, file: &Path) -> String {
    file.strip_prefix(root)
        .unwrap_or(file)
        .display()
        .to_string()
}

/// Rule 1 for one crate: mechanism modules that refer to `crate::cri`.
fn upward_references(krate: &Crate, root: &Path) -> Vec<String> {
    let mut problems = Vec::new();
    for (module, file) in &krate.files {
        if !module
            .first()
            .is_some_and(|m| MECHANISM.contains(&m.as_str()))
        {
            continue;
        }
        for r in &krate.references[file] {
            if r.target.first().is_some_and(|m| m == "cri") {
                problems.push(format!(
                    "{}:{}: `{}` reaches up into the CRI layer (crate::cri); mechanism modules ({}) must not depend on cri/",
                    shown(root, file),
                    r.line,
                    r.written,
                    MECHANISM.join(", ")
                ));
            }
        }
    }
    problems
}

/// Rule 2 for one crate: its import circles, each with the line of every
/// edge.
fn circles(krate: &Crate, root: &Path) -> (usize, usize, Vec<String>) {
    let g = krate.graph();
    let edges = g.values().map(BTreeMap::len).sum();
    let found = cycles(&g, 200);
    let problems = found
        .iter()
        .map(|c| {
            let mut steps = Vec::new();
            for (k, file) in c.iter().enumerate() {
                let next = &c[(k + 1) % c.len()];
                steps.push(format!(
                    "{}:{} → {}",
                    shown(root, file),
                    g[file][next],
                    shown(root, next)
                ));
            }
            format!(
                "import circle of {} files: [{}]\n      {}",
                c.len(),
                c.iter()
                    .map(|f| shown(root, f))
                    .collect::<Vec<_>>()
                    .join(", "),
                steps.join("\n      ")
            )
        })
        .collect();
    (g.len(), edges, problems)
}

/// Both rules over the crates under `root/<dir>` for each of `dirs`;
/// `mechanism_dir` is the crate checked for rule 1. Returns the problems.
fn check(root: &Path, dirs: &[&str], mechanism_dir: &str) -> Vec<String> {
    let mut problems = Vec::new();
    for dir in dirs {
        let src = root.join(dir);
        let roots = crate_roots(&src);
        assert!(!roots.is_empty(), "no crate root in {}", src.display());
        for crate_root in roots {
            let krate = Crate::load(&crate_root);
            let (files, edges, circles) = circles(&krate, root);
            println!(
                "{}: {files} files, {edges} file-to-file edges, {} import circle(s)",
                shown(root, &crate_root),
                circles.len()
            );
            if *dir == mechanism_dir {
                problems.extend(upward_references(&krate, root));
            }
            problems.extend(
                circles
                    .into_iter()
                    .map(|c| format!("{}: {c}", shown(root, &crate_root))),
            );
        }
    }
    problems
}

#[test]
fn layers_run_one_way() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace")
        .to_path_buf();
    let problems = check(
        &root,
        &["runtime/src", "shim/src", "guest-agent/src", "vmm/src"],
        "runtime/src",
    );
    assert!(
        problems.is_empty(),
        "{} layering problem(s):\n  {}\n\nFix: move what both files need into the lower one, or into a small module both use; \
         mechanism modules report errors through crate::error, never through cri/.",
        problems.len(),
        problems.join("\n  ")
    );
}

// ---------------------------------------------------------------------------
// The checker itself, on a synthetic tree with known problems.

fn write(dir: &Path, file: &str, text: &str) {
    let path = dir.join(file);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

#[test]
fn checker_finds_circles_and_upward_references() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("runtime/src");
    write(
        &src,
        "main.rs",
        "mod cri;\nmod sandbox;\nmod a;\nmod b;\nmod c;\nmod d;\nfn main() {}\n",
    );
    // a → b → c/mod.rs → a: a circle through a grouped, nested `use`, a
    // `super::` path and a plain expression path.
    write(
        &src,
        "a.rs",
        "use crate::{d, b::{self as bee, X}};\npub fn f() { bee::g(); }\n",
    );
    write(
        &src,
        "b.rs",
        "pub struct X;\npub fn g() { super::c::h(); }\n",
    );
    write(
        &src,
        "c/mod.rs",
        "mod leaf;\npub fn h() {\n    let _ = \"crate::d in a string\";\n    crate::a::f();\n}\n",
    );
    // The child's `use super::*` makes no circle with its parent, whose
    // `mod leaf;` is no edge.
    write(&src, "c/leaf.rs", "use super::*;\n");
    // Things that must not count: comments, strings, raw strings, char
    // literals, and `super::*` inside an inline test module (its own file).
    write(
        &src,
        "d.rs",
        concat!(
            "// use crate::a;\n",
            "/* crate::b::X /* nested */ crate::a */\n",
            "const S: &str = r#\"crate::a::f \"quoted\" \"#;\n",
            "const Q: char = '\"'; const T: &str = \"crate::b\";\n",
            "pub fn lifetime<'a>(x: &'a str) -> &'a str { x }\n",
            "#[cfg(test)]\nmod tests {\n    use super::*;\n}\n",
        ),
    );
    write(&src, "cri/mod.rs", "pub mod sandbox;\n");
    write(
        &src,
        "cri/sandbox.rs",
        "pub fn store_err() {}\npub fn run() { crate::sandbox::boot(); }\n",
    );
    write(
        &src,
        "sandbox/mod.rs",
        "pub mod boot;\npub use boot::boot;\n",
    );
    write(
        &src,
        "sandbox/boot.rs",
        "use std::fmt;\n\npub fn boot() {\n    super::super::cri::sandbox::store_err();\n}\n",
    );

    let krate = Crate::load(&src.join("main.rs"));
    assert_eq!(krate.files.len(), 10, "{:?}", krate.files.keys());
    let g = krate.graph();
    let edge = |from: &str, to: &str| g[&src.join(from)].get(&src.join(to)).copied();
    assert_eq!(edge("a.rs", "b.rs"), Some(1));
    assert_eq!(edge("a.rs", "d.rs"), Some(1));
    assert_eq!(edge("b.rs", "c/mod.rs"), Some(2));
    assert_eq!(edge("c/mod.rs", "a.rs"), Some(4));
    assert_eq!(
        edge("c/mod.rs", "c/leaf.rs"),
        None,
        "`mod leaf;` is no edge"
    );
    assert_eq!(edge("c/leaf.rs", "c/mod.rs"), Some(1));
    assert!(
        g[&src.join("d.rs")].is_empty(),
        "comments, literals and the inline test module count for nothing: {:?}",
        g[&src.join("d.rs")]
    );
    assert_eq!(edge("sandbox/mod.rs", "sandbox/boot.rs"), Some(2));
    assert_eq!(edge("sandbox/boot.rs", "cri/sandbox.rs"), Some(4));
    assert_eq!(edge("cri/sandbox.rs", "sandbox/boot.rs"), Some(2));

    let problems = check(tmp.path(), &["runtime/src"], "runtime/src");
    let text = problems.join("\n");
    assert_eq!(problems.len(), 3, "{text}");
    assert!(
        text.contains("runtime/src/sandbox/boot.rs:4: `super::super::cri::sandbox::store_err`"),
        "{text}"
    );
    assert!(
        text.contains(
            "import circle of 3 files: [runtime/src/a.rs, runtime/src/b.rs, runtime/src/c/mod.rs]"
        ),
        "{text}"
    );
    assert!(
        text.contains("runtime/src/c/mod.rs:4 → runtime/src/a.rs"),
        "{text}"
    );
    assert!(
        text.contains(
            "import circle of 2 files: [runtime/src/cri/sandbox.rs, runtime/src/sandbox/boot.rs]"
        ),
        "{text}"
    );
}

#[test]
fn strip_keeps_lines_and_code() {
    let s = strip("a /* x\ny */ b // c\n\"d\\\"e\" 'f' '\\'' 'g: r##\"h\"#\"## i");
    assert_eq!(s.lines().count(), 3);
    assert!(s.contains('a') && s.contains('b') && s.contains('i') && s.contains("'g"));
    for gone in ['x', 'y', 'c', 'd', 'e', 'f', 'h'] {
        assert!(!s.contains(gone), "{gone:?} left in {s:?}");
    }
}
