//! The `lpworker serve` workers behind the shim: free capacity polled from
//! their `Capabilities`, each segment sent to the least busy healthy worker,
//! and retried on another when one is full, draining or unreachable. A
//! configured host name is resolved to all its addresses on every refresh, so
//! a Kubernetes headless Service gives one worker per ready pod.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tonic::transport::Channel;
use tonic::{Code, Status};
use tracing::warn;

use crate::proto::worker as pb;

#[derive(Debug, thiserror::Error)]
#[error("invalid worker address {0:?}")]
pub struct InvalidWorker(pub String);

struct Worker {
    addr: String,
    client: pb::worker_client::WorkerClient<Channel>,
    /// Free slots as last reported, minus what we have sent since.
    free: AtomicI64,
    healthy: AtomicBool,
    /// (pipeline, model id) pairs the worker serves, from its Capabilities.
    pipelines: std::sync::Mutex<Vec<(String, String)>>,
}

pub struct WorkerPool {
    /// As configured: `host:port` or URLs.
    targets: Vec<String>,
    workers: RwLock<Vec<Arc<Worker>>>,
}

fn worker(addr: String, url: &str) -> Result<Worker, InvalidWorker> {
    let channel = Channel::from_shared(url.to_string())
        .map_err(|_| InvalidWorker(addr.clone()))?
        .connect_timeout(Duration::from_secs(3))
        .connect_lazy();
    Ok(Worker {
        addr,
        client: pb::worker_client::WorkerClient::new(channel).max_decoding_message_size(8 << 20),
        free: AtomicI64::new(1),
        healthy: AtomicBool::new(true),
        pipelines: Default::default(),
    })
}

/// A transcode response put back together.
#[derive(Debug, Default)]
pub struct Transcoded {
    pub renditions: Vec<(pb::RenditionHeader, Vec<u8>)>,
    pub summary: Option<pb::TranscodeSummary>,
}

impl WorkerPool {
    /// Workers by address (`host:port` or a URL); connections open lazily.
    pub fn new(addrs: &[String]) -> Result<WorkerPool, InvalidWorker> {
        let workers = addrs
            .iter()
            .map(|a| {
                let url = if a.contains("://") {
                    a.clone()
                } else {
                    format!("http://{a}")
                };
                worker(a.clone(), &url).map(Arc::new)
            })
            .collect::<Result<_, _>>()?;
        Ok(WorkerPool {
            targets: addrs.to_vec(),
            workers: RwLock::new(workers),
        })
    }

    fn snapshot(&self) -> Vec<Arc<Worker>> {
        self.workers.read().expect("workers lock").clone()
    }

    /// Re-resolves `host:port` targets to every address they name, keeping
    /// the workers (and connections) whose address is unchanged.
    async fn resolve(&self) {
        let mut wanted: Vec<(String, String)> = Vec::new();
        for target in &self.targets {
            if target.contains("://") || target.parse::<std::net::SocketAddr>().is_ok() {
                let url = if target.contains("://") {
                    target.clone()
                } else {
                    format!("http://{target}")
                };
                wanted.push((target.clone(), url));
                continue;
            }
            match tokio::net::lookup_host(target.as_str()).await {
                Ok(addrs) => {
                    wanted.extend(addrs.map(|a| (format!("{target} ({a})"), format!("http://{a}"))))
                }
                Err(e) => warn!(worker = %target, error = %e, "cannot resolve worker address"),
            }
        }
        if wanted.is_empty() {
            return;
        }
        let mut workers = self.workers.write().expect("workers lock");
        let mut next = Vec::new();
        for (addr, url) in wanted {
            match workers.iter().find(|w| w.addr == addr) {
                Some(w) => next.push(Arc::clone(w)),
                None => match worker(addr, &url) {
                    Ok(w) => next.push(Arc::new(w)),
                    Err(e) => warn!(error = %e, "skipping worker"),
                },
            }
        }
        *workers = next;
    }

    /// Polls every worker's capacity once; returns the first answer.
    pub async fn refresh(&self) -> Option<pb::CapabilitiesResponse> {
        self.resolve().await;
        let mut first = None;
        for w in self.snapshot() {
            let mut client = w.client.clone();
            match tokio::time::timeout(
                Duration::from_secs(3),
                client.capabilities(pb::CapabilitiesRequest {}),
            )
            .await
            {
                Ok(Ok(r)) => {
                    let caps = r.into_inner();
                    w.free.store(
                        if caps.draining {
                            0
                        } else {
                            i64::from(caps.free_slots)
                        },
                        Ordering::Relaxed,
                    );
                    w.healthy.store(!caps.draining, Ordering::Relaxed);
                    *w.pipelines.lock().expect("pipelines lock") = caps
                        .pipelines
                        .iter()
                        .map(|p| (p.pipeline.clone(), p.model_id.clone()))
                        .collect();
                    first.get_or_insert(caps);
                }
                _ => w.healthy.store(false, Ordering::Relaxed),
            }
        }
        first
    }

