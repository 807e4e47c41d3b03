//! Temporary listeners: one unix socket per CI job, bound to a namespace of its own, owned by the
//! long-running `ctproxy serve` and driven over a root-only control socket.
//!
//! A job's socket (`<dir>/<id>/sock/docker.sock`) is what the job container mounts as
//! `/var/run/docker.sock`. It sits alone in its own directory so that the container can also mount
//! the directory: a socket re-created by a restarted ctproxy is a new file, which a bind mount of the
//! old file would never see, but a directory mount does. The job's listener redirects binds of the
//! Docker socket to this socket (a nested container that mounts `/var/run/docker.sock` gets the job's
//! socket, never the host's); everything created through it lives in the namespace `job-<id>` (the
//! prefix is configurable). Removing
//! the job stops the listener and destroys that namespace. Nothing is lost on a crash: each job has a
//! record (`<dir>/<id>/job.json`, with its deadline) from which a restarted ctproxy restores the
//! listeners of live jobs, and a reaper removes jobs past their deadline and any `job-*` namespace
//! (of this server's prefix) on the daemon that no live job owns (a job whose runner never called cleanup, or whose record was
//! lost).
//!
//! The control API (HTTP/1.1 on a root-only socket) is typed in [`api`]: its requests, answers and
//! the client the executor stages and `ctproxy job` use.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::JobsConfig;
use crate::http::serve::{serve_listener, Gate, Limits};
use crate::http::server::{HandlerConns, ServeOptions};
use crate::http::{respond, ConnCtx, Handler, ProxyBody};
use crate::metrics::{self, CleanupCounts};
use crate::plugin::namespace::destroy::{namespaces_on_daemon, Removed};
use crate::plugin::namespace::{self, Namespace, NsName};
use crate::plugin::GrantedBind;
use crate::project_cache::ProjectCaches;
use crate::proxy::{DockerProxy, ListenerHandler, Pipeline};
use crate::transport::{ListenAddr, Listener, PeerAddr, UnixSocketOptions};

pub mod api;

pub use api::{ControlClient, ControlError, JobInfo};
use api::{CreateJob, CreatedJob, RemovedJob, StageReport};

#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("invalid job id {0:?}: use lower-case letters, digits and single dashes (at most 40)")]
    Id(String),
    #[error("cannot create the job's socket: {0}")]
    Listener(String),
    #[error("cannot write the job record: {0}")]
    Record(#[from] std::io::Error),
    #[error("{0}")]
    Namespace(#[from] namespace::NsError),
    #[error("cannot make the project's cache directory: {0}")]
    Cache(std::io::Error),
}

/// How much of a job [`JobManager::remove_with`] waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Removal {
    Complete,
    RestInBackground,
}

/// Marks a job as being removed while alive (the reaper leaves its namespace alone).
struct Removing {
    set: Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
    id: String,
}

impl Removing {
    fn start(set: &Arc<std::sync::Mutex<std::collections::HashSet<String>>>, id: &str) -> Removing {
        set.lock().unwrap_or_else(|p| p.into_inner()).insert(id.to_owned());
        Removing { set: set.clone(), id: id.to_owned() }
    }
}

impl Drop for Removing {
    fn drop(&mut self) {
        self.set.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.id);
    }
}

/// What is kept on disk for a job, so a restarted ctproxy can restore or reap it.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    id: String,
    /// Seconds since the epoch after which the job is reaped.
    deadline: u64,
    /// The GitLab project (its path, or its id), whose local cache the job mounts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    project: Option<String>,
}

