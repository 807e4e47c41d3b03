//! Docker 28's containerd image store answers a read with "not found" while another client removes
//! images or containers: "content digest sha256:…: not found", "rw layer snapshot not found for
//! container …", "snapshot … does not exist: not found" (seen on the daemon's own socket too), and
//! its image listing skips an image whose content it could not read at that moment. On a daemon
//! shared by many jobs, one job's removals must not fail another's reads, so read-only requests that
//! meet this answer are asked again, a few times.

use std::time::Duration;

/// How many times a read that met the race is sent in all.
pub const ATTEMPTS: u32 = 4;

/// Whether a daemon's error answer is the store race, not a real absence.
pub fn is_store_race(body: &[u8]) -> bool {
    let text = String::from_utf8_lossy(body);
    (text.contains("content digest sha256:") && text.contains("not found"))
        || text.contains("snapshot not found for container")
        || text.contains("does not exist: not found")
}

/// Whether an answer with this status, to attempt `attempt` (counting from 1), may be the race and
/// worth reading for it: only errors that read as "not found" (404, or 500 from some paths), and
/// only while attempts are left.
pub fn may_be_race(attempt: u32, status: u16) -> bool {
    attempt < ATTEMPTS && (status == 404 || status == 500)
}

/// The pause before attempt `attempt + 1` (attempts count from 1).
pub fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(100 * u64::from(attempt))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_races_are_told_from_real_absences() {
        assert!(is_store_race(br#"{"message":"content digest sha256:abc: not found"}"#));
        assert!(is_store_race(br#"{"message":"rw layer snapshot not found for container 12"}"#));
        assert!(is_store_race(br#"{"message":"snapshot sha256:1 does not exist: not found"}"#));
        assert!(!is_store_race(br#"{"message":"No such image: app:1"}"#));
    }
}
