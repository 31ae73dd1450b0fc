//! Per-job workspaces: naming, creating, unpacking the job's source and
//! resolving paths that steps give relative to the workspace.

use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};
use std::sync::Mutex;

/// A workspace or source problem.
#[derive(Debug, thiserror::Error)]
pub enum WorkspaceError {
    /// A path from the server was absolute or climbed out with `..`.
    #[error("{what} {path:?}: expected a relative path without '..'")]
    UnsafePath {
        /// Which field or archive entry.
        what: &'static str,
        /// The offending path.
        path: String,
    },
    /// The source archive could not be read or an entry could not be written.
    #[error("source archive entry {entry:?}: {source}")]
    Entry {
        /// The entry's path as written in the archive.
        entry: String,
        /// What went wrong.
        source: std::io::Error,
    },
    /// The source archive is not a readable tar archive.
    #[error("source archive: {0}")]
    Archive(std::io::Error),
    /// A directory or file could not be created.
    #[error("{path}: {source}")]
    Io {
        /// The path involved.
        path: PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
}

/// The directory name of a segment's workspace: the job name, build number
/// and segment id with every character outside `[A-Za-z0-9._-]` replaced.
pub fn workspace_dir_name(job_name: &str, build_number: u64, segment_id: &str) -> String {
    fn clean(text: &str) -> String {
        let cleaned: String = text
            .chars()
            .take(80)
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        match cleaned.trim_start_matches('.') {
            "" => "job".to_owned(),
            rest => rest.to_owned(),
        }
    }
    format!("{}-{}-{}", clean(job_name), build_number, clean(segment_id))
}

/// The workspace this process moved into with [`enter`], if any.
static ENTERED: Mutex<Option<PathBuf>> = Mutex::new(None);

/// Makes the workspace `dir` this process's working directory, when the
/// worker is the whole process and `dir` is absolute; a worker inside
/// another program leaves its host's directory alone.
///
/// A step that runs in the directory the process is in is started without
/// a change of directory ([`starts_here`]), and that lets Rust's standard
/// library start `sh` with `posix_spawn` (a `vfork`) rather than a `fork`
/// that copies the worker's page tables: the static worker's C library
/// offers no `posix_spawn_file_actions_addchdir_np` for it to find, so a
/// step given a directory is always forked.
pub(crate) fn enter(dir: &Path) {
    if !crate::whole_process() || !dir.is_absolute() {
        return;
    }
    let mut entered = ENTERED.lock().unwrap_or_else(|e| e.into_inner());
    match std::env::set_current_dir(dir) {
        Ok(()) => *entered = Some(dir.to_owned()),
        Err(e) => {
            tracing::debug!(dir = %dir.display(), error = %e, "staying out of the workspace");
            *entered = None;
        }
    }
}

/// Leaves the workspace [`enter`] moved into (for `/`), before it is
/// removed.
pub(crate) fn leave() {
    let mut entered = ENTERED.lock().unwrap_or_else(|e| e.into_inner());
    if entered.take().is_some() {
        let _ = std::env::set_current_dir("/");
    }
}

/// Whether a step in `dir` can start without a change of directory: this
/// process moved into `dir` with [`enter`] and is still in it. A step may
/// have removed the workspace and made it again, leaving the process in the
/// removed directory: it then moves into the new one (and answers `false`
/// if it cannot).
pub(crate) fn starts_here(dir: &Path) -> bool {
    let entered = ENTERED.lock().unwrap_or_else(|e| e.into_inner());
    if entered.as_deref() != Some(dir) {
        return false;
    }
    let same = match (std::fs::metadata("."), std::fs::metadata(dir)) {
        (Ok(here), Ok(there)) => here.dev() == there.dev() && here.ino() == there.ino(),
        _ => false,
    };
    same || std::env::set_current_dir(dir).is_ok()
}

/// Checks that `path` is relative and has no `..`, returning its normal
/// components joined (`./a//b` becomes `a/b`; empty stays empty).
pub fn relative_path(what: &'static str, path: &str) -> Result<PathBuf, WorkspaceError> {
    let mut out = PathBuf::new();
    for component in Path::new(path).components() {
        match component {
            Component::Normal(part) => out.push(part),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => {
                return Err(WorkspaceError::UnsafePath {
                    what,
                    path: path.to_owned(),
                });
            }
        }
    }
    Ok(out)
}

/// Creates `root/name` afresh (removing what an earlier run left there).
pub fn create_workspace(root: &Path, name: &str) -> Result<PathBuf, WorkspaceError> {
    let dir = root.join(name);
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(|source| WorkspaceError::Io {
            path: dir.clone(),
            source,
        })?;
    }
    std::fs::create_dir_all(&dir).map_err(|source| WorkspaceError::Io {
        path: dir.clone(),
        source,
    })?;
    Ok(dir)
}

