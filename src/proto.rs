//! Generated gRPC types.

/// lpworker's own worker API (`proto/lpworker/v1/worker.proto`).
pub mod worker {
    tonic::include_proto!("lpworker.v1");

    /// Serialized descriptors, for gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("lpworker_descriptor");
}

/// go-livepeer's `lp_rpc` wire protocol (`proto/net/lp_rpc.proto`), package `net`.
pub mod lp_rpc {
    tonic::include_proto!("net");
}
