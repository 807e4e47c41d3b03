//! The local cache of CI jobs, one host directory per GitLab project, kept by `ctproxy serve`
//! across jobs: gitlab-runner's `cache_dir` (`/cache` in the job) is that directory, so a job
//! restores what the previous job of the same project archived, and sees nothing of any other
//! project's.
//!
//! Layout under `[jobs] project_cache_dir` (root's, mode 0700):
//! `<slug>-<hash>/data` is what the job's containers mount (the job owns its content);
//! `<slug>-<hash>/used` is ctproxy's own marker, whose mtime says when a job last had the project's
//! cache (the job cannot touch it: only `data` is mounted). Projects are told apart by the SHA-256
//! of their path, so two paths that slug alike never share a directory.
//!
//! The size limit is kept when a job ends: while the whole cache is over `project_cache_max_bytes`,
//! the least recently used project that no live job holds is removed (its usage counted in disk
//! blocks, symbolic links never followed). A job can fill only its own project's directory; it is
//! the first to go if that alone passes the limit.

use std::collections::HashSet;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// The per-project cache directories of one server.
#[derive(Debug, Clone)]
pub struct ProjectCaches {
    root: PathBuf,
    max_bytes: u64,
}

/// A project's directory that eviction removed, for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Evicted {
    pub dir: String,
    pub bytes: u64,
}

impl ProjectCaches {
    pub fn new(root: PathBuf, max_bytes: u64) -> ProjectCaches {
        ProjectCaches { root, max_bytes }
    }

    /// The directory of project `project` (its path, or its id): created if missing, its use
    /// recorded now. This is what the job mounts at its cache directory.
    pub fn open(&self, project: &str) -> std::io::Result<PathBuf> {
        std::fs::create_dir_all(&self.root)?;
        std::fs::set_permissions(&self.root, std::fs::Permissions::from_mode(0o700))?;
        let dir = self.root.join(dir_name(project));
        let data = dir.join("data");
        std::fs::create_dir_all(&data)?;
        std::fs::write(dir.join("used"), project.as_bytes())?;
        Ok(data)
    }

    /// Removes least recently used projects, none of `in_use` (data directories of live jobs),
    /// until the whole cache fits its limit.
    pub fn evict(&self, in_use: &HashSet<PathBuf>) -> Vec<Evicted> {
        let Ok(entries) = std::fs::read_dir(&self.root) else { return Vec::new() };
        let mut projects: Vec<(SystemTime, PathBuf, u64)> = entries
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .map(|e| {
                let dir = e.path();
                let used = std::fs::metadata(dir.join("used")).and_then(|m| m.modified()).unwrap_or(SystemTime::UNIX_EPOCH);
                let bytes = disk_usage(&dir);
                (used, dir, bytes)
            })
            .collect();
        let mut total: u64 = projects.iter().map(|p| p.2).sum();
        projects.sort_by_key(|p| p.0);
        let mut evicted = Vec::new();
        for (_, dir, bytes) in projects {
            if total <= self.max_bytes {
                break;
            }
            if in_use.contains(&dir.join("data")) {
                continue;
            }
            match std::fs::remove_dir_all(&dir) {
                Ok(()) => {
                    total = total.saturating_sub(bytes);
                    let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                    evicted.push(Evicted { dir: name, bytes });
                }
                Err(e) => tracing::warn!(dir = %dir.display(), error = %e, "project cache not evicted"),
            }
        }
        evicted
    }
}

/// `group/sub/project` → `group-sub-project-<16 hex of its SHA-256>`: readable, and unique.
fn dir_name(project: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, project.as_bytes());
    let hash: String = digest.as_ref()[..8].iter().map(|b| format!("{b:02x}")).collect();
    let mut slug: String =
        project.chars().map(|c| if c.is_ascii_alphanumeric() || c == '.' || c == '_' { c.to_ascii_lowercase() } else { '-' }).collect();
    slug.truncate(64);
    let slug = slug.trim_matches(['-', '.']);
    if slug.is_empty() {
        hash
    } else {
        format!("{slug}-{hash}")
    }
}

/// Disk blocks used under `path`, without following symbolic links (a job's link to elsewhere
/// counts as the link only).
fn disk_usage(path: &Path) -> u64 {
    let Ok(meta) = std::fs::symlink_metadata(path) else { return 0 };
    let own = meta.blocks() * 512;
    if !meta.is_dir() {
        return own;
    }
    let Ok(entries) = std::fs::read_dir(path) else { return own };
    own + entries.flatten().map(|e| disk_usage(&e.path())).sum::<u64>()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn projects_get_their_own_directories() {
        assert_ne!(dir_name("a/b"), dir_name("a-b"));
        assert!(dir_name("Group/App").starts_with("group-app-"));
        assert_eq!(dir_name("..").len(), 16);
    }

    #[test]
    fn least_recently_used_projects_go_first() {
        let root = std::env::temp_dir().join(format!("ctproxy-pc-{}", std::process::id()));
        let caches = ProjectCaches::new(root.clone(), 300 << 10);
        let fill = |project: &str| {
            let data = caches.open(project).unwrap();
            std::fs::write(data.join("blob"), vec![1u8; 200 << 10]).unwrap();
            data
        };
        let old = fill("old/project");
        // mtime granularity: make the first clearly older.
        let past = SystemTime::now() - std::time::Duration::from_secs(60);
        std::fs::File::options().write(true).open(old.parent().unwrap().join("used")).unwrap().set_modified(past).unwrap();
        let new = fill("new/project");
        let evicted = caches.evict(&HashSet::new());
        assert_eq!(evicted.len(), 1, "{evicted:?}");
        assert!(!old.exists() && new.exists());
        // A project in use stays even when it alone is over the limit.
        std::fs::write(new.join("more"), vec![1u8; 200 << 10]).unwrap();
        assert!(caches.evict(&HashSet::from([new.clone()])).is_empty());
        assert_eq!(caches.evict(&HashSet::new()).len(), 1);
        std::fs::remove_dir_all(root).unwrap();
    }
}
