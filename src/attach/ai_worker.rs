//! The remote AI worker: register the loaded models with the orchestrator
//! (`AIWorker.RegisterAIWorker`), run each `NotifyAIJob` on the registry,
//! and post results to `/aiResults` as go-livepeer's AI worker does.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use tokio::sync::watch;
use tracing::{info, warn, Instrument};

use super::results::{AiResult, ResultPoster};
use super::{session, AttachConfig};
use crate::ai::{AiError, PipelineKind, PipelineOutput, PipelineRequest, Registry};
use crate::log_limit::clip;
use crate::proto::lp_rpc;
use crate::worker::fetch::{AddressPolicy, Fetcher};

/// What the worker advertises: one capability per served pipeline, and for
/// each model its warm flag and capacity (go-livepeer's per-capability model
/// constraints, where the orchestrator reads AI capacity).
pub fn capabilities(registry: &Registry, version: &str) -> lp_rpc::Capabilities {
    use lp_rpc::capabilities::{
        capability_constraints::ModelConstraint, CapabilityConstraints, Constraints,
    };
    let mut per_capability: BTreeMap<u32, CapabilityConstraints> = BTreeMap::new();
    let mut capacities: BTreeMap<u32, u32> = BTreeMap::new();
    for e in registry.entries() {
        // lpworker's own pipelines have no go-livepeer capability.
        let Some(cap) = e.pipeline.kind().capability() else {
            continue;
        };
        per_capability.entry(cap).or_default().models.insert(
            e.pipeline.model_id().to_string(),
            ModelConstraint {
                warm: e.config.warm,
                capacity: e.capacity,
                runner_version: String::new(),
                capacity_in_use: 0,
            },
        );
        *capacities.entry(cap).or_default() += e.capacity;
    }
    lp_rpc::Capabilities {
        bitstring: crate::lp_rpc::capabilities::bitstring(capacities.keys().copied()),
        mandatories: Vec::new(),
        capacities,
        version: version.to_string(),
        constraints: Some(Constraints {
            min_version: String::new(),
            per_capability,
        }),
    }
}

fn hardware(registry: &Registry) -> Vec<lp_rpc::HardwareInformation> {
    registry
        .entries()
        .iter()
        .map(|e| lp_rpc::HardwareInformation {
            pipeline: e.pipeline.kind().name().to_string(),
            model_id: e.pipeline.model_id().to_string(),
            gpu_info: Default::default(),
        })
        .collect()
}

/// `NotifyAIJob.AIJobData.requestData`: go-livepeer's `AIJobRequestData`.
#[derive(Debug, Deserialize)]
struct JobRequest {
    #[serde(default)]
    input_url: String,
    #[serde(default)]
    request: serde_json::Map<String, serde_json::Value>,
}

pub async fn run(config: AttachConfig, registry: Arc<Registry>, shutdown: watch::Receiver<bool>) {
    let poster = ResultPoster::new(&config.orch_addr, &config.orch_secret);
    let fetcher = Fetcher::new(
        Duration::from_secs(30),
        config.max_segment_bytes,
        true,
        AddressPolicy::new(config.fetch_allow.clone()),
    );
    let caps = capabilities(&registry, &config.livepeer_version);
    let hardware = hardware(&registry);
    let register = || async {
        let channel = session::connect(&config.orch_addr).await?;
        let mut client = lp_rpc::ai_worker_client::AiWorkerClient::new(channel)
            .max_decoding_message_size(64 << 20);
        let request = lp_rpc::RegisterAiWorkerRequest {
            secret: config.orch_secret.clone(),
            capabilities: Some(caps.clone()),
            hardware: hardware.clone(),
        };
        Ok(client.register_ai_worker(request).await?.into_inner())
    };
    let on_job = |job: lp_rpc::NotifyAiJob| {
        let span = tracing::info_span!("ai_job", task_id = job.task_id);
        let (registry, fetcher, poster) = (Arc::clone(&registry), fetcher.clone(), poster.clone());
        Some(
            async move {
                let data = job.ai_job_data.unwrap_or_default();
                // The orchestrator's text: clipped for the log.
                let pipeline = clip(&data.pipeline, 64).into_owned();
                let result = match process(&registry, &fetcher, &data).await {
                    Ok(output) => {
                        info!(%pipeline, units = output.units, "ai job done");
                        AiResult::Done(output)
                    }
                    Err(e) => {
                        warn!(%pipeline, error = %e, "ai job failed");
                        AiResult::Failed(e.to_string())
                    }
                };
                poster.ai(job.task_id, &data.pipeline, &result).await;
            }
            .instrument(span),
        )
    };
    session::serve_jobs(
        "ai-worker",
        &config.orch_addr,
        config.drain_timeout,
        shutdown,
        register,
        on_job,
    )
    .await;
}

async fn process(
    registry: &Registry,
    fetcher: &Fetcher,
    data: &lp_rpc::AiJobData,
) -> Result<PipelineOutput, AiError> {
    let kind = PipelineKind::from_name(&data.pipeline).ok_or_else(|| {
        AiError::UnknownModel(format!("unknown pipeline {:?}", clip(&data.pipeline, 64)))
    })?;
    let job: JobRequest = serde_json::from_slice(&data.request_data)
        .map_err(|e| AiError::BadRequest(format!("invalid AI job request data: {e}")))?;
    let mut request = PipelineRequest {
        params: job.request,
        ..Default::default()
    };
    // go-livepeer's worker requires the model id.
    let model_id = request
        .string(kind.model_field())?
        .filter(|m| !m.is_empty())
        .ok_or_else(|| AiError::missing(kind.model_field()))?;
    let entry = registry.find(kind, &model_id)?;
    // The orchestrator tracks capacity per model; should it send more, the
    // extra job waits for a slot rather than overload the model.
    let _slot = Arc::clone(&entry.slots)
        .acquire_owned()
        .await
        .expect("semaphore is never closed");
    if let Some(field) = kind.file_field() {
        if job.input_url.is_empty() {
            return Err(AiError::missing(field));
        }
        let input = fetcher
            .get(&job.input_url)
            .await
            .map_err(|e| AiError::BadRequest(e.to_string()))?;
        request.files.insert(field.to_string(), input);
    }
    let pipeline = Arc::clone(&entry.pipeline);
    tokio::task::spawn_blocking(move || pipeline.run(&request))
        .await
        .map_err(|e| AiError::Internal(format!("pipeline task failed: {e}")))?
}

#[cfg(test)]
mod tests {
    #[test]
    fn capabilities_carry_model_constraints() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models");
        let configs = crate::ai::config::load("upscale:lpworker/nearest-2x:true").unwrap();
        let registry = crate::ai::Registry::load(&configs, &dir, 1).unwrap();
        let caps = super::capabilities(&registry, "0.9.1");
        assert_eq!(caps.bitstring, vec![1 << 30]);
        assert_eq!(caps.capacities[&30], 1);
        let model = &caps.constraints.unwrap().per_capability[&30].models["lpworker/nearest-2x"];
        assert!(model.warm);
        assert_eq!(model.capacity, 1);
    }
}
