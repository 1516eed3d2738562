//! Usage of a tenant as a time series: what its apps published and delivered, and their
//! connections, per minute, hour or day.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use serde::Serialize;
use tributary_store::{Granularity, Role, UsagePoint};

use super::app_of;
use crate::ControlPlane;
use crate::auth::Caller;
use crate::error::ApiError;

/// At most this many buckets in one answer.
const MAX_BUCKETS: i64 = 10_000;

/// One point of the series.
#[derive(Serialize)]
pub(crate) struct PointView {
    start: i64,
    messages_published: i64,
    messages_delivered: i64,
    bytes_published: i64,
    bytes_delivered: i64,
    peak_connections: i64,
    average_connections: i64,
    connection_minutes: i64,
    webhook_requests: i64,
    webhook_events: i64,
    push_deliveries: i64,
    sms_sent: i64,
    sms_segments: i64,
}

impl From<UsagePoint> for PointView {
    fn from(p: UsagePoint) -> Self {
        Self {
            start: p.start,
            messages_published: p.messages_published,
            messages_delivered: p.messages_delivered,
            bytes_published: p.bytes_published,
            bytes_delivered: p.bytes_delivered,
            peak_connections: p.peak_connections,
            average_connections: p.average_connections,
            connection_minutes: p.connection_minutes,
            webhook_requests: p.webhook_requests,
            webhook_events: p.webhook_events,
            push_deliveries: p.push_deliveries,
            sms_sent: p.sms_sent,
            sms_segments: p.sms_segments,
        }
    }
}

#[derive(Serialize)]
pub(crate) struct Series {
    granularity: &'static str,
    from: i64,
    to: i64,
    points: Vec<PointView>,
}

fn seconds(query: &HashMap<String, String>, name: &str, default: i64) -> Result<i64, ApiError> {
    match query.get(name) {
        None => Ok(default),
        Some(text) => text
            .parse::<i64>()
            .ok()
            .filter(|v| *v >= 0)
            .ok_or_else(|| ApiError::invalid(format!("{name} must be unix seconds"))),
    }
}

/// `GET /v1/tenants/{tenant}/usage?from=&to=&granularity=minute|hour|day&app_id=` (read_only):
/// `from` defaults to a day before `to`, `to` to now.
pub(crate) async fn series(
    State(plane): State<Arc<ControlPlane>>,
    Path(tenant): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    caller: Caller,
) -> Result<Json<Series>, ApiError> {
    caller.tenant(&tenant, Role::ReadOnly)?;
    let name = query.get("granularity").map_or("hour", String::as_str);
    let granularity = Granularity::parse(name)
        .ok_or_else(|| ApiError::invalid("granularity must be minute, hour or day"))?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    let to = seconds(&query, "to", now)?;
    let from = seconds(&query, "from", to.saturating_sub(86_400).max(0))?;
    if from >= to || (to - from) / granularity.seconds() > MAX_BUCKETS {
        return Err(ApiError::invalid(format!(
            "from must be before to, and at most {MAX_BUCKETS} buckets apart"
        )));
    }
    let app = query.get("app_id").map(String::as_str);
    match app {
        Some(app) => {
            app_of(&plane, &tenant, app).await?;
        }
        None => {
            plane.store.tenant(&tenant).await?;
        }
    }
    let points = plane.store.usage(&tenant, app, (from, to), granularity).await?;
    let granularity = match granularity {
        Granularity::Minute => "minute",
        Granularity::Hour => "hour",
        Granularity::Day => "day",
    };
    Ok(Json(Series { granularity, from, to, points: points.into_iter().map(PointView::from).collect() }))
}
