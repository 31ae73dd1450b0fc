//! The job's workspace source: the directory of the pipeline file packed as
//! an uncompressed POSIX tar archive, as Jenkins checks out the repository
//! before the first step.
//!
//! [`pack_directory`] is the client side (`hodei run`): it walks the
//! directory honouring `.gitignore` and `.hodeiignore` files (gitignore
//! syntax, also in subdirectories and in parent directories), skips `.git/`,
//! never follows a symbolic link, keeps links that stay inside the tree as
//! links and leaves out those that point elsewhere (reported back), and
//! refuses a directory whose archive would exceed the limit before reading
//! any file, naming the size, the limit, the largest entries and how to
//! exclude them.
//!
//! [`check_archive`] is the server side: it checks a received archive's
//! size against the limit and that every entry and link stays inside the
//! workspace, without writing anything.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Read;
use std::path::{Component, Path, PathBuf};

/// Name of Hodei's own ignore file (gitignore syntax).
pub const HODEI_IGNORE: &str = ".hodeiignore";

/// Size of a tar block; every header and every file's data take whole blocks.
const BLOCK: u64 = 512;

/// Why a directory could not be packed or an archive was refused.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The directory to pack does not exist or is not a directory.
    #[error("source directory {dir}: expected a directory: {source}")]
    NotADirectory {
        /// The directory.
        dir: PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
    /// Walking the tree failed (unreadable directory, bad ignore file).
    #[error("source directory {dir}: {message}")]
    Walk {
        /// The directory being packed.
        dir: PathBuf,
        /// The walker's message, naming the path.
        message: String,
    },
    /// A file or link could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
    /// The packed directory is larger than the limit.
    #[error(
        "the source in {dir} is {} packed, over the limit of {} (max_source_bytes){}; \
         exclude files with a {HODEI_IGNORE} file in {dir} (gitignore syntax) or raise max_source_bytes",
        Bytes(*size), Bytes(*limit), largest_list(largest)
    )]
    TooLarge {
        /// The directory.
        dir: PathBuf,
        /// The archive's size in bytes.
        size: u64,
        /// The limit in bytes.
        limit: u64,
        /// The largest top-level entries with their packed sizes, largest first.
        largest: Vec<(String, u64)>,
    },
    /// A received archive is larger than the limit.
    #[error("source archive is {} bytes, over the limit of {} bytes (max_source_bytes)", .size, .limit)]
    ArchiveTooLarge {
        /// The archive's size in bytes.
        size: u64,
        /// The limit in bytes.
        limit: u64,
    },
    /// A received archive is not a readable tar archive.
    #[error("source archive: expected a tar archive: {0}")]
    Archive(std::io::Error),
    /// A received archive has an entry or link that leaves the workspace.
    #[error("source archive entry {entry:?}: {message}")]
    UnsafeEntry {
        /// The entry's path as written in the archive.
        entry: String,
        /// What is wrong with it.
        message: String,
    },
}

fn largest_list(largest: &[(String, u64)]) -> String {
    if largest.is_empty() {
        return String::new();
    }
    let items: Vec<String> = largest
        .iter()
        .map(|(name, size)| format!("{name} ({})", Bytes(*size)))
        .collect();
    format!("; largest: {}", items.join(", "))
}

/// A byte count printed with a binary unit: `512 B`, `3.0 KiB`, `70.2 MiB`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bytes(pub u64);

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
        if self.0 < 1024 {
            return write!(f, "{} B", self.0);
        }
        // Tenths of the unit, in integers so the rounding is exact.
        let mut unit = 0;
        let mut scale: u128 = 1024;
        while unit + 1 < UNITS.len() && u128::from(self.0) >= scale * 1024 {
            scale *= 1024;
            unit += 1;
        }
        let tenths = (u128::from(self.0) * 10 + scale / 2) / scale;
        write!(f, "{}.{} {}", tenths / 10, tenths % 10, UNITS[unit])
    }
}

/// A packed directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackedSource {
    /// The tar archive.
    pub archive: Vec<u8>,
    /// Regular files packed.
    pub files: usize,
    /// Symbolic links left out because they point out of the tree (or are
    /// absolute), with their targets.
    pub skipped_links: Vec<(PathBuf, PathBuf)>,
}

/// What one walked entry becomes in the archive.
#[derive(Debug)]
enum Item {
    Dir,
    File { size: u64 },
    Link { target: PathBuf },
}

