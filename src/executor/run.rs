//! The run stage: streams one stage script into the job's container (bash when the image has it,
//! else sh, so alpine and busybox images work) and maps its exit status to the protocol's codes.
//!
//! `docker exec` forwards no signals, so on SIGTERM (the job cancelled or timed out) this stage
//! stops its own processes in the container itself: every process carrying the stage's marker in
//! its environment, and their descendants. The container stays, as `after_script` still needs it.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use hyper::StatusCode;
use tokio::signal::unix::{signal, SignalKind};

use super::docker::{DockerError, JobDocker};
use super::{current_job, live_job, Options, StageError, BUILD_CONTAINER, HELPER_CONTAINER};
use crate::docker::client::enc;

/// Runs the script read on stdin with bash if there is one, else sh.
const SHELL: &str = "if command -v bash >/dev/null 2>&1; then exec bash; fi; exec sh";

/// Stops the processes of one stage: those whose environment carries `CTPROXY_STAGE=$1`, and all
/// their descendants; TERM first, KILL for what still lives 10 s later. POSIX sh and /proc only.
const KILL_STAGE: &str = r#"n="$1"; all=" "
for d in /proc/[0-9]*; do
  p=${d#/proc/}; [ "$p" = "$$" ] && continue
  if tr '\0' '\n' < "$d/environ" 2>/dev/null | grep -qx "CTPROXY_STAGE=$n"; then all="$all$p "; fi
done
changed=1
while [ "$changed" = 1 ]; do
  changed=0
  for d in /proc/[0-9]*; do
    p=${d#/proc/}
    case "$all" in *" $p "*) continue;; esac
    pp=
    { while read -r k v; do if [ "$k" = PPid: ]; then pp=$v; break; fi; done < "$d/status"; } 2>/dev/null
    case "$all" in *" $pp "*) all="$all$p "; changed=1;; esac
  done
done
[ "$all" = " " ] && exit 0
kill -TERM $all 2>/dev/null
i=0
while [ $i -lt 20 ]; do
  alive=
  for p in $all; do
    s=; { read -r s < "/proc/$p/stat"; } 2>/dev/null || continue
    case "$s" in *") Z "*) ;; *) alive=1;; esac
  done
  [ -z "$alive" ] && exit 0
  sleep 0.5 2>/dev/null || sleep 1
  i=$((i+1))
done
kill -KILL $all 2>/dev/null
exit 0"#;

/// Stages the Docker executor runs in its helper container: they need git, git-lfs and
/// `gitlab-runner`, which a job image may lack.
fn is_predefined(stage: &str) -> bool {
    matches!(stage, "prepare_script" | "get_sources" | "clear_worktree" | "restore_cache" | "download_artifacts" | "cleanup_file_variables")
        || stage.starts_with("archive_cache")
        || stage.starts_with("upload_artifacts")
}

fn nonce() -> String {
    let mut b = [0u8; 8];
    // Uniqueness among this job's stages is all that is needed; fall back on the clock.
    if ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b).is_err() {
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
        b = (t ^ u64::from(std::process::id())).to_le_bytes();
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Runs `script` as stage `stage` (any name: unknown stages run in the job container).
pub async fn run(env: &BTreeMap<String, String>, opts: &Options, script: &Path, stage: &str) -> Result<(), StageError> {
    // Installed first: from here on SIGTERM is ours to handle, not a sudden death.
    let mut term = signal(SignalKind::terminate()).map_err(|e| StageError::system(format!("cannot handle SIGTERM: {e}")))?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| StageError::system(format!("cannot handle SIGINT: {e}")))?;
    let key = current_job(env)?;
    let job = live_job(&opts.control, &key).await?;
    let sys = |e: DockerError| StageError::system(e.to_string());
    let via_job = JobDocker::new(&job.socket).map_err(sys)?;
    let inspect = |name: &'static str| {
        let path = format!("/containers/{}/json", enc(name));
        let via_job = &via_job;
        async move { via_job.inspect(&path).await }
    };
    let mut target = None;
    if is_predefined(stage) {
        target = inspect(HELPER_CONTAINER).await.map_err(sys)?;
    }
    if target.is_none() {
        target = inspect(BUILD_CONTAINER).await.map_err(sys)?;
    }
    let container = target
        .as_ref()
        .and_then(|c| c.get("Id"))
        .and_then(|i| i.as_str())
        .map(str::to_owned)
        .ok_or_else(|| StageError::system(format!("the job container {BUILD_CONTAINER} is gone: was prepare run?")))?;
    // The script runs on the daemon's own socket when it is local: a stage in flight then survives
    // a restart of ctproxy. The container was found through the job's socket, so it is the job's.
    let docker = match job.daemon_socket() {
        Some(daemon) => JobDocker::new(&daemon).map_err(sys)?,
        None => via_job,
    };
    let container = container.as_str();
    let file =
        tokio::fs::File::open(script).await.map_err(|e| StageError::system(format!("cannot open the script {}: {e}", script.display())))?;
    let marker = nonce();
    let stage_env = [format!("CTPROXY_STAGE={marker}")];
    let exec = docker.exec(container, &["sh", "-c", SHELL], &stage_env, None, Some(file));
    tokio::pin!(exec);
    let result = tokio::select! {
        r = &mut exec => r,
        _ = term.recv() => return stop(&docker, container, &marker, exec).await,
        _ = int.recv() => return stop(&docker, container, &marker, exec).await,
    };
    match result {
        Ok(0) => Ok(()),
        Ok(code) if code > 0 => Err(StageError::Build { message: String::new(), exit_code: Some(code) }),
        Ok(code) => Err(StageError::system(format!("stage {stage}: the script's exit status is unknown ({code})"))),
        Err(DockerError::Refused { status: StatusCode::NOT_FOUND, message }) => {
            Err(StageError::system(format!("the job container is gone ({message})")))
        }
        Err(DockerError::Refused { status: StatusCode::CONFLICT, message }) => {
            Err(StageError::system(format!("the job container is not running ({message})")))
        }
        Err(e) => Err(StageError::system(e.to_string())),
    }
}

/// SIGTERM: stop the stage's processes in the container, let the exec's output drain, and exit.
async fn stop(
    docker: &JobDocker,
    container: &str,
    marker: &str,
    exec: std::pin::Pin<&mut impl std::future::Future<Output = Result<i64, DockerError>>>,
) -> Result<(), StageError> {
    eprintln!("ctproxy executor run: terminated: stopping this stage's processes");
    let kill = ["sh", "-c", KILL_STAGE, "kill-stage", marker];
    if let Err(e) = docker.exec(container, &kill, &[], Some("0"), None).await {
        eprintln!("ctproxy executor run: cannot stop the stage's processes: {e}");
    }
    let _ = tokio::time::timeout(Duration::from_secs(15), exec).await;
    Err(StageError::build("stage terminated"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn helper_stages() {
        for s in ["get_sources", "archive_cache_on_failure", "upload_artifacts_on_success", "cleanup_file_variables"] {
            assert!(is_predefined(s), "{s}");
        }
        for s in ["build_script", "step_release", "after_script", "step_anything_new"] {
            assert!(!is_predefined(s), "{s}");
        }
        assert_ne!(nonce(), nonce());
    }
}
