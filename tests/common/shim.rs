//! `lpworker orchestrator` off chain in front of `lpworker serve` workers,
//! and what a gateway first asks it.

use std::path::Path;
use std::process::{Child, Command, Stdio};

use lpworker::proto::lp_rpc as net;

/// The shim's command line: off chain, free, on loopback ports the OS
/// picks, `workers` as given to --workers, then `extra`. The environment's
/// worker secret is not inherited, so each test says its own.
pub fn offchain_shim_command(workers: &str, datadir: &Path, extra: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_lpworker"));
    cmd.args([
        "orchestrator",
        "-serviceAddr",
        "127.0.0.1:0",
        "--http-addr",
        "127.0.0.1:0",
        "-network",
        "offchain",
        "--workers",
        workers,
        "-pricePerUnit",
        "0",
        "-datadir",
    ])
    .arg(datadir)
    .args(extra)
    .env_remove("LPWORKER_WORKER_SECRET");
    cmd
}

/// A running off-chain shim, killed when dropped.
pub struct OffChainShim {
    pub child: Child,
    /// host:port of its gRPC/HTTPS listener.
    pub addr: String,
}

impl OffChainShim {
    pub fn start(workers: &str, datadir: &Path, extra: &[&str]) -> OffChainShim {
        let mut child = offchain_shim_command(workers, datadir, extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let line = super::ready_line(&mut child);
        let addr = super::line_field(&line, "addr=")
            .unwrap_or_else(|| panic!("the shim did not start: {line:?}"))
            .to_string();
        OffChainShim { child, addr }
    }

    /// `GetOrchestrator` as an off-chain gateway asks it.
    pub async fn info(&self) -> net::OrchestratorInfo {
        offchain_info(&self.addr).await
    }
}

/// `GetOrchestrator` from the shim at `addr` (host:port), as an off-chain
/// gateway asks it: no address, no signature.
pub async fn offchain_info(addr: &str) -> net::OrchestratorInfo {
    let channel = lpworker::attach::insecure_tls::grpc_channel(addr, |e| e)
        .await
        .unwrap();
    net::orchestrator_client::OrchestratorClient::new(channel)
        .get_orchestrator(net::OrchestratorRequest::default())
        .await
        .unwrap()
        .into_inner()
}

impl Drop for OffChainShim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
