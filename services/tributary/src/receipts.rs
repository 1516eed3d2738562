//! Receipts of audited messages for the data plane's `GET /v1/channels/{channel}/receipt`: the
//! message's entry on its tenant's (or its exchange's) audit log, its inclusion proof and the
//! newest signed checkpoint, read from the store.

use async_trait::async_trait;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};
use tributary_delivery::audit_log::message_source;
use tributary_delivery::audit_log::proofs::{self, ReceiptError};
use tributary_protocol::ErrorCode;
use tributary_relay::ops::OpError;
use tributary_store::Store;
use tributary_store::audit_log::tenant_log_id;
use tributary_store::exchange::exchange_log_id;

/// Receipts read from the store.
pub struct StoreReceipts {
    store: Store,
}

impl StoreReceipts {
    /// Receipts from `store`'s audit logs.
    pub fn new(store: Store) -> Self {
        Self { store }
    }
}

#[async_trait]
impl tributary_relay::state::Receipts for StoreReceipts {
    async fn receipt(
        &self,
        stream_app: &str,
        exchange: Option<&str>,
        channel: &str,
        epoch: &str,
        offset: u64,
    ) -> Result<Value, OpError> {
        let unavailable = |err: tributary_store::StoreError| {
            tracing::warn!(error = %err, "a receipt could not be read");
            OpError::from(ErrorCode::Unavailable)
        };
        let log_id = match exchange {
            Some(exchange) => exchange_log_id(exchange),
            None => tenant_log_id(&self.store.app_by_id(stream_app).await.map_err(unavailable)?.tenant_id),
        };
        let source = message_source(stream_app, epoch, offset, channel);
        let receipt = match proofs::receipt(&self.store, &log_id, &source).await {
            Ok(receipt) => receipt,
            Err(err @ (ReceiptError::NoEntry | ReceiptError::NotCheckpointed { .. })) => {
                return Err(OpError::new(
                    ErrorCode::NotFound,
                    format!(
                        "{err}: only messages of audited namespaces and exchanges are logged, within seconds"
                    ),
                ));
            }
            Err(ReceiptError::Proof(err)) => {
                tracing::error!(error = %err, log = log_id, "a receipt's proof could not be made");
                return Err(ErrorCode::Internal.into());
            }
        };
        let entry = &receipt.entry;
        Ok(json!({
            "entry": {
                "index": entry.index,
                "prev": STANDARD.encode(&entry.prev),
                "body": STANDARD.encode(&entry.body),
                "entry": serde_json::from_slice::<Value>(&entry.body).unwrap_or_default(),
                "at_ms": entry.at_ms,
            },
            "leaf_hash": STANDARD.encode(receipt.leaf_hash),
            "size": receipt.size,
            "proof": receipt.proof.iter().map(|h| STANDARD.encode(h)).collect::<Vec<_>>(),
            "checkpoint": receipt.checkpoint,
        }))
    }
}