/// Packs `dir` into a tar archive of at most `max_bytes` bytes; see the
/// module documentation for what is left out.
///
/// # Errors
/// [`SourceError::TooLarge`] (before any file is read) when the archive
/// would exceed `max_bytes`; [`SourceError::NotADirectory`],
/// [`SourceError::Walk`] and [`SourceError::Io`] for unreadable input.
pub fn pack_directory(dir: &Path, max_bytes: u64) -> Result<PackedSource, SourceError> {
    let meta = std::fs::metadata(dir).map_err(|source| SourceError::NotADirectory {
        dir: dir.to_owned(),
        source,
    })?;
    if !meta.is_dir() {
        return Err(SourceError::NotADirectory {
            dir: dir.to_owned(),
            source: std::io::Error::other("it is a file"),
        });
    }

    let mut walker = ignore::WalkBuilder::new(dir);
    walker
        .standard_filters(false)
        .hidden(false)
        .parents(true)
        .ignore(false)
        .git_ignore(true)
        .git_exclude(true)
        .git_global(false)
        .require_git(false)
        .follow_links(false)
        .add_custom_ignore_filename(HODEI_IGNORE)
        .sort_by_file_name(|a, b| a.cmp(b))
        .filter_entry(|entry| entry.depth() == 0 || entry.file_name() != ".git");

    let mut items: Vec<(PathBuf, Item)> = Vec::new();
    let mut skipped_links = Vec::new();
    for entry in walker.build() {
        let entry = entry.map_err(|e| SourceError::Walk {
            dir: dir.to_owned(),
            message: e.to_string(),
        })?;
        if entry.depth() == 0 {
            continue;
        }
        let path = entry.path();
        let Ok(relative) = path.strip_prefix(dir) else {
            continue;
        };
        let relative = relative.to_owned();
        let io = |source| SourceError::Io {
            path: path.to_owned(),
            source,
        };
        let meta = std::fs::symlink_metadata(path).map_err(io)?;
        let file_type = meta.file_type();
        if file_type.is_symlink() {
            let target = std::fs::read_link(path).map_err(io)?;
            if link_stays_inside(&relative, &target) {
                items.push((relative, Item::Link { target }));
            } else {
                skipped_links.push((relative, target));
            }
        } else if file_type.is_dir() {
            items.push((relative, Item::Dir));
        } else if file_type.is_file() {
            items.push((relative, Item::File { size: meta.len() }));
        }
        // Sockets, FIFOs and devices are not source: left out.
    }

    // The archive's exact size, from the metadata alone.
    let mut by_top: BTreeMap<String, u64> = BTreeMap::new();
    let mut total = 2 * BLOCK;
    for (path, item) in &items {
        let size = entry_size(path, item);
        total += size;
        let top = match path.components().next() {
            Some(Component::Normal(name)) => {
                let mut name = name.to_string_lossy().into_owned();
                if path.components().count() > 1 || matches!(item, Item::Dir) {
                    name.push('/');
                }
                name
            }
            _ => continue,
        };
        *by_top.entry(top).or_default() += size;
    }
    let too_large = |size: u64| {
        let mut largest: Vec<(String, u64)> = by_top.clone().into_iter().collect();
        largest.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        largest.truncate(3);
        SourceError::TooLarge {
            dir: dir.to_owned(),
            size,
            limit: max_bytes,
            largest,
        }
    };
    if total > max_bytes {
        return Err(too_large(total));
    }

    let capacity = usize::try_from(total).unwrap_or(0);
    let mut builder = tar::Builder::new(Vec::with_capacity(capacity));
    builder.follow_symlinks(false);
    let mut files = 0;
    for (relative, item) in &items {
        let path = dir.join(relative);
        let io = |source| SourceError::Io {
            path: path.clone(),
            source,
        };
        let meta = std::fs::symlink_metadata(&path).map_err(io)?;
        let mut header = tar::Header::new_gnu();
        header.set_metadata_in_mode(&meta, tar::HeaderMode::Deterministic);
        if let Ok(modified) = meta.modified()
            && let Ok(since) = modified.duration_since(std::time::UNIX_EPOCH)
        {
            header.set_mtime(since.as_secs());
        }
        match item {
            Item::Dir => {
                header.set_size(0);
                builder
                    .append_data(&mut header, relative, std::io::empty())
                    .map_err(io)?;
            }
            Item::Link { target } => {
                header.set_size(0);
                builder
                    .append_link(&mut header, relative, target)
                    .map_err(io)?;
            }
            Item::File { size } => {
                let file = std::fs::File::open(&path).map_err(io)?;
                // The header carries the size seen while walking; a file that
                // changed since is cut or refused rather than corrupting the
                // archive.
                header.set_size(*size);
                let mut data = file.take(*size);
                builder
                    .append_data(&mut header, relative, &mut data)
                    .map_err(io)?;
                files += 1;
            }
        }
    }
    let archive = builder.into_inner().map_err(|source| SourceError::Io {
        path: dir.to_owned(),
        source,
    })?;
    let size = archive.len() as u64;
    if size > max_bytes {
        return Err(too_large(size));
    }
    Ok(PackedSource {
        archive,
        files,
        skipped_links,
    })
}

