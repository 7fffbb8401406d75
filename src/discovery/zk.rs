//! Following Livy's leader latch in ZooKeeper. (Stub.)
use tokio_util::sync::CancellationToken;

use super::{DiscoveryConfig, Publisher};

/// Watches the latch until `shutdown`; see the module docs.
pub async fn run(
    _connect: String,
    _config: DiscoveryConfig,
    _publisher: Publisher,
    _shutdown: CancellationToken,
) {
}
