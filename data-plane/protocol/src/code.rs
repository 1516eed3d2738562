//! The one table of error codes and close codes.
//!
//! Every error a client can see carries an [`ErrorCode`]: a stable number, a stable snake_case
//! name, a default message, the HTTP status used by the HTTP API, and whether retrying the same
//! request later can succeed. Every connection closed by the server carries a [`CloseCode`]:
//! codes 3000-3499 mean "reconnect (with backoff) and recover your position", codes 3500-3999
//! mean "do not reconnect without changing something" (token, request or client code).
//! `docs/protocol.md` mirrors these tables; a test keeps them in sync.

macro_rules! error_codes {
    ($( $(#[$doc:meta])* $variant:ident = ($num:expr, $name:expr, $status:expr, $temp:expr, $msg:expr), )*) => {
        /// A client-visible error. Numbers and names never change once released.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[non_exhaustive]
        pub enum ErrorCode {
            $( $(#[$doc])* $variant, )*
        }

        impl ErrorCode {
            /// Every error code, in table order.
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$variant,)*];

            /// Returns the stable number of the code.
            pub const fn number(self) -> u16 {
                match self { $(ErrorCode::$variant => $num,)* }
            }

            /// Returns the stable snake_case name of the code.
            pub const fn name(self) -> &'static str {
                match self { $(ErrorCode::$variant => $name,)* }
            }

            /// Returns the HTTP status the HTTP API answers with.
            pub const fn http_status(self) -> u16 {
                match self { $(ErrorCode::$variant => $status,)* }
            }

            /// Returns whether the same request may succeed if retried later.
            pub const fn temporary(self) -> bool {
                match self { $(ErrorCode::$variant => $temp,)* }
            }

            /// Returns the default human-readable message.
            pub const fn message(self) -> &'static str {
                match self { $(ErrorCode::$variant => $msg,)* }
            }

            /// Returns the code with this number, if there is one.
            pub fn from_number(number: u16) -> Option<Self> {
                Self::ALL.iter().copied().find(|c| c.number() == number)
            }
        }
    };
}