    /// Keeps capacities fresh in the background.
    pub fn spawn_refresher(self: &Arc<Self>, every: Duration) {
        let pool = Arc::clone(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                pool.refresh().await;
            }
        });
    }

    /// Sends one segment, least busy healthy worker first, moving on to the
    /// next when a worker is full, draining or unreachable. Errors about the
    /// request itself (bad input) are returned at once.
    pub async fn transcode(&self, request: pb::TranscodeRequest) -> Result<Transcoded, Status> {
        let workers = self.snapshot();
        let mut order: Vec<&Worker> = workers.iter().map(|w| &**w).collect();
        order.sort_by_key(|w| {
            (
                !w.healthy.load(Ordering::Relaxed),
                -w.free.load(Ordering::Relaxed),
            )
        });
        let mut last = Status::unavailable("no transcoding workers configured");
        for w in order {
            w.free.fetch_sub(1, Ordering::Relaxed);
            let result = Self::call(w, request.clone()).await;
            w.free.fetch_add(1, Ordering::Relaxed);
            match result {
                Ok(t) => {
                    w.healthy.store(true, Ordering::Relaxed);
                    return Ok(t);
                }
                Err(s)
                    if matches!(
                        s.code(),
                        Code::Unavailable
                            | Code::ResourceExhausted
                            | Code::Unknown
                            | Code::Internal
                    ) =>
                {
                    warn!(worker = %w.addr, code = ?s.code(), error = s.message(), "worker failed; trying another");
                    if s.code() == Code::Unavailable {
                        w.healthy.store(false, Ordering::Relaxed);
                    }
                    last = s;
                }
                Err(s) => return Err(s),
            }
        }
        Err(last)
    }

    /// Every (pipeline, model id) some worker serves.
    pub fn pipelines(&self) -> Vec<(String, String)> {
        let mut all: Vec<_> = self
            .snapshot()
            .iter()
            .flat_map(|w| w.pipelines.lock().expect("pipelines lock").clone())
            .collect();
        all.sort();
        all.dedup();
        all
    }

    /// Runs an AI request on a worker serving its pipeline and model (any
    /// model of the pipeline when none is named), least busy first, moving on
    /// when one is full or unreachable.
    pub async fn infer(&self, request: pb::InferRequest) -> Result<pb::InferResponse, Status> {
        let serves = |w: &Worker| {
            w.pipelines
                .lock()
                .expect("pipelines lock")
                .iter()
                .any(|(p, m)| {
                    *p == request.pipeline
                        && (request.model_id.is_empty() || *m == request.model_id)
                })
        };
        let workers = self.snapshot();
        let mut order: Vec<&Worker> = workers.iter().map(|w| &**w).filter(|w| serves(w)).collect();
        if order.is_empty() {
            return Err(Status::not_found(format!(
                "no worker serves pipeline {} with model {:?}",
                request.pipeline, request.model_id
            )));
        }
        order.sort_by_key(|w| {
            (
                !w.healthy.load(Ordering::Relaxed),
                -w.free.load(Ordering::Relaxed),
            )
        });
        let mut last = Status::unavailable("no worker answered");
        for w in order {
            let mut client = w.client.clone();
            match client.infer(request.clone()).await {
                Ok(r) => return Ok(r.into_inner()),
                Err(s)
                    if matches!(
                        s.code(),
                        Code::Unavailable | Code::ResourceExhausted | Code::Unknown
                    ) =>
                {
                    warn!(worker = %w.addr, code = ?s.code(), error = s.message(), "worker failed an AI request; trying another");
                    last = s;
                }
                Err(s) => return Err(s),
            }
        }
        Err(last)
    }

    async fn call(w: &Worker, request: pb::TranscodeRequest) -> Result<Transcoded, Status> {
        use pb::transcode_response::Event;
        let mut client = w.client.clone();
        let mut stream = client.transcode(request).await?.into_inner();
        let mut out = Transcoded::default();
        while let Some(msg) = stream.message().await? {
            match msg.event {
                Some(Event::Rendition(h)) => out.renditions.push((h, Vec::new())),
                Some(Event::Chunk(c)) => match out.renditions.get_mut(c.index as usize) {
                    Some((_, data)) => data.extend_from_slice(&c.data),
                    None => {
                        return Err(Status::internal(
                            "worker sent a chunk for an unknown rendition",
                        ))
                    }
                },
                Some(Event::Summary(s)) => out.summary = Some(s),
                None => {}
            }
        }
        if out
            .renditions
            .iter()
            .any(|(h, d)| h.size as usize != d.len())
        {
            return Err(Status::internal("worker sent a truncated rendition"));
        }
        Ok(out)
    }
}