/// Bytes one entry takes in a GNU tar archive: its header, a long-name
/// entry when the path does not fit in the header, and its data in blocks.
fn entry_size(path: &Path, item: &Item) -> u64 {
    let blocks = |n: u64| n.div_ceil(BLOCK) * BLOCK;
    let name_len = path.as_os_str().len() as u64;
    let mut size = BLOCK;
    if name_len >= 100 {
        size += BLOCK + blocks(name_len + 1);
    }
    match item {
        Item::File { size: data } => size + blocks(*data),
        Item::Link { target } => {
            let len = target.as_os_str().len() as u64;
            if len >= 100 {
                size + BLOCK + blocks(len + 1)
            } else {
                size
            }
        }
        Item::Dir => size,
    }
}

/// True when a link at `link` (relative to the root) with target `target`
/// resolves, lexically, to a path inside the root.
fn link_stays_inside(link: &Path, target: &Path) -> bool {
    if target.is_absolute() {
        return false;
    }
    let mut depth: usize = link.components().count().saturating_sub(1);
    for component in target.components() {
        match component {
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            Component::ParentDir => match depth.checked_sub(1) {
                Some(d) => depth = d,
                None => return false,
            },
            Component::RootDir | Component::Prefix(_) => return false,
        }
    }
    true
}

/// What [`check_archive`] found in a valid archive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArchiveSummary {
    /// Entries of any kind.
    pub entries: usize,
    /// Bytes of file data.
    pub data_bytes: u64,
}