struct Job {
    record: Record,
    socket: PathBuf,
    cache_dir: Option<PathBuf>,
    runner_binary: Option<PathBuf>,
    /// The host paths this job's containers may bind (its project's cache, the runner binary).
    grants: Arc<Vec<GrantedBind>>,
    namespace: Namespace,
    /// The job listener's pipeline: the manager's with this job's namespace and socket, replaced
    /// in place by a reload (connections already open take it for their next request).
    pipeline: Arc<ArcSwap<Pipeline>>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

/// The live jobs of this server.
pub struct JobManager {
    config: JobsConfig,
    proxy: Arc<DockerProxy>,
    /// The policies every job listener applies (the namespace is added per job); replaced by a
    /// reload, see [`JobManager::reconfigure`].
    pipeline: ArcSwap<Pipeline>,
    settings: ArcSwap<namespace::Settings>,
    connections: TaskTracker,
    draining: CancellationToken,
    jobs: Mutex<HashMap<String, Job>>,
    /// Jobs whose namespace is being destroyed right now: not orphans for the reaper.
    removing: Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
    /// Background removals in flight: a job created or removed again waits for its own first.
    pending: Mutex<HashMap<String, tokio::task::JoinHandle<()>>>,
    /// The local caches of the projects, kept across jobs.
    caches: ProjectCaches,
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl JobManager {
    pub fn new(
        config: JobsConfig,
        proxy: Arc<DockerProxy>,
        pipeline: Pipeline,
        settings: Arc<namespace::Settings>,
        connections: TaskTracker,
        draining: CancellationToken,
    ) -> JobManager {
        let caches = ProjectCaches::new(config.project_cache_dir.clone(), config.project_cache_max_bytes.0);
        JobManager {
            caches,
            config,
            proxy,
            pipeline: ArcSwap::from_pointee(pipeline),
            settings: ArcSwap::new(settings),
            connections,
            draining,
            jobs: Mutex::new(HashMap::new()),
            removing: Default::default(),
            pending: Default::default(),
        }
    }

    /// A job's namespace: `<prefix>-<id>`.
    fn job_namespace(&self, id: &str) -> Result<NsName, JobError> {
        if id.is_empty() || id.len() > 40 {
            return Err(JobError::Id(id.to_owned()));
        }
        NsName::new(&format!("{}-{id}", self.config.namespace_prefix)).map_err(|_| JobError::Id(id.to_owned()))
    }

    fn job_dir(&self, id: &str) -> PathBuf {
        self.config.dir.join(id)
    }

    /// Creates the job's listener, or returns the existing one (prepare may run three times).
    /// `project` (its path, or its id) gives the job its project's local cache.
    pub async fn create(&self, id: &str, timeout: Option<Duration>, project: Option<&str>) -> Result<JobInfo, JobError> {
        let name = self.job_namespace(id)?;
        self.settle(id).await;
        let timeout = timeout.unwrap_or(self.config.timeout.0);
        let deadline = now() + timeout.as_secs() + self.config.grace.0.as_secs();
        let mut jobs = self.jobs.lock().await;
        if let Some(job) = jobs.get_mut(id) {
            job.record.deadline = job.record.deadline.max(deadline);
            write_record(&self.job_dir(id), &job.record)?;
            return Ok(self.info(job));
        }
        let project = project.filter(|p| !p.is_empty()).map(str::to_owned);
        let job = self.start(Record { id: id.to_owned(), deadline, project }, name).await?;
        let out = self.info(&job);
        jobs.insert(id.to_owned(), job);
        metrics::server().set_jobs_running(jobs.len());
        Ok(out)
    }

    async fn start(&self, record: Record, name: NsName) -> Result<Job, JobError> {
        let dir = self.job_dir(&record.id);
        std::fs::create_dir_all(&dir)?;
        write_record(&dir, &record)?;
        let sock_dir = dir.join("sock");
        std::fs::create_dir_all(&sock_dir)?;
        let socket = sock_dir.join("docker.sock");
        // Any user inside the job container may use the job's own socket.
        let unix = UnixSocketOptions { mode: Some(0o666), owner: None, group: None };
        let listener =
            Listener::bind(&ListenAddr::Unix(socket.clone()), &unix, None).await.map_err(|e| JobError::Listener(e.to_string()))?;
        let namespace = Namespace::new(name, self.settings.load_full());
        let cache_dir = match &record.project {
            Some(p) => Some(self.caches.open(p).map_err(JobError::Cache)?),
            None => None,
        };
        let runner_binary = self.config.runner_binary();
        let mut grants = Vec::new();
        grants.extend(cache_dir.iter().map(|p| GrantedBind { path: p.clone(), read_only: false }));
        grants.extend(runner_binary.iter().map(|p| GrantedBind { path: p.clone(), read_only: true }));
        let grants = Arc::new(grants);
        let pipeline = Arc::new(ArcSwap::from_pointee(job_pipeline(&self.pipeline.load(), &namespace, &socket, &grants)));
        let listener_name = format!("{JOB_LISTENER_PREFIX}{}", record.id);
        let handler = Arc::new(ListenerHandler { proxy: self.proxy.clone(), pipeline: pipeline.clone() });
        let opts = ServeOptions { listener: Arc::from(listener_name.as_str()), access_log: true };
        let stop = CancellationToken::new();
        let conns = Arc::new(HandlerConns { opts, handler, draining: self.draining.clone() });
        // Each job socket counts its own connections: one job cannot take another's places.
        let limits = Limits::plain(self.config.header_timeout.0, self.config.idle_timeout.0, self.config.max_connections as usize);
        let gate = Gate::new(listener_name.as_str(), limits);
        let task = tokio::spawn(serve_listener(listener, gate, conns, self.connections.clone(), stop.clone()));
        tracing::info!(job = %record.id, socket = %socket.display(), namespace = %namespace.name, deadline = record.deadline, "job listener started");
        Ok(Job { record, socket, cache_dir, runner_binary, grants, namespace, pipeline, stop, task })
    }

    /// Stops the job's listener and destroys everything its namespace holds. Idempotent.
    pub async fn remove(&self, id: &str) -> Result<Removed, JobError> {
        self.remove_with(id, Removal::Complete).await
    }

    /// Stops the job's listener and removes its containers; the rest of its namespace (networks,
    /// volumes, images) goes now or, with [`Removal::RestInBackground`], in a task of its own,
    /// which keeps network removal (slow in dockerd) off the CI job's wall time. The job's record
    /// is removed first: after a crash at any point the namespace is an orphan that the reaper
    /// destroys. Idempotent.
    pub async fn remove_with(&self, id: &str, how: Removal) -> Result<Removed, JobError> {
        let name = self.job_namespace(id)?;
        self.settle(id).await;
        let job = {
            let mut jobs = self.jobs.lock().await;
            let job = jobs.remove(id);
            metrics::server().set_jobs_running(jobs.len());
            job
        };
        let was_live = job.is_some();
        if let Some(job) = job {
            job.stop.cancel();
            let _ = job.task.await;
        }
        let _ = std::fs::remove_dir_all(self.job_dir(id));
        let guard = Removing::start(&self.removing, id);
        let namespace = Namespace::new(name, self.settings.load_full());
        let daemon = self.proxy.daemon();
        let containers = namespace.destroy_containers(&daemon).await?;
        self.evict_caches().await;
        match how {
            Removal::Complete => {
                let removed = match namespace.destroy_rest(&daemon).await {
                    Ok(rest) => rest.with_containers(containers),
                    Err(e) => {
                        count_cleanup(was_live, &Removed::default().with_containers(containers), false);
                        return Err(e.into());
                    }
                };
                count_cleanup(was_live, &removed, true);
                tracing::info!(job = id, ?removed, "job removed");
                drop(guard);
                Ok(removed)
            }
            Removal::RestInBackground => {
                let key = id.to_owned();
                let task = tokio::spawn(async move {
                    let id = key;
                    match namespace.destroy_rest(&daemon).await {
                        Ok(rest) => {
                            let removed = rest.with_containers(containers);
                            count_cleanup(was_live, &removed, true);
                            tracing::info!(job = %id, ?removed, "job removed")
                        }
                        Err(e) => {
                            count_cleanup(was_live, &Removed::default().with_containers(containers), false);
                            tracing::warn!(job = %id, error = %e, "job's namespace not fully removed: the reaper will retry")
                        }
                    }
                    drop(guard);
                });
                let mut pending = self.pending.lock().await;
                pending.retain(|_, t| !t.is_finished());
                pending.insert(id.to_owned(), task);
                Ok(Removed::default().with_containers(containers))
            }
        }
    }

    /// Keeps the project caches within their limit; the caches of live jobs stay.
    async fn evict_caches(&self) {
        let in_use: std::collections::HashSet<PathBuf> = self.jobs.lock().await.values().filter_map(|j| j.cache_dir.clone()).collect();
        let caches = self.caches.clone();
        let evicted = tokio::task::spawn_blocking(move || caches.evict(&in_use)).await.unwrap_or_default();
        for e in evicted {
            tracing::info!(project_cache = %e.dir, bytes = e.bytes, "least recently used project cache removed (over project_cache_max_bytes)");
        }
    }

    /// Waits for a background removal of `id` still in flight: a volume of the old namespace must
    /// not be removed by name after a new one of the same name was made.
    async fn settle(&self, id: &str) {
        let task = self.pending.lock().await.remove(id);
        if let Some(task) = task {
            let _ = task.await;
        }
    }

    /// The live job `id`, if there is one.
    pub async fn get(&self, id: &str) -> Option<JobInfo> {
        self.jobs.lock().await.get(id).map(|j| self.info(j))
    }

    pub async fn list(&self) -> Vec<JobInfo> {
        self.jobs.lock().await.values().map(|j| self.info(j)).collect()
    }

    /// At start: restores the listeners of live jobs from their records, removes expired ones.
    pub async fn restore(&self) {
        let Ok(entries) = std::fs::read_dir(&self.config.dir) else { return };
        for entry in entries.flatten() {
            let path = entry.path().join("job.json");
            let record: Option<Record> = std::fs::read(&path).ok().and_then(|b| serde_json::from_slice(&b).ok());
            let Some(record) = record else { continue };
            let Ok(name) = self.job_namespace(&record.id) else { continue };
            if record.deadline <= now() {
                let id = record.id.clone();
                if let Err(e) = self.remove(&id).await {
                    tracing::warn!(job = %id, error = %e, "expired job not removed");
                }
                continue;
            }
            let id = record.id.clone();
            match self.start(record, name).await {
                Ok(job) => {
                    let mut jobs = self.jobs.lock().await;
                    jobs.insert(id, job);
                    metrics::server().set_jobs_running(jobs.len());
                }
                Err(e) => tracing::warn!(job = %id, error = %e, "job listener not restored"),
            }
        }
    }

    /// Removes expired jobs, and job namespaces on the daemon that no live job owns.
    pub async fn reap(&self) {
        let expired: Vec<String> =
            self.jobs.lock().await.values().filter(|j| j.record.deadline <= now()).map(|j| j.record.id.clone()).collect();
        for id in expired {
            tracing::warn!(job = %id, "job past its deadline: reaping it");
            if let Err(e) = self.remove(&id).await {
                tracing::warn!(job = %id, error = %e, "reaping failed");
            }
        }
        let daemon = self.proxy.daemon();
        let on_daemon = match namespaces_on_daemon(&daemon, &self.settings.load().registry).await {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list namespaces on the daemon");
                return;
            }
        };
        for ns in on_daemon {
            let Some(id) = ns.as_str().strip_prefix(&self.config.namespace_prefix).and_then(|r| r.strip_prefix('-')) else { continue };
            let being_removed = self.removing.lock().unwrap_or_else(|p| p.into_inner()).contains(id);
            if being_removed || self.jobs.lock().await.contains_key(id) || self.job_dir(id).join("job.json").exists() {
                continue;
            }
            tracing::warn!(namespace = %ns, "no live job owns this namespace: destroying it");
            if let Err(e) = Namespace::new(ns.clone(), self.settings.load_full()).destroy(&daemon).await {
                tracing::warn!(namespace = %ns, error = %e, "destroy failed");
            }
        }
    }

