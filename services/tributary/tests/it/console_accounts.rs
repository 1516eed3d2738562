//! Console accounts: sign-up, login and logout with an HTTP-only session cookie, CSRF tokens on
//! every change, roles through memberships, and invitations.

use serde_json::{Value, json};
use tributary_testkit::TestServer;

/// A browser-like client: the session cookie and CSRF token it got.
struct Browser {
    cookie: String,
    csrf: String,
}

/// Sends a request as `browser` (cookie, and the CSRF token when `csrf`).
async fn send(
    server: &TestServer,
    browser: &Browser,
    method: &str,
    path: &str,
    body: Option<Value>,
    csrf: bool,
) -> (u16, Value) {
    let url = format!("{}{path}", server.http_url());
    let mut request = match method {
        "GET" => server.http().get(url),
        "DELETE" => server.http().delete(url),
        _ => server.http().post(url),
    }
    .header("cookie", format!("trb_session={}", browser.cookie));
    if csrf {
        request = request.header("x-csrf-token", &browser.csrf);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// POSTs without credentials; returns the status, the body and the session cookie set.
async fn open(server: &TestServer, path: &str, body: Value) -> (u16, Value, Option<String>) {
    let response =
        server.http().post(format!("{}{path}", server.http_url())).json(&body).send().await.unwrap();
    let status = response.status().as_u16();
    let cookie = response.headers().get("set-cookie").map(|v| v.to_str().unwrap().to_owned());
    (status, response.json().await.unwrap_or(Value::Null), cookie)
}

fn browser(reply: &Value, set_cookie: &str) -> Browser {
    let value = set_cookie.split(';').next().unwrap().strip_prefix("trb_session=").unwrap();
    Browser { cookie: value.to_owned(), csrf: reply["csrf_token"].as_str().unwrap().to_owned() }
}

#[tokio::test]
async fn a_company_signs_up_logs_in_and_works_with_a_cookie_and_csrf_token() {
    let closed = TestServer::spawn().await;
    let signup = json!({"email": "Ada@Example.com", "name": "Ada", "password": "correct horse battery", "company": "Acme"});
    let (status, _, _) = open(&closed, "/v1/auth/signup", signup.clone()).await;
    assert_eq!(status, 404, "sign-up is off unless the operator opens it");

    let server = TestServer::spawn_configured(|config| config.control.allow_signup = true).await;
    let (status, reply, cookie) = open(&server, "/v1/auth/signup", signup.clone()).await;
    assert_eq!(status, 201, "{reply}");
    let cookie = cookie.expect("a session cookie");
    for attribute in ["HttpOnly", "SameSite=Strict", "Secure", "Path=/"] {
        assert!(cookie.contains(attribute), "{attribute} in {cookie}");
    }
    assert_eq!(reply["user"]["email"], "ada@example.com");
    assert_eq!(reply["memberships"][0]["role"], "owner");
    let tenant = reply["memberships"][0]["tenant_id"].as_str().unwrap().to_owned();
    let ada = browser(&reply, &cookie);

    let (status, me) = send(&server, &ada, "GET", "/v1/auth/me", None, false).await;
    assert_eq!((status, me["user"]["name"].as_str()), (200, Some("Ada")));
    let (status, shown) = send(&server, &ada, "GET", &format!("/v1/tenants/{tenant}"), None, false).await;
    assert_eq!((status, shown["plan"].as_str()), (200, Some("free")), "{shown}");
    // A change needs the CSRF token as well as the cookie.
    let apps = format!("/v1/tenants/{tenant}/apps");
    let (status, reply) = send(&server, &ada, "POST", &apps, Some(json!({"name": "prod"})), false).await;
    assert_eq!((status, reply["error"]["name"].as_str()), (403, Some("permission_denied")), "{reply}");
    let wrong = Browser { cookie: ada.cookie.clone(), csrf: "csrf_guess".into() };
    assert_eq!(send(&server, &wrong, "POST", &apps, Some(json!({"name": "prod"})), true).await.0, 403);
    assert_eq!(send(&server, &ada, "POST", &apps, Some(json!({"name": "prod"})), true).await.0, 201);
    // Another tenant is not hers.
    let other = format!("/v1/tenants/{}", server.tenant_id());
    assert_eq!(send(&server, &ada, "GET", &other, None, false).await.0, 404);
    // Audited as her.
    let (_, events) =
        send(&server, &ada, "GET", &format!("/v1/tenants/{tenant}/audit-events"), None, false).await;
    assert!(events[0]["actor"].as_str().unwrap().starts_with("user:usr_"), "{events}");

    // The same address cannot sign up twice; login tells nothing about which part was wrong.
    let (status, reply, _) = open(&server, "/v1/auth/signup", signup).await;
    assert_eq!((status, reply["error"]["name"].as_str()), (409, Some("already_exists")));
    let wrong_password =
        open(&server, "/v1/auth/login", json!({"email": "ada@example.com", "password": "wrong password!"}))
            .await;
    let unknown = open(
        &server,
        "/v1/auth/login",
        json!({"email": "nobody@example.com", "password": "wrong password!"}),
    )
    .await;
    assert_eq!((wrong_password.0, unknown.0), (401, 401));
    assert_eq!(wrong_password.1, unknown.1, "the same answer");
    let (status, reply, cookie) = open(
        &server,
        "/v1/auth/login",
        json!({"email": "ADA@example.com ", "password": "correct horse battery"}),
    )
    .await;
    assert_eq!(status, 200, "{reply}");
    let again = browser(&reply, &cookie.unwrap());

    // A form of another site cannot log anyone in: the body must be declared JSON.
    let form = server
        .http()
        .post(format!("{}/v1/auth/login", server.http_url()))
        .header("content-type", "text/plain")
        .body(r#"{"email":"ada@example.com","password":"correct horse battery"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(form.status(), 400);
    assert!(form.headers().get("set-cookie").is_none());
    // Too long a password is refused like a wrong one.
    let long =
        open(&server, "/v1/auth/login", json!({"email": "ada@example.com", "password": "x".repeat(2000)}))
            .await;
    assert_eq!((long.0, long.2), (401, None));
    // A stale cookie sent before the live one does not hide it.
    let both =
        Browser { cookie: format!("trbs_stale; trb_session={}", again.cookie), csrf: again.csrf.clone() };
    assert_eq!(send(&server, &both, "GET", "/v1/auth/me", None, false).await.0, 200);

    // Logout ends that session only.
    assert_eq!(send(&server, &again, "POST", "/v1/auth/logout", None, true).await.0, 204);
    let (status, reply) = send(&server, &again, "GET", "/v1/auth/me", None, false).await;
    assert_eq!((status, reply["error"]["name"].as_str()), (401, Some("unauthorized")));
    assert_eq!(send(&server, &ada, "GET", "/v1/auth/me", None, false).await.0, 200);

    // Ten failed logins lock the address (the right password included) for the window.
    let victim =
        json!({"email": "victim@example.com", "name": "V", "password": "victim password 1", "company": "V"});
    assert_eq!(open(&server, "/v1/auth/signup", victim).await.0, 201);
    for _ in 0..10 {
        let wrong = json!({"email": "victim@example.com", "password": "guess guess guess"});
        assert_eq!(open(&server, "/v1/auth/login", wrong).await.0, 401);
    }
    let right = json!({"email": "Victim@example.com", "password": "victim password 1"});
    let (status, reply, cookie) = open(&server, "/v1/auth/login", right).await;
    assert_eq!(
        (status, reply["error"]["name"].as_str(), cookie),
        (429, Some("rate_limited"), None),
        "{reply}"
    );
    // Other addresses are not affected.
    let (status, _, _) = open(
        &server,
        "/v1/auth/login",
        json!({"email": "ada@example.com", "password": "correct horse battery"}),
    )
    .await;
    assert_eq!(status, 200);

    // Bad input.
    for (body, name) in [
        (
            json!({"email": "no-at-sign", "name": "X", "password": "long enough pw", "company": "C"}),
            "invalid_parameter",
        ),
        (json!({"email": "x@y.z", "name": "X", "password": "short", "company": "C"}), "invalid_parameter"),
        (json!({"email": "x@y.z", "name": "X", "password": "long enough pw"}), "invalid_frame"),
    ] {
        let (status, reply, cookie) = open(&server, "/v1/auth/signup", body).await;
        assert_eq!((status, reply["error"]["name"].as_str(), cookie), (400, Some(name), None), "{reply}");
    }
}

#[tokio::test]
async fn an_invitation_adds_a_member_with_its_role_once() {
    let server = TestServer::spawn_configured(|config| config.control.allow_signup = true).await;
    let signup = json!({"email": "owner@acme.test", "name": "Owner", "password": "owner password 1", "company": "Acme"});
    let (_, reply, cookie) = open(&server, "/v1/auth/signup", signup).await;
    let owner = browser(&reply, &cookie.unwrap());
    let tenant = reply["memberships"][0]["tenant_id"].as_str().unwrap().to_owned();
    let invitations = format!("/v1/tenants/{tenant}/invitations");
    let (status, invitation) = send(
        &server,
        &owner,
        "POST",
        &invitations,
        Some(json!({"email": "dev@acme.test", "role": "developer"})),
        true,
    )
    .await;
    assert_eq!(status, 201, "{invitation}");
    let token = invitation["token"].as_str().unwrap();
    assert!(token.starts_with("trbi_inv_"), "{token}");

    let accept = json!({"token": token, "name": "Dev", "password": "developer password"});
    let (status, reply, cookie) = open(&server, "/v1/auth/invitations/accept", accept.clone()).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["memberships"], json!([{"tenant_id": tenant, "role": "developer"}]));
    let dev = browser(&reply, &cookie.unwrap());
    assert_eq!(
        send(
            &server,
            &dev,
            "POST",
            &format!("/v1/tenants/{tenant}/apps"),
            Some(json!({"name": "dev-app"})),
            true
        )
        .await
        .0,
        201
    );
    let (status, _) =
        send(&server, &dev, "GET", &format!("/v1/tenants/{tenant}/management-tokens"), None, false).await;
    assert_eq!(status, 403, "a developer is not an admin");
    let (status, _) = send(
        &server,
        &dev,
        "POST",
        &invitations,
        Some(json!({"email": "x@acme.test", "role": "read_only"})),
        true,
    )
    .await;
    assert_eq!(status, 403, "developers do not invite");
    // Invitations are listed until accepted, and can be withdrawn.
    let (_, spare) = send(
        &server,
        &owner,
        "POST",
        &invitations,
        Some(json!({"email": "spare@acme.test", "role": "read_only"})),
        true,
    )
    .await;
    let (status, pending) = send(&server, &owner, "GET", &invitations, None, false).await;
    assert_eq!(status, 200);
    assert_eq!(pending.as_array().map(Vec::len), Some(1), "the accepted one is gone: {pending}");
    let spare_id = spare["id"].as_str().unwrap();
    let withdrawn = send(&server, &owner, "DELETE", &format!("{invitations}/{spare_id}"), None, true).await.0;
    assert_eq!(withdrawn, 204);
    let late = json!({"token": spare["token"], "name": "Spare", "password": "spare password!"});
    assert_eq!(open(&server, "/v1/auth/invitations/accept", late).await.0, 401, "a withdrawn invitation");

    // Members are listed; an admin-level removal ends the developer's access at once.
    let (status, members) =
        send(&server, &owner, "GET", &format!("/v1/tenants/{tenant}/members"), None, false).await;
    assert_eq!(status, 200);
    let emails: Vec<&str> =
        members.as_array().unwrap().iter().map(|m| m["user"]["email"].as_str().unwrap()).collect();
    assert_eq!(emails, ["dev@acme.test", "owner@acme.test"]);
    let dev_id = members[0]["user"]["id"].as_str().unwrap().to_owned();
    let owner_id = members[1]["user"]["id"].as_str().unwrap().to_owned();
    let remove = |id: &str| format!("/v1/tenants/{tenant}/members/{id}");
    let by_dev = send(&server, &dev, "DELETE", &remove(&owner_id), None, true).await.0;
    assert_eq!(by_dev, 403, "a developer removes no one");
    // The last owner can neither leave nor be demoted.
    let owner_role = format!("/v1/tenants/{tenant}/members/{owner_id}/role");
    let (status, reply) =
        send(&server, &owner, "POST", &owner_role, Some(json!({"role": "admin"})), true).await;
    assert_eq!((status, reply["error"]["name"].as_str()), (400, Some("invalid_parameter")), "{reply}");
    let alone = send(&server, &owner, "DELETE", &remove(&owner_id), None, true).await.0;
    assert_eq!(alone, 400);
    // A role change applies at the next request.
    let role = format!("/v1/tenants/{tenant}/members/{dev_id}/role");
    assert_eq!(send(&server, &owner, "POST", &role, Some(json!({"role": "read_only"})), true).await.0, 204);
    assert_eq!(
        send(&server, &dev, "POST", &format!("/v1/tenants/{tenant}/apps"), Some(json!({"name": "x2"})), true)
            .await
            .0,
        403
    );
    assert_eq!(send(&server, &owner, "POST", &role, Some(json!({"role": "operator"})), true).await.0, 400);
    let by_owner = send(&server, &owner, "DELETE", &remove(&dev_id), None, true).await.0;
    assert_eq!(by_owner, 204);
    assert_eq!(
        send(&server, &dev, "GET", &format!("/v1/tenants/{tenant}"), None, false).await.0,
        404,
        "no longer a member"
    );

    // Used once.
    let (status, _, _) = open(&server, "/v1/auth/invitations/accept", accept).await;
    assert_eq!(status, 401);
    // An owner cannot hand out the operator's role; a forged token is refused.
    let (status, _) = send(
        &server,
        &owner,
        "POST",
        &invitations,
        Some(json!({"email": "o@acme.test", "role": "operator"})),
        true,
    )
    .await;
    assert_eq!(status, 400);
    let forged = json!({"token": "trbi_inv_nope", "name": "X", "password": "whatever password"});
    assert_eq!(open(&server, "/v1/auth/invitations/accept", forged).await.0, 401);
}