error_codes! {
    /// Something failed inside the server; the details are in its logs, not in the reply.
    Internal = (1000, "internal", 500, true, "internal error"),
    /// The frame or request body is not valid JSON.
    InvalidJson = (1001, "invalid_json", 400, false, "frame is not valid JSON"),
    /// The frame is valid JSON but has missing, unknown or wrongly typed fields.
    InvalidFrame = (1002, "invalid_frame", 400, false, "frame has missing, unknown or wrongly typed fields"),
    /// The `op` of the frame is not one this protocol version knows.
    UnknownOp = (1003, "unknown_op", 400, false, "unknown op"),
    /// The frame or request body is larger than the configured maximum.
    FrameTooLarge = (1004, "frame_too_large", 413, false, "frame is larger than the maximum"),
    /// The message payload is larger than its namespace allows.
    MessageTooLarge = (1005, "message_too_large", 413, false, "message is larger than its namespace allows"),
    /// The channel name is empty, too long or has characters outside the allowed set.
    InvalidChannel = (1006, "invalid_channel", 400, false, "invalid channel name"),
    /// A binary frame was not valid UTF-8 JSON.
    InvalidUtf8 = (1007, "invalid_utf8", 400, false, "frame is not valid UTF-8"),
    /// A binary payload was not valid base64.
    InvalidPayload = (1008, "invalid_payload", 400, false, "payload is not valid for its encoding"),
    /// A request parameter (limit, offset, cursor, duration) is out of range or malformed.
    InvalidParameter = (1009, "invalid_parameter", 400, false, "invalid parameter"),
    /// The connection is already subscribed to this channel.
    AlreadySubscribed = (1010, "already_subscribed", 409, false, "already subscribed to this channel"),
    /// The connection is not subscribed to this channel.
    NotSubscribed = (1011, "not_subscribed", 409, false, "not subscribed to this channel"),
    /// The connection holds as many subscriptions as it may.
    TooManySubscriptions = (1012, "too_many_subscriptions", 429, false, "too many subscriptions on this connection"),
    /// Too many requests in too short a time; slow down and retry.
    RateLimited = (1013, "rate_limited", 429, true, "rate limit exceeded"),
    /// The first frame on a connection must be `connect`, and only the first.
    ConnectExpected = (1014, "connect_expected", 400, false, "the first frame must be connect, and only the first"),
    /// The feature is turned off for this channel's namespace (history, presence, client publish).
    DisabledInNamespace = (1015, "disabled_in_namespace", 403, false, "this is disabled for the channel's namespace"),
    /// The requested resource or route does not exist.
    NotFound = (1016, "not_found", 404, false, "not found"),
    /// A record with this name or id already exists.
    AlreadyExists = (1017, "already_exists", 409, false, "already exists"),
    /// The app has no credentials for the service this needs (Twilio for a text).
    NotConfigured = (1018, "not_configured", 409, false, "the app has no credentials for this service"),
    /// The record is not in a state that allows this (an exchange accepted twice, resumed by
    /// the side that did not suspend it, changed after it ended).
    InvalidState = (1019, "invalid_state", 409, false, "the record is not in a state that allows this"),
    /// The request needs credentials and none were given.
    Unauthorized = (1100, "unauthorized", 401, false, "credentials are required"),
    /// The token is malformed, badly signed or uses an algorithm its key does not allow.
    InvalidToken = (1101, "invalid_token", 401, false, "invalid token"),
    /// The token has expired.
    TokenExpired = (1102, "token_expired", 401, false, "token expired"),
    /// The token is not valid yet (`nbf` in the future).
    TokenNotYetValid = (1103, "token_not_yet_valid", 401, false, "token is not valid yet"),
    /// The token's audience does not name this app.
    WrongAudience = (1104, "wrong_audience", 401, false, "token audience does not match its app"),
    /// The token's key id is not a key of the token's app.
    UnknownKey = (1105, "unknown_key", 401, false, "unknown signing key for this app"),
    /// The token or key does not grant this operation on this channel.
    Forbidden = (1106, "forbidden", 403, false, "permission denied"),
    /// The API key is malformed, unknown or revoked.
    InvalidApiKey = (1107, "invalid_api_key", 401, false, "invalid API key"),
    /// A refreshed token names another client or app than the connection.
    TokenMismatch = (1108, "token_mismatch", 403, false, "token belongs to another client or app"),
    /// The token, its client, its signing key's generation, its app or its tenant was revoked.
    TokenRevoked = (1109, "token_revoked", 401, false, "token has been revoked"),
    /// The app's account (tenant) is suspended or deleted: nothing is served until it is active.
    TenantSuspended = (1110, "tenant_suspended", 403, false, "account suspended"),
    /// The management credentials are valid but do not allow this action.
    PermissionDenied = (1111, "permission_denied", 403, false, "your role does not allow this action"),
    /// The channel belongs to an exchange between two tenants that one of them suspended.
    ExchangeSuspended = (1112, "exchange_suspended", 403, false, "this channel's exchange is suspended"),
    /// The account (tenant) is cut off for not paying: nothing is served until an invoice is
    /// paid.
    PaymentRequired = (1113, "payment_required", 402, false, "the account is cut off until its invoice is paid"),
    /// The app has as many connections on this node as it may, or its account as many on all
    /// nodes as its plan allows.
    ConnectionLimit = (1200, "connection_limit", 429, true, "connection limit reached"),
    /// The server is shutting down or cannot take the request now.
    Unavailable = (1201, "unavailable", 503, true, "service unavailable"),
    /// The account's monthly message quota is used up (and its plan allows no overage).
    QuotaExceeded = (1202, "quota_exceeded", 429, false, "monthly message quota used up"),
    /// The account has as many channels with subscribers as its plan allows.
    ChannelLimit = (1203, "channel_limit", 429, true, "channel limit reached"),
    /// The account's monthly SMS quota (segments) is used up.
    SmsQuotaExceeded = (1204, "sms_quota_exceeded", 429, false, "monthly SMS quota used up"),
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.name(), self.number())
    }
}