/// [`create_workspace`] without a thread in the common case: a fresh
/// directory is one `mkdir`, made on the calling thread; only when an
/// earlier run left the directory behind (or the root is missing) does the
/// work go to the blocking pool. A worker lives for one job, and starting a
/// blocking-pool thread costs more than the job's own `mkdir`.
pub(crate) async fn create_workspace_async(
    root: &Path,
    name: &str,
) -> Result<PathBuf, WorkspaceError> {
    let dir = root.join(name);
    if std::fs::create_dir(&dir).is_ok() {
        return Ok(dir);
    }
    let (root, name) = (root.to_owned(), name.to_owned());
    tokio::task::spawn_blocking(move || create_workspace(&root, &name))
        .await
        .unwrap_or_else(|e| {
            Err(WorkspaceError::Io {
                path: dir,
                source: std::io::Error::other(e),
            })
        })
}

/// [`remove_workspace`] without a thread when the workspace is empty (one
/// `rmdir` on the calling thread); a workspace with files in it is removed
/// on the blocking pool.
pub(crate) async fn remove_workspace_async(dir: PathBuf) -> Result<(), WorkspaceError> {
    match std::fs::remove_dir(&dir) {
        Ok(()) => return Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(_) => {}
    }
    let path = dir.clone();
    tokio::task::spawn_blocking(move || remove_workspace(&dir))
        .await
        .unwrap_or_else(|e| {
            Err(WorkspaceError::Io {
                path,
                source: std::io::Error::other(e),
            })
        })
}

/// Unpacks a tar archive into `dest`. Every entry must have a relative path
/// without `..`: the first one that does not makes the whole unpack fail
/// with its name (entries before it stay written). Links may not point out
/// of `dest` either (the `tar` crate checks that). Returns the number of
/// entries written.
pub fn unpack_source(archive: impl Read, dest: &Path) -> Result<usize, WorkspaceError> {
    let mut archive = tar::Archive::new(archive);
    archive.set_overwrite(true);
    archive.set_preserve_mtime(true);
    let mut count = 0;
    for entry in archive.entries().map_err(WorkspaceError::Archive)? {
        let mut entry = entry.map_err(WorkspaceError::Archive)?;
        let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        relative_path("source archive entry", &name)?;
        if let Some(link) = entry.link_name_bytes()
            && entry.header().entry_type().is_hard_link()
        {
            relative_path("source archive link", &String::from_utf8_lossy(&link))?;
        }
        let written = entry
            .unpack_in(dest)
            .map_err(|source| WorkspaceError::Entry {
                entry: name.clone(),
                source,
            })?;
        if !written {
            return Err(WorkspaceError::UnsafePath {
                what: "source archive entry",
                path: name,
            });
        }
        count += 1;
    }
    Ok(count)
}

