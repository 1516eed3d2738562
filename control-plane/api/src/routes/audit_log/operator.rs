//! The operator's log (actions of no tenant) under `/v1/operator/audit/…`, operator tokens only:
//! the same reads as a tenant's log, through the same handlers.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::response::Response;

use super::{CheckpointView, ConsistencyView, EntryView, InclusionView, LogScope, LogView};
use crate::ControlPlane;
use crate::auth::Caller;
use crate::error::ApiError;

type Params = Query<HashMap<String, String>>;

/// `GET /v1/operator/audit/log`.
pub(crate) async fn get(plane: State<Arc<ControlPlane>>, caller: Caller) -> Result<Json<LogView>, ApiError> {
    super::get(plane, Path(LogScope::operator()), caller).await
}

/// `GET /v1/operator/audit/entries`.
pub(crate) async fn entries(
    plane: State<Arc<ControlPlane>>,
    query: Params,
    caller: Caller,
) -> Result<Json<Vec<EntryView>>, ApiError> {
    super::entries(plane, Path(LogScope::operator()), query, caller).await
}

/// `GET /v1/operator/audit/checkpoints`.
pub(crate) async fn checkpoints(
    plane: State<Arc<ControlPlane>>,
    query: Params,
    caller: Caller,
) -> Result<Json<Vec<CheckpointView>>, ApiError> {
    super::checkpoints(plane, Path(LogScope::operator()), query, caller).await
}

/// `GET /v1/operator/audit/proofs/inclusion`.
pub(crate) async fn inclusion(
    plane: State<Arc<ControlPlane>>,
    query: Params,
    caller: Caller,
) -> Result<Json<InclusionView>, ApiError> {
    super::inclusion(plane, Path(LogScope::operator()), query, caller).await
}

/// `GET /v1/operator/audit/proofs/consistency`.
pub(crate) async fn consistency(
    plane: State<Arc<ControlPlane>>,
    query: Params,
    caller: Caller,
) -> Result<Json<ConsistencyView>, ApiError> {
    super::consistency(plane, Path(LogScope::operator()), query, caller).await
}

/// `GET /v1/operator/audit/export`.
pub(crate) async fn export(
    plane: State<Arc<ControlPlane>>,
    query: Params,
    caller: Caller,
) -> Result<Response, ApiError> {
    super::export(plane, Path(LogScope::operator()), query, caller).await
}
