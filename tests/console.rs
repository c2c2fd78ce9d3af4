//! The admin console in a real browser: headless Chromium through WebDriver against the
//! real control plane (on PostgreSQL) and a real sidecar calling a real HTTP tool. And
//! its refusals over plain HTTP: POSTs without the CSRF token, POSTs of a read-only
//! session, the headers every page carries.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use fantoccini::Locator;
use serde_json::json;
use tonic::Code;
use toolplane_proto::v1 as pb;
use toolplane_proto::v1::permissions_client::PermissionsClient;
use toolplane_tests::browser::Browser;
use toolplane_tests::grpc::{Admin, channel, executor, http_tool, invoke_request};
use toolplane_tests::pg::TestDb;
use toolplane_tests::procs::{ADMIN_TOKEN, Proc, control_plane_with, sidecar};
use toolplane_tests::tool_server::ToolServer;
use toolplane_tests::{eventually, free_port, wait_for_port};

const WAIT: Duration = Duration::from_secs(30);
const EVIL: &str = r#"Counts words. <script>window.__pwned = 1</script> "><img src=x onerror="window.__pwned = 2">"#;

struct System {
    _db: TestDb,
    _tools: ToolServer,
    cp: Proc,
    sidecar: Proc,
    admin: Admin,
    console: String,
    agent: pb::Agent,
    agent_token: pb::IssueTokenResponse,
    word_count: pb::Tool,
    second: pb::Tool,
    evil: pb::Tool,
}

impl System {
    async fn start() -> Self {
        let db = TestDb::create().await;
        let tools = ToolServer::start().await;
        let port = free_port();
        let listen = format!("127.0.0.1:{port}");
        let cp = control_plane_with(Some(&db.url), &[("TOOLPLANE_CONSOLE_LISTEN", &listen)]).await;
        wait_for_port(port).await;
        let mut admin = Admin::connect(&cp.url(), ADMIN_TOKEN).await;
        let word_count = admin
            .register(http_tool("word_count", &tools.url("/word_count")))
            .await
            .unwrap();
        let second = admin
            .register(http_tool("second_counter", &tools.url("/word_count")))
            .await
            .unwrap();
        let mut evil = http_tool("evil_tool", &tools.url("/word_count"));
        evil.description = EVIL.to_owned();
        let evil = admin.register(evil).await.unwrap();
        let agent = admin.agent("agent-console").await;
        admin.grant_full(&agent.id, &word_count.id).await;
        let agent_token = admin.issue(pb::Role::Agent, &agent.id).await;
        let sidecar_token = admin.token(pb::Role::Sidecar, "").await;
        let sidecar = sidecar(&cp, &sidecar_token).await;
        let s = Self {
            _db: db,
            _tools: tools,
            cp,
            sidecar,
            admin,
            console: format!("http://{listen}/"),
            agent,
            agent_token,
            word_count,
            second,
            evil,
        };
        eventually("the sidecar to serve from a snapshot", WAIT, || async {
            match s.invoke("word_count").await {
                Err(st) if st.code() == Code::Unavailable => None,
                _ => Some(()),
            }
        })
        .await;
        s
    }

    async fn invoke(&self, tool: &str) -> Result<pb::InvokeResponse, tonic::Status> {
        let mut ex = executor(&self.sidecar.url(), Some(&self.agent_token.token)).await;
        ex.invoke(invoke_request(tool, &json!({"text": "one two three"})))
            .await
            .map(|r| r.into_inner())
    }
}

/// The visible number in the overview's call counter.
async fn calls_shown(b: &Browser) -> u64 {
    let t = b.texts("#calls").await;
    t.first().and_then(|t| t.trim().parse().ok()).unwrap_or(0)
}

