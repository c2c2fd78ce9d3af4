//! A real OpenID provider for the tests: `oidc-provider` from npm (installed by `make
//! test-deps` into tests/oidc/node_modules), started per test with its own port, RSA
//! key, clients and resource indicators; access tokens by client credentials.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::free_port;

/// tests/oidc, where the provider's script and node_modules are.
pub fn oidc_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/oidc"))
}

/// A client of the provider: id, secret, access-token lifetime in seconds.
pub struct Client<'a>(pub &'a str, pub &'a str, pub u64);

pub struct Idp {
    pub issuer: String,
    _child: Child,
}

impl Idp {
    /// Starts the provider issuing tokens for `resources` to `clients`.
    pub async fn start(resources: &[&str], clients: &[Client<'_>]) -> Self {
        let port = free_port();
        let clients: Vec<Value> = clients
            .iter()
            .map(|c| json!({"client_id": c.0, "client_secret": c.1, "ttl": c.2}))
            .collect();
        let mut child = Command::new("node")
            .arg("server.mjs")
            .current_dir(oidc_dir())
            .env("PORT", port.to_string())
            .env("RESOURCES", resources.join(","))
            .env("CLIENTS", Value::Array(clients).to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("node (the OpenID provider runs on it)");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .ok()
            .and_then(Result::ok)
            .flatten()
            .expect("oidc-provider did not start: run `make test-deps` (npm ci in tests/oidc)");
        let issuer = line
            .strip_prefix("ready ")
            .unwrap_or_else(|| panic!("unexpected line from oidc-provider: {line}"))
            .to_owned();
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Self { issuer, _child: child }
    }

    /// An access token for `resource`, by client credentials (client_secret_basic).
    pub async fn token(&self, client_id: &str, secret: &str, resource: &str) -> String {
        let r = crate::http_client()
            .post(format!("{}/token", self.issuer))
            .basic_auth(client_id, Some(secret))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!(
                "grant_type=client_credentials&scope=tools&resource={}",
                form_encode(resource)
            ))
            .send()
            .await
            .expect("the token endpoint");
        let status = r.status();
        let body: Value = r.json().await.expect("a JSON token response");
        assert!(status.is_success(), "token request refused: {body}");
        body["access_token"].as_str().expect("access_token").to_owned()
    }
}

fn form_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `claims` signed RS256 under `kid` with a key the provider never had.
pub async fn forge(claims: &Value, kid: &str) -> String {
    let out = Command::new("node")
        .arg("forge.mjs")
        .current_dir(oidc_dir())
        .env("CLAIMS", claims.to_string())
        .env("KID", kid)
        .output()
        .await
        .expect("node");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}