/// Checks a received source archive without unpacking it: at most
/// `max_bytes` long, a readable tar archive, and every entry path and link
/// target relative and inside the workspace.
///
/// # Errors
/// [`SourceError::ArchiveTooLarge`], [`SourceError::Archive`] or
/// [`SourceError::UnsafeEntry`] naming the entry.
pub fn check_archive(archive: &[u8], max_bytes: u64) -> Result<ArchiveSummary, SourceError> {
    let size = archive.len() as u64;
    if size > max_bytes {
        return Err(SourceError::ArchiveTooLarge {
            size,
            limit: max_bytes,
        });
    }
    let mut summary = ArchiveSummary {
        entries: 0,
        data_bytes: 0,
    };
    let mut reader = tar::Archive::new(archive);
    for entry in reader.entries().map_err(SourceError::Archive)? {
        let entry = entry.map_err(SourceError::Archive)?;
        let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let path = Path::new(&name);
        if path.is_absolute() || !link_stays_inside(Path::new(""), path) {
            return Err(SourceError::UnsafeEntry {
                entry: name,
                message: "expected a relative path inside the workspace".to_owned(),
            });
        }
        if let Some(target) = entry.link_name_bytes() {
            let target = String::from_utf8_lossy(&target).into_owned();
            let inside = if entry.header().entry_type().is_hard_link() {
                link_stays_inside(Path::new(""), Path::new(&target))
            } else {
                link_stays_inside(path, Path::new(&target))
            };
            if !inside {
                return Err(SourceError::UnsafeEntry {
                    entry: name,
                    message: format!("link target {target:?} leaves the workspace"),
                });
            }
        }
        summary.entries += 1;
        summary.data_bytes += entry.size();
    }
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn write(root: &Path, path: &str, text: &str) {
        let path = root.join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    /// The entry names of an archive, directories with a trailing `/`,
    /// links as `name -> target`.
    fn names(archive: &[u8]) -> BTreeSet<String> {
        let mut reader = tar::Archive::new(archive);
        reader
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let name = String::from_utf8_lossy(&e.path_bytes()).into_owned();
                match e.link_name().unwrap() {
                    Some(target) => format!("{name} -> {}", target.display()),
                    None if e.header().entry_type().is_dir() => format!("{name}/"),
                    None => name,
                }
            })
            .collect()
    }

    /// Packs a tree made of `files` and checks the archive's entry names.
    fn check(files: &[(&str, &str)], expected: &[&str]) {
        let dir = tempfile::tempdir().unwrap();
        for (path, text) in files {
            write(dir.path(), path, text);
        }
        let packed = pack_directory(dir.path(), 1 << 20).unwrap();
        let got = names(&packed.archive);
        let expected: BTreeSet<String> = expected.iter().map(|s| (*s).to_owned()).collect();
        assert_eq!(got, expected, "{files:?}");
        check_archive(&packed.archive, 1 << 20).unwrap();
    }

    #[test]
    fn ignore_files_are_honoured() {
        check(
            &[("Jenkinsfile", "pipeline {}"), ("src/main.c", "int main;")],
            &["Jenkinsfile", "src/", "src/main.c"],
        );
        check(
            &[
                (".gitignore", "target/\n*.log\n"),
                ("a.log", "x"),
                ("target/out", "x"),
                ("keep.txt", "x"),
            ],
            &[".gitignore", "keep.txt"],
        );
        check(
            &[
                (".hodeiignore", "big/\n"),
                ("big/blob", "x"),
                ("small", "x"),
            ],
            &[".hodeiignore", "small"],
        );
        // Nested ignore files apply below their directory; negation works.
        check(
            &[
                ("sub/.gitignore", "*.tmp\n!keep.tmp\n"),
                ("sub/a.tmp", "x"),
                ("sub/keep.tmp", "x"),
                ("b.tmp", "x"),
            ],
            &["b.tmp", "sub/", "sub/.gitignore", "sub/keep.tmp"],
        );
        // `.git/` is never sent; other dotfiles are.
        check(
            &[(".git/config", "x"), (".env.example", "A=1")],
            &[".env.example"],
        );
    }

    #[cfg(unix)]
    #[test]
    fn links_inside_are_kept_and_links_outside_are_left_out() {
        let outside = tempfile::tempdir().unwrap();
        write(outside.path(), "secret", "s3cret");
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        write(root, "real/file", "x");
        std::os::unix::fs::symlink("real/file", root.join("inside")).unwrap();
        std::os::unix::fs::symlink("real", root.join("alias")).unwrap();
        std::os::unix::fs::symlink("../inside", root.join("real/back")).unwrap();
        std::os::unix::fs::symlink("../../etc/passwd", root.join("real/up")).unwrap();
        std::os::unix::fs::symlink(outside.path(), root.join("outdir")).unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret"), root.join("abs")).unwrap();
        let packed = pack_directory(root, 1 << 20).unwrap();
        let got = names(&packed.archive);
        assert!(got.contains("inside -> real/file"), "{got:?}");
        assert!(got.contains("alias -> real"), "{got:?}");
        assert!(got.contains("real/back -> ../inside"), "{got:?}");
        assert!(
            !got.iter()
                .any(|n| n.contains("secret") || n.starts_with("outdir"))
        );
        assert!(
            !got.iter()
                .any(|n| n.starts_with("abs") || n.starts_with("real/up"))
        );
        let skipped: BTreeSet<String> = packed
            .skipped_links
            .iter()
            .map(|(p, _)| p.display().to_string())
            .collect();
        assert_eq!(
            skipped,
            ["abs", "outdir", "real/up"]
                .into_iter()
                .map(str::to_owned)
                .collect()
        );
        assert_eq!(packed.files, 1);
        // No byte of the file outside the tree is in the archive.
        let text = String::from_utf8_lossy(&packed.archive);
        assert!(!text.contains("s3cret"));
    }

    #[test]
    fn links_are_resolved_lexically() {
        fn check(link: &str, target: &str, inside: bool) {
            assert_eq!(
                link_stays_inside(Path::new(link), Path::new(target)),
                inside,
                "{link} -> {target}"
            );
        }
        check("a", "b", true);
        check("a", "./b/../c", true);
        check("a", "..", false);
        check("d/a", "../b", true);
        check("d/a", "../../b", false);
        check("d/a", "/etc/passwd", false);
        check("d/e/a", "../../x/../y", true);
    }

    #[test]
    fn the_limit_names_size_limit_largest_entries_and_the_way_out() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "data/blob", &"x".repeat(40_000));
        write(dir.path(), "notes.txt", &"y".repeat(3_000));
        write(dir.path(), "Jenkinsfile", "pipeline {}");
        let err = pack_directory(dir.path(), 10_000).unwrap_err();
        let SourceError::TooLarge {
            size,
            limit,
            largest,
            ..
        } = &err
        else {
            panic!("{err:?}");
        };
        assert_eq!(*limit, 10_000);
        assert!(*size > 43_000, "{size}");
        assert_eq!(largest[0].0, "data/");
        assert_eq!(largest[1].0, "notes.txt");
        let message = err.to_string();
        assert!(message.contains("over the limit of 9.8 KiB"), "{message}");
        assert!(
            message
                .contains("largest: data/ (40.5 KiB), notes.txt (3.5 KiB), Jenkinsfile (1.0 KiB);"),
            "{message}"
        );
        assert!(message.contains(".hodeiignore"), "{message}");
        // Exactly at the limit is fine: the estimate is the real size.
        let exact = pack_directory(dir.path(), *size).unwrap();
        assert_eq!(exact.archive.len() as u64, *size);
    }

    #[test]
    fn estimated_size_is_exact_for_long_names_and_links() {
        let dir = tempfile::tempdir().unwrap();
        let long = format!("{}/{}", "d".repeat(120), "f".repeat(150));
        write(dir.path(), &long, "abc");
        write(dir.path(), "empty", "");
        #[cfg(unix)]
        std::os::unix::fs::symlink("e".repeat(130), dir.path().join("lnk")).unwrap_or(());
        let packed = pack_directory(dir.path(), 1 << 20).unwrap();
        let size = packed.archive.len() as u64;
        assert!(pack_directory(dir.path(), size).is_ok());
        assert!(matches!(
            pack_directory(dir.path(), size - 1),
            Err(SourceError::TooLarge { .. })
        ));
    }

    #[test]
    fn a_file_is_not_a_directory() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "f", "x");
        let err = pack_directory(&dir.path().join("f"), 1 << 20).unwrap_err();
        assert!(err.to_string().contains("expected a directory"), "{err}");
        let err = pack_directory(&dir.path().join("missing"), 1 << 20).unwrap_err();
        assert!(err.to_string().contains("expected a directory"), "{err}");
    }

    #[test]
    fn bytes_are_printed_with_binary_units() {
        fn check(n: u64, expected: &str) {
            assert_eq!(Bytes(n).to_string(), expected);
        }
        check(0, "0 B");
        check(1023, "1023 B");
        check(1024, "1.0 KiB");
        check(1536, "1.5 KiB");
        check(64 * 1024 * 1024, "64.0 MiB");
        check(u64::MAX, "16384.0 PiB");
    }

    #[test]
    fn received_archives_are_checked() {
        fn archive(name: &[u8], link: Option<(&str, tar::EntryType)>) -> Vec<u8> {
            let mut header = tar::Header::new_gnu();
            let mut bytes = Vec::new();
            // Write the name raw so unsafe paths get through the builder.
            header.as_old_mut().name[..name.len()].copy_from_slice(name);
            header.set_size(0);
            header.set_mode(0o644);
            match link {
                Some((target, kind)) => {
                    header.set_entry_type(kind);
                    header.set_link_name(target).unwrap();
                }
                None => header.set_entry_type(tar::EntryType::Regular),
            }
            header.set_cksum();
            bytes.extend_from_slice(header.as_bytes());
            bytes.extend_from_slice(&[0; 1024]);
            bytes
        }
        let check = |bytes: Vec<u8>, expected: Result<usize, &str>| {
            let got = check_archive(&bytes, 1 << 20);
            match (got, expected) {
                (Ok(summary), Ok(n)) => assert_eq!(summary.entries, n),
                (Err(e), Err(text)) => {
                    assert!(e.to_string().contains(text), "{e} should contain {text}")
                }
                (got, expected) => panic!("{got:?} vs {expected:?}"),
            }
        };
        check(archive(b"a/b", None), Ok(1));
        check(
            archive(b"../x", None),
            Err("\"../x\": expected a relative path"),
        );
        check(archive(b"/etc/x", None), Err("expected a relative path"));
        check(
            archive(b"l", Some(("../../x", tar::EntryType::Symlink))),
            Err("link target \"../../x\" leaves the workspace"),
        );
        check(
            archive(b"d/l", Some(("../x", tar::EntryType::Symlink))),
            Ok(1),
        );
        check(
            archive(b"h", Some(("/etc/passwd", tar::EntryType::Link))),
            Err("leaves the workspace"),
        );
        check(
            b"not a tar archive at all".repeat(30),
            Err("source archive"),
        );
        let big = vec![0; 2048];
        assert!(matches!(
            check_archive(&big, 1024),
            Err(SourceError::ArchiveTooLarge {
                size: 2048,
                limit: 1024
            })
        ));
    }
}