#[tokio::test]
async fn the_console_in_a_real_browser() {
    let mut s = System::start().await;
    for _ in 0..4 {
        s.invoke("word_count").await.unwrap();
    }
    let b = Browser::start(1400, 1000).await;
    let c = &b.client;

    // Log in; the overview's chart shows the calls just made through the sidecar.
    b.login(&s.console, ADMIN_TOKEN).await;
    eventually(
        "the overview to count the calls made through the sidecar",
        WAIT,
        || async {
            c.goto(&s.console).await.unwrap();
            (calls_shown(&b).await >= 5).then_some(())
        },
    )
    .await;
    let chart = c
        .find(Locator::Css("#calls-chart svg"))
        .await
        .expect("the overview draws its chart as inline SVG");
    let svg = chart.html(false).await.unwrap();
    assert!(svg.contains("success"), "the chart's legend names the calls' status");
    assert!(
        svg.contains("<polygon") || svg.contains("<path"),
        "the chart has a drawn series"
    );
    // The connected sidecar, with its snapshot age and the spool depth it reported.
    let sidecar_row = b.texts("#sidecars tbody tr").await;
    assert!(
        sidecar_row
            .iter()
            .any(|r| r.contains("test-sidecar") && r.ends_with(" 0")),
        "the sidecar with an empty spool: {sidecar_row:?}"
    );
    let top = b.texts("section.panel table tbody tr td a").await;
    assert!(top.iter().any(|t| t == "word_count"), "top tools: {top:?}");

    // An access request approved in the page: the agent's next call succeeds.
    let e = s.invoke("second_counter").await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    let mut agent_perms = PermissionsClient::new(channel(&s.cp.url(), Some(&s.agent_token.token)).await);
    let request = agent_perms
        .request_access(pb::RequestAccessRequest {
            tool_id: s.second.id.clone(),
            justification: "needs a second opinion on word counts".to_owned(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .request
        .unwrap();
    c.goto(&format!("{}access", s.console)).await.unwrap();
    let card = c.find(Locator::Id(&format!("request-{}", request.id))).await.unwrap();
    assert!(card.text().await.unwrap().contains("second opinion"));
    card.find(Locator::Css("button.approve"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    c.wait().for_element(Locator::Id("no-pending")).await.unwrap();
    eventually(
        "the approved agent's call through the sidecar to succeed",
        WAIT,
        || async { s.invoke("second_counter").await.ok() },
    )
    .await;

    // The grant form explains what the evaluator now says.
    c.goto(&format!("{}agents/{}", s.console, s.agent.id)).await.unwrap();
    let form = c.form(Locator::Id("grant-form")).await.unwrap();
    form.set_by_name("tool", "evil_tool").await.unwrap();
    c.find(Locator::Css("#grant-form select[name=kind]"))
        .await
        .unwrap()
        .select_by_value("limited_invocations")
        .await
        .unwrap();
    form.set_by_name("max_per_day", "7").await.unwrap();
    form.submit().await.unwrap();
    let explained = c
        .wait()
        .for_element(Locator::Id("explained"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(explained.contains("up to 7 calls a day"), "{explained}");
    assert!(explained.contains("allowed"), "{explained}");

    // A token revoked in the page is refused by the sidecar.
    c.goto(&format!("{}agents/{}", s.console, s.agent.id)).await.unwrap();
    c.find(Locator::Id(&format!("revoke-{}", s.agent_token.token_id)))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    c.wait().for_element(Locator::Id("grant-form")).await.unwrap();
    eventually("the sidecar to refuse the revoked token", WAIT, || async {
        match s.invoke("word_count").await {
            Err(e) if e.code() == Code::Unauthenticated => Some(()),
            _ => None,
        }
    })
    .await;

    // Audit filters narrow the trail.
    c.goto(&format!("{}audit", s.console)).await.unwrap();
    let all = b.texts("tr.audit-row td.action-cell").await;
    assert!(all.len() > 3, "{all:?}");
    c.find(Locator::Id("action-filter"))
        .await
        .unwrap()
        .select_by_value("token_revoked")
        .await
        .unwrap();
    c.find(Locator::Id("apply-filters"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let narrowed = eventually("the filtered trail", WAIT, || async {
        let rows = b.texts("tr.audit-row td.action-cell").await;
        (!rows.is_empty() && rows.len() < all.len()).then_some(rows)
    })
    .await;
    assert!(narrowed.iter().all(|a| a == "token_revoked"), "{narrowed:?}");

    // Verify chain, from the page.
    c.find(Locator::Id("verify-chain"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let verdict = c
        .wait()
        .for_element(Locator::Id("verify-result"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(verdict.contains("Chain intact"), "{verdict}");

    // A description holding markup renders inert: shown as text, never run.
    c.goto(&format!("{}tools/{}", s.console, s.evil.id)).await.unwrap();
    let d = c.find(Locator::Id("tool-description")).await.unwrap();
    assert_eq!(d.text().await.unwrap().trim(), EVIL);
    assert!(d.find_all(Locator::Css("img, script")).await.unwrap().is_empty());
    let pwned = c.execute("return window.__pwned === undefined;", vec![]).await.unwrap();
    assert_eq!(pwned, json!(true), "no script of the description ran");
    c.goto(&format!("{}tools?q=evil", s.console)).await.unwrap();
    let pwned = c.execute("return window.__pwned === undefined;", vec![]).await.unwrap();
    assert_eq!(pwned, json!(true));
    assert!(c.find_all(Locator::Css("#tools img")).await.unwrap().is_empty());

    // A read-only (auditor) session sees everything and no action button.
    c.find(Locator::Id("logout")).await.unwrap().click().await.unwrap();
    c.wait().for_element(Locator::Id("token")).await.unwrap();
    let auditor = s.admin.token(pb::Role::Auditor, "").await;
    b.login(&s.console, &auditor).await;
    for page in [
        format!("agents/{}", s.agent.id),
        "agents".to_owned(),
        "access".to_owned(),
        format!("tools/{}", s.word_count.id),
        "audit".to_owned(),
    ] {
        c.goto(&format!("{}{page}", s.console)).await.unwrap();
        c.wait().for_element(Locator::Id("logout")).await.unwrap();
        let actions = c.find_all(Locator::Css("form.action")).await.unwrap();
        assert!(actions.is_empty(), "{page}: a read-only session sees no action forms");
        assert!(c.find(Locator::Css("main h1")).await.is_ok(), "{page} renders");
    }
    b.client.clone().close().await.unwrap();
}

/// A plain HTTP client of the console that keeps its session cookie by hand.
struct Http {
    base: String,
    client: reqwest::Client,
    cookie: String,
}

impl Http {
    async fn login(base: &str, token: &str) -> Self {
        let client = toolplane_tests::http_client_builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        let r = client.get(format!("{base}login")).send().await.unwrap();
        let login_cookie = set_cookie(&r, "tp_login");
        let body = r.text().await.unwrap();
        let csrf = hidden(&body, "csrf");
        let r = client
            .post(format!("{base}login"))
            .header("cookie", format!("tp_login={login_cookie}"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form(&[("token", token), ("csrf", &csrf)]))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 303, "login redirects to the overview");
        let cookie = set_cookie(&r, "tp_console");
        Self {
            base: base.to_owned(),
            client,
            cookie,
        }
    }

    async fn get(&self, path: &str) -> (u16, String) {
        let r = self
            .client
            .get(format!("{}{path}", self.base))
            .header("cookie", format!("tp_console={}", self.cookie))
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }

    async fn post(&self, path: &str, fields: &[(&str, &str)]) -> (u16, String) {
        let r = self
            .client
            .post(format!("{}{path}", self.base))
            .header("cookie", format!("tp_console={}", self.cookie))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form(fields))
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }

    /// The CSRF token the session's pages carry.
    async fn csrf(&self) -> String {
        hidden(&self.get("agents").await.1, "csrf")
    }
}

fn form(fields: &[(&str, &str)]) -> String {
    url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(fields)
        .finish()
}

fn set_cookie(r: &reqwest::Response, name: &str) -> String {
    r.headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| v.strip_prefix(&format!("{name}=")))
        .and_then(|v| v.split(';').next())
        .unwrap_or_else(|| panic!("no {name} cookie set"))
        .to_owned()
}

fn hidden(html: &str, name: &str) -> String {
    let marker = format!("name=\"{name}\" value=\"");
    let at = html.find(&marker).unwrap_or_else(|| panic!("no hidden {name} field")) + marker.len();
    html[at..].split('"').next().unwrap().to_owned()
}

#[tokio::test]
async fn forms_without_the_csrf_token_and_read_only_sessions_change_nothing() {
    let db = TestDb::create().await;
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let cp = control_plane_with(Some(&db.url), &[("TOOLPLANE_CONSOLE_LISTEN", &listen)]).await;
    wait_for_port(port).await;
    let base = format!("http://{listen}/");
    let mut admin = Admin::connect(&cp.url(), ADMIN_TOKEN).await;
    let tool = admin.register(http_tool("kept", "http://127.0.0.1:9/x")).await.unwrap();
    let enabled = |admin: Admin, id: String| async move {
        let mut reg = admin.registry.clone();
        reg.get_tool(pb::GetToolRequest {
            key: Some(pb::get_tool_request::Key::Id(id)),
            version: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .tool
        .unwrap()
        .enabled
    };

    // Not logged in: every page sends to the login form.
    let anon = toolplane_tests::http_client_builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let r = anon.get(format!("{base}tools")).send().await.unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()["location"], "/login");

    // The headers every page carries; the session cookie's attributes.
    let r = anon.get(format!("{base}login")).send().await.unwrap();
    let csp = r.headers()["content-security-policy"].to_str().unwrap().to_owned();
    assert!(
        csp.contains("default-src 'none'") && !csp.contains("unsafe-inline"),
        "{csp}"
    );
    assert_eq!(r.headers()["x-frame-options"], "DENY");

    // A wrong token does not log in.
    let body = r.text().await.unwrap();
    let csrf = hidden(&body, "csrf");
    let r = anon
        .post(format!("{base}login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form(&[("token", "tpk_nope"), ("csrf", &csrf)]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403, "no login cookie: the login form's CSRF check refuses");

    let admin_http = Http::login(&base, ADMIN_TOKEN).await;
    let r = admin_http
        .client
        .get(base.clone())
        .header("cookie", format!("tp_console={}", admin_http.cookie))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // An admin's form POST without (or with a wrong) CSRF token is refused, and changes nothing.
    let path = format!("tools/{}/enabled", tool.id);
    let (status, body) = admin_http.post(&path, &[("enabled", "false")]).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("CSRF"), "{body}");
    let (status, _) = admin_http
        .post(&path, &[("enabled", "false"), ("csrf", "tpk_forged")])
        .await;
    assert_eq!(status, 403);
    assert!(enabled(admin.clone(), tool.id.clone()).await, "still enabled");
    // With the token it goes through, audited under the logged-in principal.
    let csrf = admin_http.csrf().await;
    let (status, _) = admin_http.post(&path, &[("enabled", "false"), ("csrf", &csrf)]).await;
    assert_eq!(status, 303);
    assert!(
        !enabled(admin.clone(), tool.id.clone()).await,
        "disabled from the console"
    );
    let (_, trail) = admin_http
        .get(&format!("audit?action=tool_disabled&tool_id={}", tool.id))
        .await;
    assert!(
        trail.contains("admin:bootstrap"),
        "audited with the console's principal"
    );

    // A read-only session: its POSTs are refused by the service layer, with its CSRF token.
    let auditor = admin.token(pb::Role::Auditor, "").await;
    let ro = Http::login(&base, &auditor).await;
    let csrf = ro.csrf().await;
    let (status, body) = ro.post(&path, &[("enabled", "true"), ("csrf", &csrf)]).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("auditor role"), "{body}");
    assert!(!enabled(admin.clone(), tool.id.clone()).await, "unchanged");
    let (status, _) = ro.post("tokens/issue", &[("role", "admin"), ("csrf", &csrf)]).await;
    assert_eq!(status, 403, "an auditor issues no tokens");
    let (status, page) = ro.get("audit").await;
    assert_eq!(status, 200, "an auditor reads the trail");
    assert!(!page.contains("class=\"inline action\""));

    // An agent's token does not open the console.
    let agent = admin.agent("not-an-admin").await;
    let agent_token = admin.token(pb::Role::Agent, &agent.id).await;
    let r = anon.get(format!("{base}login")).send().await.unwrap();
    let login_cookie = set_cookie(&r, "tp_login");
    let csrf = hidden(&r.text().await.unwrap(), "csrf");
    let r = anon
        .post(format!("{base}login"))
        .header("cookie", format!("tp_login={login_cookie}"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form(&[("token", &agent_token), ("csrf", &csrf)]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    // Logging out ends the session; revoking the auditor's token ends its session too.
    let csrf = admin_http.csrf().await;
    let (status, _) = admin_http.post("logout", &[("csrf", &csrf)]).await;
    assert_eq!(status, 303);
    assert_eq!(admin_http.get("tools").await.0, 303, "logged out");
    let mut identity = admin.identity.clone();
    let ro_id = {
        // The auditor token's id, from the agents page's token table.
        let (_, page) = ro.get("agents").await;
        let at = page.find("<td>auditor</td>").expect("auditor token listed");
        let row = &page[..at];
        let start = row.rfind("<td class=\"mono small\">").unwrap() + "<td class=\"mono small\">".len();
        row[start..].split('<').next().unwrap().to_owned()
    };
    identity
        .revoke_token(pb::RevokeTokenRequest { token_id: ro_id })
        .await
        .unwrap();
    assert_eq!(ro.get("tools").await.0, 303, "a revoked token's session ends at once");
}

/// One HTTP/1.1 exchange over TLS (trusting `ca`): the response's head and body.
async fn https(port: u16, ca: &rcgen::Certificate, request: String) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.der().clone()).unwrap();
    let config =
        rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = connector
        .connect(name, tcp)
        .await
        .expect("a TLS handshake with the console");
    tls.write_all(request.as_bytes()).await.unwrap();
    let mut out = String::new();
    tls.read_to_string(&mut out).await.ok();
    out
}

#[tokio::test]
async fn under_tls_the_console_is_served_over_tls_with_secure_cookies() {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = params.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .signed_by(&key, &ca, &ca_key)
        .unwrap();
    let dir = std::env::temp_dir().join(format!("toolplane-console-tls-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert_path, key_path) = (dir.join("cp.crt"), dir.join("cp.key"));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let _cp = control_plane_with(
        None,
        &[
            ("TOOLPLANE_CONSOLE_LISTEN", &listen),
            ("TOOLPLANE_TLS_CERT", cert_path.to_str().unwrap()),
            ("TOOLPLANE_TLS_KEY", key_path.to_str().unwrap()),
        ],
    )
    .await;
    wait_for_port(port).await;
    let get = |path: &str, cookie: &str| {
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nCookie: {cookie}\r\nConnection: close\r\n\r\n")
    };
    let page = https(port, &ca, get("/login", "")).await;
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    let login_cookie = page
        .lines()
        .find_map(|l| l.strip_prefix("set-cookie: tp_login="))
        .expect("a login cookie")
        .to_owned();
    assert!(login_cookie.contains("; Secure"), "{login_cookie}");
    let login = login_cookie.split(';').next().unwrap();
    let csrf = hidden(&page, "csrf");
    let body = form(&[("token", ADMIN_TOKEN), ("csrf", &csrf)]);
    let post = format!(
        "POST /login HTTP/1.1\r\nHost: localhost\r\nCookie: tp_login={login}\r\n\
         Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let answer = https(port, &ca, post).await;
    assert!(answer.starts_with("HTTP/1.1 303"), "{answer}");
    let session = answer
        .lines()
        .find_map(|l| l.strip_prefix("set-cookie: __Host-tp_console="))
        .expect("under TLS the session cookie is a __Host- cookie")
        .to_owned();
    assert!(
        session.contains("; Secure") && session.contains("HttpOnly") && session.contains("SameSite=Strict"),
        "{session}"
    );
    let id = session.split(';').next().unwrap();
    let overview = https(port, &ca, get("/", &format!("__Host-tp_console={id}"))).await;
    assert!(
        overview.starts_with("HTTP/1.1 200"),
        "{}",
        &overview[..overview.len().min(300)]
    );
    assert!(overview.contains("Calls per minute"));
    // The plaintext name of the cookie does not open a session under TLS.
    let plain = https(port, &ca, get("/", &format!("tp_console={id}"))).await;
    assert!(plain.starts_with("HTTP/1.1 303"), "{}", &plain[..plain.len().min(200)]);
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test]
async fn the_catalog_is_searched_filtered_and_paged_by_cursor() {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let cp = control_plane_with(None, &[("TOOLPLANE_CONSOLE_LISTEN", &listen)]).await;
    wait_for_port(port).await;
    let mut admin = Admin::connect(&cp.url(), ADMIN_TOKEN).await;
    for i in 0..60 {
        let mut t = http_tool(&format!("tool_{i:02}"), "http://127.0.0.1:9/x");
        t.category = if i % 3 == 0 { "finance" } else { "analysis" }.to_owned();
        if i == 42 {
            t.description = "Finds the needle in a haystack".to_owned();
        }
        admin.register(t).await.unwrap();
    }
    let http = Http::login(&format!("http://{listen}/"), ADMIN_TOKEN).await;
    let names = |page: &str| -> Vec<String> {
        page.match_indices("<td><a href=\"/tools/")
            .map(|(at, _)| {
                let rest = &page[at..];
                let start = rest.find("\">").unwrap() + 2;
                rest[start..].split('<').next().unwrap().to_owned()
            })
            .collect()
    };
    let (status, first) = http.get("tools").await;
    assert_eq!(status, 200);
    let page1 = names(&first);
    assert_eq!(page1.len(), 50, "a page holds 50");
    assert_eq!(page1[0], "tool_00");
    let next = hidden_link(&first, "next-page");
    let (_, second) = http.get(next.trim_start_matches('/')).await;
    let page2 = names(&second);
    assert_eq!(page2, (50..60).map(|i| format!("tool_{i}")).collect::<Vec<_>>());
    assert!(!second.contains("next-page"), "the last page has no next link");

    let (_, finance) = http.get("tools?category=finance").await;
    assert_eq!(names(&finance).len(), 20);
    let (_, needle) = http.get("tools?q=needle").await;
    assert_eq!(names(&needle), vec!["tool_42".to_owned()]);
    let (_, none) = http.get("tools?q=needle&category=analysis").await;
    assert!(names(&none).is_empty() && none.contains("no tools match"));
}

/// The `href` of the link with `id`.
fn hidden_link(html: &str, id: &str) -> String {
    let at = html.find(&format!("id=\"{id}\"")).unwrap_or_else(|| panic!("no #{id}"));
    let href = html[..at].rfind("href=\"").unwrap() + "href=\"".len();
    html[href..]
        .split('"')
        .next()
        .unwrap()
        .replace("&amp;", "&")
        .replace("&#38;", "&")
}

#[tokio::test]
async fn the_agents_list_is_paged_by_cursor_and_an_agent_page_finds_any_agent() {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let cp = control_plane_with(None, &[("TOOLPLANE_CONSOLE_LISTEN", &listen)]).await;
    wait_for_port(port).await;
    let mut admin = Admin::connect(&cp.url(), ADMIN_TOKEN).await;
    let mut agents = Vec::new();
    for i in 0..60 {
        agents.push(admin.agent(&format!("agent_{i:02}")).await);
    }
    let http = Http::login(&format!("http://{listen}/"), ADMIN_TOKEN).await;
    let names = |page: &str| -> Vec<String> {
        page.match_indices("<td><a href=\"/agents/")
            .map(|(at, _)| {
                let rest = &page[at..];
                let start = rest.find("\">").unwrap() + 2;
                rest[start..].split('<').next().unwrap().to_owned()
            })
            .collect()
    };
    let (status, first) = http.get("agents").await;
    assert_eq!(status, 200);
    let page1 = names(&first);
    assert_eq!(page1.len(), 50, "a page holds 50");
    let next = hidden_link(&first, "next-agents");
    let (_, second) = http.get(next.trim_start_matches('/')).await;
    let mut all = page1;
    all.extend(names(&second));
    all.sort();
    assert_eq!(all, (0..60).map(|i| format!("agent_{i:02}")).collect::<Vec<_>>());
    assert!(!second.contains("next-agents"), "the last page has no next link");
    // The last agent created has its page, whichever list page it is on.
    let last = agents.last().unwrap();
    let (status, page) = http.get(&format!("agents/{}", last.id)).await;
    assert_eq!(status, 200);
    assert!(page.contains("agent_59"), "{page}");
    let (status, _) = http.get(&format!("agents/{}", uuid::Uuid::now_v7())).await;
    assert_eq!(status, 404);

    // Sixty pending access requests: the queue shows 50, the rest on its next page.
    let tool = admin
        .register(http_tool("wanted", "http://127.0.0.1:9/x"))
        .await
        .unwrap();
    for a in &agents {
        let token = admin.token(pb::Role::Agent, &a.id).await;
        PermissionsClient::new(channel(&cp.url(), Some(&token)).await)
            .request_access(pb::RequestAccessRequest {
                tool_id: tool.id.clone(),
                justification: format!("{} needs it", a.name),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    let cards = |page: &str| page.matches("class=\"request\" id=\"request-").count();
    let (_, queue) = http.get("access").await;
    assert_eq!(cards(&queue), 50);
    let next = hidden_link(&queue, "next-pending");
    let (_, rest) = http.get(next.trim_start_matches('/')).await;
    assert_eq!(cards(&rest), 10);
    assert!(!rest.contains("next-pending"));
}