macro_rules! close_codes {
    ($( $(#[$doc:meta])* $variant:ident = ($num:expr, $reason:expr), )*) => {
        /// Why the server closed a connection. 3000-3499: reconnect and recover; 3500-3999: terminal.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[non_exhaustive]
        pub enum CloseCode {
            $( $(#[$doc])* $variant, )*
        }

        impl CloseCode {
            /// Every close code, in table order.
            pub const ALL: &'static [CloseCode] = &[$(CloseCode::$variant,)*];

            /// Returns the WebSocket close code.
            pub const fn number(self) -> u16 {
                match self { $(CloseCode::$variant => $num,)* }
            }

            /// Returns the close reason, always shorter than the 123 bytes WebSocket allows.
            pub const fn reason(self) -> &'static str {
                match self { $(CloseCode::$variant => $reason,)* }
            }

            /// Returns the code with this number, if there is one.
            pub fn from_number(number: u16) -> Option<Self> {
                Self::ALL.iter().copied().find(|c| c.number() == number)
            }
        }
    };
}

close_codes! {
    /// The node is shutting down; reconnect (another node will take you).
    Shutdown = (3000, "server shutting down"),
    /// The connection's outbound queue was full; reconnect and recover from your last position.
    SlowConsumer = (3001, "slow consumer: reconnect and recover"),
    /// Nothing arrived within the idle timeout (pings were not answered).
    IdleTimeout = (3002, "idle timeout: no pong received"),
    /// The app had too many connections on this node; reconnect with backoff.
    ConnectionLimit = (3003, "connection limit reached"),
    /// An internal error ended the connection; reconnect with backoff.
    Internal = (3004, "internal error"),
    /// The connection's token expired without a refresh; reconnect with a fresh token.
    TokenExpired = (3005, "token expired: reconnect with a fresh token"),
    /// No `connect` frame arrived within the handshake timeout.
    HandshakeTimeout = (3006, "handshake timeout"),
    /// The app's backend disconnected this client and allows it back: reconnect (with backoff).
    Disconnected = (3007, "disconnected by the server: reconnect"),
    /// The client broke the protocol (for example a frame that is not a WebSocket text or binary frame).
    ProtocolViolation = (3500, "protocol violation"),
    /// The token given in `connect` was refused; the `connect` reply says why.
    InvalidToken = (3501, "invalid token"),
    /// A frame was larger than the maximum frame size.
    FrameTooLarge = (3502, "frame too large"),
    /// The client did not negotiate a supported subprotocol version.
    UnsupportedProtocol = (3503, "unsupported protocol version"),
    /// The connection's client or token was revoked.
    Revoked = (3504, "revoked"),
    /// The app's account (tenant) was suspended or deleted.
    TenantSuspended = (3505, "account suspended"),
    /// Another connection took over the session of this client id (MQTT); do not reconnect
    /// automatically, or the two will take it from each other in turn.
    SessionTakenOver = (3506, "session taken over by another connection"),
    /// The connection was subscribed to a channel of an exchange between two tenants, and the
    /// exchange was suspended or ended.
    ExchangeClosed = (3507, "exchange suspended or ended"),
}

impl CloseCode {
    /// Returns whether the client should reconnect (and recover its position).
    pub const fn reconnect(self) -> bool {
        self.number() < 3500
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn error_numbers_and_names_are_unique() {
        let numbers: HashSet<_> = ErrorCode::ALL.iter().map(|c| c.number()).collect();
        let names: HashSet<_> = ErrorCode::ALL.iter().map(|c| c.name()).collect();
        assert_eq!(numbers.len(), ErrorCode::ALL.len());
        assert_eq!(names.len(), ErrorCode::ALL.len());
        for c in ErrorCode::ALL {
            assert_eq!(ErrorCode::from_number(c.number()), Some(*c));
        }
    }

    #[test]
    fn close_codes_are_in_their_bands_with_short_reasons() {
        for c in CloseCode::ALL {
            assert!((3000..4000).contains(&c.number()));
            assert!(c.reason().len() < 123, "{c:?}");
            assert_eq!(CloseCode::from_number(c.number()), Some(*c));
        }
        assert!(CloseCode::SlowConsumer.reconnect());
        assert!(!CloseCode::InvalidToken.reconnect());
    }
}
