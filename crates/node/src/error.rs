//! Errors of the node runtime.

use thiserror::Error;

/// Anything that can stop a node or a generation.
#[derive(Debug, Error)]
pub enum NodeError {
    /// The network layer failed.
    #[error(transparent)]
    Net(#[from] odin_net::NetError),
    /// The engine refused (bad model directory, bad input).
    #[error(transparent)]
    Engine(#[from] odin_engine::EngineError),
    /// The node's ledger failed.
    #[error("ledger: {0}")]
    Ledger(String),
    /// The model directory is unusable.
    #[error("model: {0}")]
    Model(String),
    /// No chain of servers covers every block.
    #[error("no route: {0}")]
    NoRoute(String),
    /// A server answered with an error.
    #[error("server {peer} refused: {message}")]
    Remote {
        /// The server.
        peer: String,
        /// Its error code.
        code: odin_proto::infer::ErrorCode,
        /// What it said.
        message: String,
    },
    /// A server's previous hop found it gone (its link to it broke) and said so.
    #[error("server {peer} is down, reported by the hop before it ({by}): {reason}")]
    HopDown {
        /// The server that is down.
        peer: String,
        /// The server that reported it.
        by: String,
        /// What that server saw.
        reason: String,
    },
    /// The node's identity key could not be used.
    #[error("identity: {0}")]
    Identity(String),
    /// A server did not answer in time.
    #[error("server {0} did not answer within the deadline")]
    Timeout(String),
    /// A node's settings are unusable (the message names the setting).
    #[error("{0}")]
    Config(String),
    /// A node process of a local cluster could not be started, signalled or waited for.
    #[error("{what}: {source}")]
    Process {
        /// What was being done.
        what: String,
        /// Why it failed.
        source: std::io::Error,
    },
    /// A node process of a local cluster misbehaved (exited early, never became ready).
    #[error("{0}")]
    Cluster(String),
    /// A server's signed claim about a step was wrong: recomputing the step gave other bytes,
    /// or the claim contradicts what the server sent or signed before.
    #[error("server {peer} cheated: {what}")]
    Fraud {
        /// The server.
        peer: String,
        /// What was found.
        what: String,
    },
    /// A server answered out of protocol.
    #[error("server {peer} answered out of protocol: {what}")]
    Protocol {
        /// The server.
        peer: String,
        /// What was wrong.
        what: String,
    },
}

/// Result with [`NodeError`].
pub type Result<T> = std::result::Result<T, NodeError>;

/// A frame or message that failed is the network's failure: the peer that sent it is at fault
/// the same way whether the bytes broke in the codec or in the swarm.
impl From<odin_proto::ProtoError> for NodeError {
    fn from(e: odin_proto::ProtoError) -> Self {
        NodeError::Net(e.into())
    }
}