    /// Runs [`JobManager::reap`] every `reap_interval` until `stop`.
    pub async fn reaper(self: Arc<Self>, stop: CancellationToken) {
        let every = self.config.reap_interval.0.max(Duration::from_secs(1));
        loop {
            self.reap().await;
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
        }
    }

    /// A reload: jobs created from now on, and the listeners of the running ones (for the next
    /// request of every connection, none dropped), apply `pipeline` and namespaces `settings`.
    pub async fn reconfigure(&self, pipeline: Pipeline, settings: Arc<namespace::Settings>) {
        // Stored before the jobs are visited: a job started meanwhile (under the lock) sees the
        // new pipeline, or is visited below.
        self.pipeline.store(Arc::new(pipeline));
        self.settings.store(settings.clone());
        let base = self.pipeline.load();
        let mut jobs = self.jobs.lock().await;
        for job in jobs.values_mut() {
            job.namespace = Namespace::new(job.namespace.name.clone(), settings.clone());
            job.pipeline.store(Arc::new(job_pipeline(&base, &job.namespace, &job.socket, &job.grants)));
        }
        tracing::info!(jobs = jobs.len(), "job listeners reconfigured");
    }

    /// Stops every job listener (on shutdown; the jobs stay, their records restore them), and
    /// lets the removals of jobs already cleaned up finish, within `grace`: a stop right after a
    /// job's cleanup answered would otherwise leave its networks and volumes to the next start's
    /// reaper, and to nobody if ctproxy is not started again.
    pub async fn stop_listeners(&self, grace: std::time::Duration) {
        {
            let mut jobs = self.jobs.lock().await;
            for job in jobs.values() {
                job.stop.cancel();
            }
            for (_, job) in jobs.drain() {
                let _ = job.task.await;
            }
        }
        let pending: Vec<_> = self.pending.lock().await.drain().map(|(_, task)| task).collect();
        if pending.is_empty() {
            return;
        }
        let count = pending.len();
        let all = async {
            for task in pending {
                let _ = task.await;
            }
        };
        if tokio::time::timeout(grace, all).await.is_err() {
            tracing::warn!(
                jobs = count,
                "job removals still in flight at the end of the grace time: the next start's reaper finishes them"
            );
        }
    }
}

impl JobManager {
    fn info(&self, job: &Job) -> JobInfo {
        let upstream = self.proxy.upstream();
        JobInfo {
            id: job.record.id.clone(),
            socket: job.socket.clone(),
            namespace: job.namespace.name.to_string(),
            deadline: job.record.deadline,
            daemon: upstream.starts_with("unix://").then_some(upstream),
            cache_dir: job.cache_dir.clone(),
            runner_binary: job.runner_binary.clone(),
        }
    }
}

/// A job listener's pipeline: the jobs' policies, in the job's namespace, with binds of the Docker
/// socket redirected to the job's own.
fn job_pipeline(base: &Pipeline, namespace: &Namespace, socket: &Path, grants: &Arc<Vec<GrantedBind>>) -> Pipeline {
    Pipeline { namespace: Some(namespace.clone()), own_socket: Some(Arc::from(socket)), granted_binds: grants.clone(), ..base.clone() }
}

fn write_record(dir: &Path, record: &Record) -> std::io::Result<()> {
    let tmp = dir.join("job.json.tmp");
    std::fs::write(&tmp, serde_json::to_vec(record).map_err(std::io::Error::other)?)?;
    std::fs::rename(tmp, dir.join("job.json"))
}

/// The prefix of job sockets' listener names (`job-<id>`), in logs and metrics.
pub const JOB_LISTENER_PREFIX: &str = "job-";

/// Counts a job cleanup in the metrics; `finished`: the destroy ran to its end (it may still have
/// left objects the daemon would not remove, counted in `r.left`). The cleanup is complete when
/// it finished and left nothing for the reaper. A removal of a job that was not live and found
/// nothing (prepare's precautionary one, a repeated cleanup) is no cleanup.
fn count_cleanup(was_live: bool, r: &Removed, finished: bool) {
    let complete = finished && r.left.is_empty();
    if !was_live && complete && r.containers + r.networks + r.volumes + r.images == 0 {
        return;
    }
    let removed = CleanupCounts { containers: r.containers, networks: r.networks, volumes: r.volumes, images: r.images };
    let left = CleanupCounts { containers: r.left.containers, networks: r.left.networks, volumes: r.left.volumes, images: r.left.images };
    metrics::server().cleanup(removed, left, complete);
}

/// The control socket's handler (the API: [`api`]).
pub struct ControlHandler {
    pub jobs: Arc<JobManager>,
}

impl Handler for ControlHandler {
    async fn call(&self, req: Request<Incoming>, conn: Arc<ConnCtx>) -> Response<ProxyBody> {
        // The socket is 0600 root's; this is the second lock on the door.
        if !matches!(conn.peer.addr, PeerAddr::Unix { uid: 0, .. }) {
            tracing::warn!(target: "ctproxy::audit", peer = %conn.peer, "control request refused: not root");
            return respond::error(StatusCode::FORBIDDEN, "ctproxy: the control socket is for root only");
        }
        let path = req.uri().path().to_owned();
        let id = path.strip_prefix("/jobs/").map(str::to_owned);
        match (req.method().clone(), id) {
            (Method::GET, None) if path == "/jobs" => respond::json(StatusCode::OK, &serde_json::json!(self.jobs.list().await)),
            (Method::GET, Some(id)) => match self.jobs.get(&id).await {
                Some(info) => respond::json(StatusCode::OK, &serde_json::json!(info)),
                None => respond::error(StatusCode::NOT_FOUND, &format!("ctproxy: no live job {id:?}")),
            },
            (Method::PUT, Some(id)) => {
                let body = match Limited::new(req.into_body(), 4096).collect().await {
                    Ok(b) => b.to_bytes(),
                    Err(e) => return respond::error(StatusCode::BAD_REQUEST, &format!("ctproxy: {e}")),
                };
                let parsed: CreateJob = if body.is_empty() {
                    CreateJob::default()
                } else {
                    match serde_json::from_slice(&body) {
                        Ok(b) => b,
                        Err(e) => return respond::error(StatusCode::BAD_REQUEST, &format!("ctproxy: invalid job: {e}")),
                    }
                };
                if parsed.project.as_ref().is_some_and(|p| p.len() > 1024) {
                    return respond::error(StatusCode::BAD_REQUEST, "ctproxy: invalid job: project longer than 1024 bytes");
                }
                match self.jobs.create(&id, parsed.timeout_s.map(Duration::from_secs), parsed.project.as_deref()).await {
                    Ok(job) => {
                        // The stages have no configuration of their own: prepare gets `[jobs.executor]` here.
                        let answer = CreatedJob { job, executor: self.jobs.config.executor.clone() };
                        respond::json(StatusCode::OK, &serde_json::json!(answer))
                    }
                    Err(e @ JobError::Id(_)) => respond::error(StatusCode::BAD_REQUEST, &format!("ctproxy: {e}")),
                    Err(e) => respond::error(StatusCode::INTERNAL_SERVER_ERROR, &format!("ctproxy: {e}")),
                }
            }
            (Method::POST, Some(rest)) if rest.ends_with("/stages") => {
                // The job may be gone already (cleanup reports after removing it): not looked up.
                let body = match Limited::new(req.into_body(), 4096).collect().await {
                    Ok(b) => b.to_bytes(),
                    Err(e) => return respond::error(StatusCode::BAD_REQUEST, &format!("ctproxy: {e}")),
                };
                match serde_json::from_slice::<StageReport>(&body) {
                    Ok(r) if r.seconds.is_finite() && r.seconds >= 0.0 => {
                        metrics::server().stage(r.stage, Duration::from_secs_f64(r.seconds.min(1e9)));
                        respond::json(StatusCode::OK, &serde_json::json!({}))
                    }
                    Ok(_) => respond::error(StatusCode::BAD_REQUEST, "ctproxy: invalid stage report: seconds out of range"),
                    Err(e) => respond::error(StatusCode::BAD_REQUEST, &format!("ctproxy: invalid stage report: {e}")),
                }
            }
            (Method::DELETE, Some(id)) => match self.jobs.remove_with(&id, removal_of(req.uri().query())).await {
                Ok(removed) => respond::json(StatusCode::OK, &serde_json::json!(RemovedJob { removed })),
                Err(e @ JobError::Id(_)) => respond::error(StatusCode::BAD_REQUEST, &format!("ctproxy: {e}")),
                Err(e) => respond::error(StatusCode::INTERNAL_SERVER_ERROR, &format!("ctproxy: {e}")),
            },
            _ => respond::error(StatusCode::NOT_FOUND, "ctproxy: unknown control request"),
        }
    }
}

/// `DELETE /jobs/ID?rest=background`: return once the containers are gone.
fn removal_of(query: Option<&str>) -> Removal {
    let background = query.unwrap_or("").split('&').any(|kv| kv == "rest=background");
    if background {
        Removal::RestInBackground
    } else {
        Removal::Complete
    }
}