/// Removes a workspace; a missing one is fine.
pub fn remove_workspace(dir: &Path) -> Result<(), WorkspaceError> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(WorkspaceError::Io {
            path: dir.to_owned(),
            source: e,
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a tar archive by hand so that unsafe names (which the `tar`
    /// builder refuses) can be written too.
    pub(crate) fn raw_tar(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        for (name, data) in entries {
            let mut header = tar::Header::new_old();
            let bytes = name.as_bytes();
            header.as_old_mut().name[..bytes.len()].copy_from_slice(bytes);
            header.set_size(data.len() as u64);
            header.set_mode(0o644);
            header.set_entry_type(tar::EntryType::Regular);
            header.set_cksum();
            out.extend_from_slice(header.as_bytes());
            out.extend_from_slice(data);
            out.resize(out.len().div_ceil(512) * 512, 0);
        }
        out.resize(out.len() + 1024, 0);
        out
    }

    #[test]
    fn relative_paths() {
        fn check(input: &str, expected: Option<&str>) {
            let got = relative_path("dir", input).ok();
            assert_eq!(got.as_deref(), expected.map(Path::new), "{input:?}");
        }
        check("", Some(""));
        check("a/b", Some("a/b"));
        check("./a//b/", Some("a/b"));
        check("a/../b", None);
        check("..", None);
        check("/etc", None);
    }

    #[test]
    fn unpacks_files_and_rejects_escapes() {
        fn check(entries: &[(&str, &[u8])], expected: Result<usize, &str>) {
            let dir = tempfile::tempdir().unwrap();
            let got = unpack_source(&raw_tar(entries)[..], dir.path()).map_err(|e| e.to_string());
            match (&got, &expected) {
                (Ok(n), Ok(m)) => assert_eq!(n, m),
                (Err(e), Err(prefix)) => assert!(e.starts_with(prefix), "got {e:?}"),
                _ => panic!("{entries:?}: got {got:?}, expected {expected:?}"),
            }
            assert!(!dir.path().parent().unwrap().join("evil").exists());
        }
        check(&[("a.txt", b"a"), ("sub/b.txt", b"bb")], Ok(2));
        check(
            &[("ok.txt", b"a"), ("../evil", b"x")],
            Err("source archive entry \"../evil\": expected a relative path without '..'"),
        );
        check(
            &[("sub/../../evil", b"x")],
            Err("source archive entry \"sub/../../evil\": expected a relative path"),
        );
        check(
            &[("/tmp/evil", b"x")],
            Err("source archive entry \"/tmp/evil\": expected a relative path"),
        );
    }

    #[test]
    fn unpacked_content_is_there() {
        let dir = tempfile::tempdir().unwrap();
        unpack_source(&raw_tar(&[("sub/b.txt", b"hello")])[..], dir.path()).unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.path().join("sub/b.txt")).unwrap(),
            "hello"
        );
    }

    #[test]
    fn garbage_is_an_archive_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = unpack_source(&[1u8; 700][..], dir.path())
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("source archive"), "{err}");
    }

    proptest::proptest! {
        /// Whatever the server sends, unpacking answers with a count or an
        /// error and writes nothing outside the destination.
        #[test]
        fn unpacking_arbitrary_bytes_never_panics(
            bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..4096),
        ) {
            let parent = tempfile::tempdir().unwrap();
            let dest = parent.path().join("ws");
            std::fs::create_dir(&dest).unwrap();
            let _ = unpack_source(&bytes[..], &dest);
            let outside: Vec<_> = std::fs::read_dir(parent.path()).unwrap().collect();
            proptest::prop_assert_eq!(outside.len(), 1);
        }

        /// Entries with any name made of letters, dots and slashes land
        /// inside the destination or are refused.
        #[test]
        fn arbitrary_entry_names_stay_inside(names in proptest::collection::vec("[a./]{1,30}", 1..4)) {
            let parent = tempfile::tempdir().unwrap();
            let dest = parent.path().join("ws");
            std::fs::create_dir(&dest).unwrap();
            let entries: Vec<(&str, &[u8])> = names.iter().map(|n| (n.as_str(), &b"x"[..])).collect();
            let _ = unpack_source(&raw_tar(&entries)[..], &dest);
            let outside: Vec<_> = std::fs::read_dir(parent.path()).unwrap().collect();
            proptest::prop_assert_eq!(outside.len(), 1);
        }

        /// A path that passes the check stays inside the directory.
        #[test]
        fn accepted_paths_stay_inside(path in "[a-z./]{0,20}") {
            if let Ok(rel) = relative_path("dir", &path) {
                proptest::prop_assert!(rel.components().all(|c| matches!(c, Component::Normal(_))));
            }
        }
    }

    #[test]
    fn dir_names() {
        fn check(job: &str, build: u64, seg: &str, expected: &str) {
            assert_eq!(workspace_dir_name(job, build, seg), expected);
        }
        check("hello", 3, "s1", "hello-3-s1");
        check("my app/x", 1, "seg:1", "my_app_x-1-seg_1");
        check("..", 1, "..", "job-1-job");
        check("", 2, "a", "job-2-a");
    }
}
