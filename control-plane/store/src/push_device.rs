//! The device registry of push: each app's devices (an APNs or FCM token, or a browser's Web
//! Push subscription), whose client they are, and the channels they are subscribed to for push,
//! by device or by client id (every device of the client, present and future).
//!
//! Registering a token that is registered already updates that device (its client, keys and
//! metadata) and keeps its id, so an app may register on every start. A device whose token a
//! push service calls dead is removed with its subscriptions.

use sqlx::Row as _;

use crate::db::DbRow;
use crate::{Store, StoreError, id, unix_now};

/// Where a device's pushes go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DevicePlatform {
    /// An Apple device: APNs.
    Apns,
    /// An Android device (or any app using Firebase): FCM.
    Fcm,
    /// A browser: Web Push.
    Web,
}

impl DevicePlatform {
    /// The name used in the API and the store.
    pub fn as_str(self) -> &'static str {
        match self {
            DevicePlatform::Apns => "apns",
            DevicePlatform::Fcm => "fcm",
            DevicePlatform::Web => "web",
        }
    }

    /// Reads a platform's name.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "apns" => Some(DevicePlatform::Apns),
            "fcm" => Some(DevicePlatform::Fcm),
            "web" => Some(DevicePlatform::Web),
            _ => None,
        }
    }
}

/// A registered device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    /// `dev_` and 26 base32 characters.
    pub id: String,
    /// The tenant.
    pub tenant_id: String,
    /// The app.
    pub app_id: String,
    /// Where its pushes go.
    pub platform: DevicePlatform,
    /// APNs' device token, FCM's registration token, or the Web Push subscription's endpoint.
    pub token: String,
    /// A Web Push subscription's keys, `{"p256dh", "auth"}` as JSON.
    pub web_keys: Option<String>,
    /// Its client, if any.
    pub client_id: Option<String>,
    /// The app's data about it, a JSON object.
    pub metadata: String,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds.
    pub updated_at: i64,
}

/// Where a push to a device goes: what a push job needs of it, and nothing else of its row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushAddress {
    /// The device's id.
    pub id: String,
    /// Where its pushes go.
    pub platform: DevicePlatform,
    /// Its token or subscription endpoint.
    pub token: String,
    /// A Web Push subscription's keys, as JSON.
    pub web_keys: Option<String>,
}

impl From<Device> for PushAddress {
    fn from(device: Device) -> Self {
        Self { id: device.id, platform: device.platform, token: device.token, web_keys: device.web_keys }
    }
}

/// What a device is registered with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewDevice {
    /// Where its pushes go.
    pub platform: DevicePlatform,
    /// Its token or endpoint.
    pub token: String,
    /// A Web Push subscription's keys, as JSON.
    pub web_keys: Option<String>,
    /// Its client.
    pub client_id: Option<String>,
    /// The app's data about it, a JSON object.
    pub metadata: String,
}

/// What a channel's push subscription is of.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PushTarget {
    /// One device.
    Device(String),
    /// Every device of a client id.
    Client(String),
}

/// A channel's push subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushSubscription {
    /// The channel.
    pub channel: String,
    /// Who is subscribed.
    pub target: PushTarget,
    /// Unix seconds.
    pub created_at: i64,
}

macro_rules! device_columns {
    () => {
        "id, tenant_id, app_id, platform, token, web_keys, client_id, metadata, created_at, updated_at"
    };
}

/// The ids a push to a channel reaches, in id order (`$1` app, `$2` channel, `$3` after, `$4`
/// limit), as a literal for the statements that aggregate them.
macro_rules! channel_push_ids {
    () => {
        "SELECT id FROM (\
           SELECT device_id AS id FROM push_channel_subscriptions \
           WHERE app_id = $1 AND channel = $2 AND device_id IS NOT NULL AND device_id > $3 \
           UNION \
           SELECT d.id AS id FROM push_channel_subscriptions s CROSS JOIN push_devices d \
           WHERE d.app_id = s.app_id AND d.client_id = s.client_id \
           AND s.app_id = $1 AND s.channel = $2 AND s.client_id IS NOT NULL AND d.id > $3\
         ) AS ids ORDER BY id LIMIT $4"
    };
}

