//! Probing a static list of Livy servers. (Stub.)
use tokio_util::sync::CancellationToken;

use super::{DiscoveryConfig, Publisher};

/// Probes the static list until `shutdown`.
pub async fn run(_config: DiscoveryConfig, _publisher: Publisher, _shutdown: CancellationToken) {}
