//! Opening a connection: the upgrade request (with or without a token in it), the `connect`
//! frame when the token comes in one, and the refusals, up to the session's first reply.

use super::*;

/// The `token` query parameter of `GET /v1/connect`.
#[derive(serde::Deserialize)]
struct ConnectQuery {
    token: Option<String>,
}

/// Upgrades `GET /v1/connect` to a WebSocket speaking `tributary.v1`. A token in the request
/// (`Authorization: Bearer`, or the `token` query parameter for browsers) is checked before
/// the answer: a refused one gets plain HTTP with its error, an admitted one a WebSocket whose
/// first frame is the `connect` reply, without waiting for a `connect` frame (one round trip
/// fewer). Without one, the first frame must be `connect`.
pub async fn upgrade(State(state): State<Arc<RelayState>>, request: Request) -> Response {
    use axum::response::IntoResponse;
    let query_token = match axum::extract::Query::<ConnectQuery>::try_from_uri(request.uri()) {
        Ok(query) => query.0.token,
        Err(_) => {
            let err = OpError::new(ErrorCode::InvalidParameter, "the query string cannot be read");
            return ApiError::from(err).into_response();
        }
    };
    let token = crate::transport::bearer(request.headers(), query_token.as_deref()).map(str::to_owned);
    drop(query_token);
    let accepted = match handshake::accept(request, Some(SUBPROTOCOL)) {
        Ok(accepted) => accepted,
        Err(refused) => return refused.into_response(),
    };
    let upgrade = accepted.upgrade;
    let tasks = state.tasks.clone();
    match token {
        Some(token) => {
            // Checked here, registered once the upgrade is done (a client that goes away in
            // between leaves nothing registered); a revocation in between is caught by the
            // registration's own check.
            let (identity, credential, policy) = match Identity::authenticate(&state, &token).await {
                Ok(verified) => verified,
                Err(err) => return ApiError::from(err).into_response(),
            };
            drop(token);
            if let Err(err) = state.quotas.admit_connection(&policy) {
                return ApiError::from(err).into_response();
            }
            if !state.connections.has_room(&identity.app_id, state.config.max_connections_per_app) {
                return ApiError::from(OpError::from(ErrorCode::ConnectionLimit)).into_response();
            }
            tasks.spawn(run(Box::pin(open_verified(upgrade, state, identity, credential))));
        }
        None => {
            // The request head had the handshake timeout from the TCP accept (the listener's);
            // the `connect` frame has it from here.
            let deadline = Instant::now() + Duration::from_millis(state.config.handshake_timeout_ms);
            tasks.spawn(run(Box::pin(open(upgrade, state, deadline))));
        }
    }
    accepted.response
}

/// Waits for the `connect` frame and opens the session, or refuses the connection.
async fn open(
    upgrade: hyper::upgrade::OnUpgrade,
    state: Arc<RelayState>,
    deadline: Instant,
) -> Option<Live<Stream>> {
    let max = state.config.max_frame_bytes;
    let (stream, read_ahead) = Stream::from_upgrade(upgrade.await.ok()?);
    let mut socket = Socket::new(stream, max);
    socket.prepend(&read_ahead);
    let first = match tokio::time::timeout_at(deadline, read_input(&mut socket, max)).await {
        Ok(first) => first,
        Err(_) => Err(CloseCode::HandshakeTimeout),
    };
    let (id, token) = match first {
        Ok(Input::Frame(Ok(ClientFrame { id, op: ClientOp::Connect { token } }))) => (id, token),
        Ok(Input::Frame(Ok(ClientFrame { id, .. }))) => {
            let frame =
                server::encode_error(id, ErrorCode::ConnectExpected, "the first frame must be connect");
            refuse(socket, &frame, CloseCode::ProtocolViolation).await;
            return None;
        }
        Ok(Input::Frame(Err(err))) => {
            let frame = server::encode_error(err.id, err.code, &err.message);
            refuse(socket, &frame, CloseCode::ProtocolViolation).await;
            return None;
        }
        Ok(Input::Close(code)) => {
            reply_close(socket, code).await;
            return None;
        }
        Err(code) => {
            close(socket, code).await;
            return None;
        }
    };
    let opened = crate::transport::open_connection(&state, Some(&token)).await;
    drop(token);
    let (identity, conn, outbox) = match opened {
        Ok(opened) => opened,
        Err(err) => {
            refuse_connection(socket, id, err).await;
            return None;
        }
    };
    Some(connected(socket, state, identity, conn, outbox, id))
}

/// Opens the session of a client whose token came with the upgrade request and was checked
/// then: registers the connection and sends the `connect` reply (without an id) at once.
async fn open_verified(
    upgrade: hyper::upgrade::OnUpgrade,
    state: Arc<RelayState>,
    identity: Identity,
    credential: crate::policy::Credential,
) -> Option<Live<Stream>> {
    let (stream, read_ahead) = Stream::from_upgrade(upgrade.await.ok()?);
    let mut socket = Socket::new(stream, state.config.max_frame_bytes);
    socket.prepend(&read_ahead);
    match crate::transport::new_connection(&state, &identity, credential).await {
        Ok((conn, outbox)) => Some(connected(socket, state, identity, conn, outbox, None)),
        Err(err) => {
            refuse_connection(socket, None, err).await;
            None
        }
    }
}

/// Refuses a connection whose token or registration failed: the error, then the close code.
async fn refuse_connection(socket: Socket<Stream>, id: Option<u64>, err: OpError) {
    let code = match err.code {
        ErrorCode::ConnectionLimit => CloseCode::ConnectionLimit,
        code if code.temporary() => CloseCode::Internal,
        _ => CloseCode::InvalidToken,
    };
    let frame = server::encode_error(id, err.code, &err.message);
    refuse(socket, &frame, code).await;
}

/// Sends the `connect` reply (answering the frame `id`, if the token came in one) and starts
/// the session.
fn connected(
    mut socket: Socket<Stream>,
    state: Arc<RelayState>,
    identity: Identity,
    conn: ConnHandle,
    outbox: Outbox,
    id: Option<u64>,
) -> Live<Stream> {
    let connected = ConnectedReply {
        client_id: &identity.client_id,
        conn_id: conn.id(),
        expires_at: identity.expires_at,
        ping_interval_ms: state.config.ping_interval_ms,
        protocol: SUBPROTOCOL,
    };
    // Straight into the socket: the queue of an idle connection then never allocates.
    frame::encode(socket.out(), opcode::TEXT, &server::encode_reply(id, &connected));
    let session = Session::new(state, conn, identity, true);
    Live { socket, session, outbox }
}

/// Reads until the first complete message or close frame.
async fn read_input<S: AsyncRead + AsyncWrite + Unpin>(
    socket: &mut Socket<S>,
    max: usize,
) -> Result<Input, CloseCode> {
    loop {
        match socket.next(|incoming, _| parse(incoming, max)) {
            Ok(Some(input)) => return Ok(input),
            Ok(None) => {}
            Err(err) => return Err(close_code(&err)),
        }
        // Answer pings before the connect frame too.
        if socket.pending() > 0 {
            let _ = std::future::poll_fn(|cx| socket.poll_flush(cx)).await;
        }
        match std::future::poll_fn(|cx| socket.poll_read(cx)).await {
            Read::Data => {}
            Read::Gone => return Err(CloseCode::ProtocolViolation),
        }
    }
}