fn device(row: &DbRow) -> Result<Device, StoreError> {
    let platform: String = row.try_get("platform")?;
    Ok(Device {
        id: row.try_get("id")?,
        tenant_id: row.try_get("tenant_id")?,
        app_id: row.try_get("app_id")?,
        platform: DevicePlatform::parse(&platform).ok_or(StoreError::NotFound("device platform"))?,
        token: row.try_get("token")?,
        web_keys: row.try_get("web_keys")?,
        client_id: row.try_get("client_id")?,
        metadata: row.try_get("metadata")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

impl Store {
    /// Registers a device of an app of the tenant, or updates the device its token is
    /// registered as already (same id); returns it.
    pub async fn register_device(
        &self,
        tenant_id: &str,
        app_id: &str,
        new: &NewDevice,
    ) -> Result<Device, StoreError> {
        let now = unix_now();
        let row = sqlx::query(
            "INSERT INTO push_devices (id, tenant_id, app_id, platform, token, web_keys, client_id, metadata, \
             created_at, updated_at) SELECT $1, tenant_id, id, $3, $4, $5, $6, $7, $8, $8 FROM apps \
             WHERE id = $2 AND tenant_id = $9 \
             ON CONFLICT (app_id, platform, token) DO UPDATE SET web_keys = excluded.web_keys, \
             client_id = excluded.client_id, metadata = excluded.metadata, updated_at = excluded.updated_at \
             RETURNING id",
        )
        .bind(id::new(id::DEVICE))
        .bind(app_id)
        .bind(new.platform.as_str())
        .bind(&new.token)
        .bind(new.web_keys.as_deref())
        .bind(new.client_id.as_deref())
        .bind(&new.metadata)
        .bind(now)
        .bind(tenant_id)
        .fetch_optional(&self.pool)
        .await
        .map_err(|err| StoreError::from_sqlx(err, "device", "app"))?
        .ok_or(StoreError::NotFound("app"))?;
        let device_id: String = row.try_get("id")?;
        self.device(tenant_id, app_id, &device_id).await
    }

    /// Returns a device of an app of the tenant.
    pub async fn device(&self, tenant_id: &str, app_id: &str, device_id: &str) -> Result<Device, StoreError> {
        let sql = concat!(
            "SELECT ",
            device_columns!(),
            " FROM push_devices WHERE id = $1 AND app_id = $2 AND tenant_id = $3"
        );
        let row =
            sqlx::query(sql).bind(device_id).bind(app_id).bind(tenant_id).fetch_optional(&self.pool).await?;
        row.as_ref().map(device).transpose()?.ok_or(StoreError::NotFound("device"))
    }

    /// Returns an app's devices, of one client if `client_id` is given, in id order after
    /// `after` (a page's last id; empty for the first), at most `limit`.
    pub async fn devices(
        &self,
        tenant_id: &str,
        app_id: &str,
        client_id: Option<&str>,
        after: &str,
        limit: i64,
    ) -> Result<Vec<Device>, StoreError> {
        let sql = concat!(
            "SELECT ",
            device_columns!(),
            " FROM push_devices WHERE app_id = $1 AND tenant_id = $2 AND (CAST($3 AS TEXT) IS NULL OR client_id = $3) \
             AND id > $4 ORDER BY id LIMIT $5"
        );
        let rows = sqlx::query(sql)
            .bind(app_id)
            .bind(tenant_id)
            .bind(client_id)
            .bind(after)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(device).collect()
    }

    /// Removes a device of an app of the tenant, with its subscriptions.
    pub async fn remove_device(
        &self,
        tenant_id: &str,
        app_id: &str,
        device_id: &str,
    ) -> Result<(), StoreError> {
        let result = sqlx::query("DELETE FROM push_devices WHERE id = $1 AND app_id = $2 AND tenant_id = $3")
            .bind(device_id)
            .bind(app_id)
            .bind(tenant_id)
            .execute(&self.pool)
            .await?;
        if result.rows_affected() == 0 { Err(StoreError::NotFound("device")) } else { Ok(()) }
    }

    /// Removes the app's devices of `platform` registered with `tokens` (their tokens are
    /// dead), with their subscriptions, in one statement; returns how many there were.
    pub async fn remove_devices_by_tokens(
        &self,
        app_id: &str,
        platform: DevicePlatform,
        tokens: &[String],
    ) -> Result<u64, StoreError> {
        if tokens.is_empty() {
            return Ok(0);
        }
        let placeholder = |n: usize| match self.backend {
            crate::Backend::Postgres => format!("${n}"),
            crate::Backend::Sqlite => "?".to_owned(),
        };
        let list: Vec<String> = (3..tokens.len() + 3).map(placeholder).collect();
        let sql = format!(
            "DELETE FROM push_devices WHERE app_id = {} AND platform = {} AND token IN ({})",
            placeholder(1),
            placeholder(2),
            list.join(", ")
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(app_id).bind(platform.as_str());
        for token in tokens {
            query = query.bind(token.as_str());
        }
        Ok(query.execute(&self.pool).await?.rows_affected())
    }

    /// Subscribes a device (of the app) or a client id to a channel's pushes; subscribing
    /// again changes nothing.
    pub async fn subscribe_push(
        &self,
        tenant_id: &str,
        app_id: &str,
        channel: &str,
        target: &PushTarget,
    ) -> Result<(), StoreError> {
        // The device must be the app's (and the app the tenant's): the row is made from theirs.
        let query = match target {
            PushTarget::Device(device_id) => sqlx::query(
                "INSERT INTO push_channel_subscriptions (app_id, channel, device_id, client_id, created_at) \
                 SELECT app_id, $2, id, NULL, $4 FROM push_devices WHERE id = $3 AND app_id = $1 AND tenant_id = $5 \
                 ON CONFLICT (app_id, channel, device_id) WHERE device_id IS NOT NULL DO NOTHING",
            )
            .bind(app_id)
            .bind(channel)
            .bind(device_id.as_str()),
            PushTarget::Client(client_id) => sqlx::query(
                "INSERT INTO push_channel_subscriptions (app_id, channel, device_id, client_id, created_at) \
                 SELECT id, $2, NULL, $3, $4 FROM apps WHERE id = $1 AND tenant_id = $5 \
                 ON CONFLICT (app_id, channel, client_id) WHERE client_id IS NOT NULL DO NOTHING",
            )
            .bind(app_id)
            .bind(channel)
            .bind(client_id.as_str()),
        };
        let result = query.bind(unix_now()).bind(tenant_id).execute(&self.pool).await?;
        if result.rows_affected() == 0 {
            // Nothing inserted: subscribed already, or no such device or app.
            let known = match target {
                PushTarget::Device(device_id) => self.device(tenant_id, app_id, device_id).await.map(|_| ()),
                PushTarget::Client(_) => self.app(tenant_id, app_id).await.map(|_| ()),
            };
            known?;
        }
        Ok(())
    }

    /// Unsubscribes a device or a client id from a channel's pushes; returns whether it was
    /// subscribed.
    pub async fn unsubscribe_push(
        &self,
        tenant_id: &str,
        app_id: &str,
        channel: &str,
        target: &PushTarget,
    ) -> Result<bool, StoreError> {
        let (sql, value) = match target {
            PushTarget::Device(device_id) => (
                "DELETE FROM push_channel_subscriptions WHERE app_id = $1 AND channel = $2 AND device_id = $3 \
                 AND app_id IN (SELECT id FROM apps WHERE id = $1 AND tenant_id = $4)",
                device_id,
            ),
            PushTarget::Client(client_id) => (
                "DELETE FROM push_channel_subscriptions WHERE app_id = $1 AND channel = $2 AND client_id = $3 \
                 AND app_id IN (SELECT id FROM apps WHERE id = $1 AND tenant_id = $4)",
                client_id,
            ),
        };
        let result = sqlx::query(sql)
            .bind(app_id)
            .bind(channel)
            .bind(value.as_str())
            .bind(tenant_id)
            .execute(&self.pool)
            .await?;
        Ok(result.rows_affected() > 0)
    }

    /// An app's push subscriptions, of one channel if `channel` is given, oldest first.
    pub async fn push_subscriptions(
        &self,
        tenant_id: &str,
        app_id: &str,
        channel: Option<&str>,
    ) -> Result<Vec<PushSubscription>, StoreError> {
        let rows = sqlx::query(
            "SELECT s.channel AS channel, s.device_id AS device_id, s.client_id AS client_id, \
             s.created_at AS created_at FROM push_channel_subscriptions s JOIN apps a ON a.id = s.app_id \
             WHERE s.app_id = $1 AND a.tenant_id = $2 AND (CAST($3 AS TEXT) IS NULL OR s.channel = $3) \
             ORDER BY s.created_at, s.channel, s.device_id, s.client_id",
        )
        .bind(app_id)
        .bind(tenant_id)
        .bind(channel)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let device_id: Option<String> = row.try_get("device_id")?;
                let client_id: Option<String> = row.try_get("client_id")?;
                let target = match (device_id, client_id) {
                    (Some(device_id), _) => PushTarget::Device(device_id),
                    (None, Some(client_id)) => PushTarget::Client(client_id),
                    (None, None) => return Err(StoreError::NotFound("push subscription")),
                };
                Ok(PushSubscription {
                    channel: row.try_get("channel")?,
                    target,
                    created_at: row.try_get("created_at")?,
                })
            })
            .collect()
    }

    /// The ids of the devices a push to `channel` of the app reaches, after `after` in id
    /// order, at most `limit`: the devices subscribed to it, and every device of the client ids
    /// subscribed to it, each once. Read from the subscriptions' indexes and the devices' by
    /// client id alone: a push reads its devices' ids once, then the devices a page at a time
    /// ([`Self::push_addresses`]). The subscriptions are read first (SQLite joins a `CROSS
    /// JOIN` in the order written): a small channel of a large app costs its own devices, not
    /// the app's.
    pub async fn channel_push_device_ids(
        &self,
        app_id: &str,
        channel: &str,
        after: &str,
        limit: i64,
    ) -> Result<Vec<String>, StoreError> {
        // One row of the ids joined by commas (ids have none): SQLite's driver hands rows over
        // one at a time between threads, which cost more than the query for a channel of
        // thousands of devices.
        let sql = match self.backend {
            crate::Backend::Postgres => concat!(
                "SELECT COALESCE(string_agg(id, ',' ORDER BY id), '') FROM (",
                channel_push_ids!(),
                ") AS reached"
            ),
            crate::Backend::Sqlite => concat!(
                "SELECT COALESCE(group_concat(id, ',' ORDER BY id), '') FROM (",
                channel_push_ids!(),
                ") AS reached"
            ),
        };
        let (joined,): (String,) = sqlx::query_as(sql)
            .bind(app_id)
            .bind(channel)
            .bind(after)
            .bind(limit)
            .fetch_one(&self.pool)
            .await?;
        Ok(joined.split(',').filter(|id| !id.is_empty()).map(str::to_owned).collect())
    }

    /// Where the app's devices of `ids` (at most a few hundred: one statement) are pushed to,
    /// in id order; ids of devices removed meanwhile are left out. Only the columns a push
    /// needs are read: a push to a channel reads every one of its devices.
    pub async fn push_addresses(&self, app_id: &str, ids: &[String]) -> Result<Vec<PushAddress>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        // SQLite's plain `?` are bound by position; its `$n` are looked up by name, a cost
        // that grows with the square of a statement's parameters.
        let placeholder = |n: usize| match self.backend {
            crate::Backend::Postgres => format!("${n}"),
            crate::Backend::Sqlite => "?".to_owned(),
        };
        let list: Vec<String> = (1..=ids.len()).map(placeholder).collect();
        // `app_id || ''`: the app's condition checked on each row found by id, not an index of
        // the app's devices that SQLite (without statistics) would rather scan whole.
        let sql = format!(
            "SELECT id, platform, token, web_keys FROM push_devices WHERE id IN ({}) \
             AND app_id || '' = {} ORDER BY id",
            list.join(", "),
            placeholder(ids.len() + 1)
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for id in ids {
            query = query.bind(id.as_str());
        }
        let rows = query.bind(app_id).fetch_all(&self.pool).await?;
        rows.iter()
            .map(|row| {
                let platform: String = row.try_get("platform")?;
                Ok(PushAddress {
                    id: row.try_get("id")?,
                    platform: DevicePlatform::parse(&platform)
                        .ok_or(StoreError::NotFound("device platform"))?,
                    token: row.try_get("token")?,
                    web_keys: row.try_get("web_keys")?,
                })
            })
            .collect()
    }

    /// Where a push to `channel` goes, after `after` in id order, at most `limit` devices
    /// (see [`Self::channel_push_device_ids`]).
    pub async fn channel_push_devices(
        &self,
        app_id: &str,
        channel: &str,
        after: &str,
        limit: i64,
    ) -> Result<Vec<PushAddress>, StoreError> {
        let ids = self.channel_push_device_ids(app_id, channel, after, limit).await?;
        self.push_addresses(app_id, &ids).await
    }
}
