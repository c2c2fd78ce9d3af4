//! The real binaries as child processes: started on port 0, ready when they print their
//! `listening` line, stderr captured so tests can grep the logs, killed on drop.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// Where cargo put the workspace binaries (target/<profile>/), found from the running
/// executable (a test in target/<profile>/deps/, or a binary beside them).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let mut dir = exe.parent().unwrap().to_path_buf();
    // Tests and benches run from target/<profile>/deps; binaries from target/<profile>.
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.pop();
    }
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --bins` first (make test does)",
        path.display()
    );
    path
}

pub struct Proc {
    child: Child,
    pub addr: SocketAddr,
    logs: Arc<Mutex<String>>,
}

impl Proc {
    pub async fn start(name: &str, args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut cmd = Command::new(bin(name));
        cmd.args(args)
            .env_remove("DATABASE_URL")
            .env_remove("REDIS_URL")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let logs = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = logs.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let mut l = sink.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line()).await;
        let addr = match line {
            Ok(Ok(Some(l))) => l
                .rsplit_once("grpc=")
                .and_then(|(_, a)| a.trim().parse().ok())
                .unwrap_or_else(|| panic!("{name} printed an unexpected first line: {l}")),
            other => {
                tokio::time::sleep(Duration::from_millis(200)).await;
                panic!("{name} did not start ({other:?}); logs:\n{}", logs.lock().unwrap())
            }
        };
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Self { child, addr, logs }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }

    /// Everything the process logged so far.
    pub fn logs(&self) -> String {
        self.logs.lock().unwrap().clone()
    }

    /// SIGKILL: no chance to flush or say goodbye.
    pub async fn kill(mut self) {
        let _ = self.child.kill().await;
    }

    /// SIGTERM, then wait for a clean exit.
    pub async fn stop(mut self) -> std::process::ExitStatus {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .arg("-TERM")
                .arg(pid.to_string())
                .status();
        }
        tokio::time::timeout(Duration::from_secs(20), self.child.wait())
            .await
            .expect("process did not stop within 20 s of SIGTERM")
            .unwrap()
    }
}

pub const ADMIN_TOKEN: &str = "tpk_test_admin_0123456789abcdef0123456789abcdef";
/// The master key test control planes seal credentials with.
pub const MASTER_KEY: &str = "8f1e2d3c4b5a69788796a5b4c3d2e1f00112233445566778899aabbccddeeff0";

/// The control plane on a random port; PostgreSQL when `database_url` is given.
pub async fn control_plane(database_url: Option<&str>) -> Proc {
    control_plane_with(database_url, &[]).await
}

/// A control plane with extra environment (settings under test).
pub async fn control_plane_with(database_url: Option<&str>, extra: &[(&str, &str)]) -> Proc {
    let mut env = vec![
        ("TOOLPLANE_ADMIN_TOKEN", ADMIN_TOKEN),
        ("TOOLPLANE_MASTER_KEY", MASTER_KEY),
    ];
    env.extend_from_slice(extra);
    if let Some(url) = database_url {
        env.push(("DATABASE_URL", url));
    }
    Proc::start(
        "toolplane-control-plane",
        &["--listen", "127.0.0.1:0", "--shutdown-grace", "5"],
        &env,
    )
    .await
}

/// A fresh directory for one sidecar's event spool.
pub fn spool_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("toolplane-test-spool-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

pub async fn sidecar(control_plane: &Proc, token: &str) -> Proc {
    sidecar_with_spool(control_plane, token, &spool_dir()).await
}

/// A sidecar whose event spool lives in `spool` (reuse it to restart "the same" sidecar).
pub async fn sidecar_with_spool(control_plane: &Proc, token: &str, spool: &std::path::Path) -> Proc {
    sidecar_with(control_plane, token, spool, &[]).await
}

/// A sidecar with extra environment (e.g. `REDIS_URL`).
pub async fn sidecar_with(control_plane: &Proc, token: &str, spool: &std::path::Path, env: &[(&str, &str)]) -> Proc {
    sidecar_to(&control_plane.url(), token, spool, env).await
}

/// A sidecar syncing with the control plane at `url` (e.g. an https:// one).
pub async fn sidecar_to(url: &str, token: &str, spool: &std::path::Path, env: &[(&str, &str)]) -> Proc {
    let spool = spool.to_string_lossy().into_owned();
    let args = [
        "--listen",
        "127.0.0.1:0",
        "--control-plane",
        url,
        "--sidecar-id",
        "test-sidecar",
        "--shutdown-grace",
        "2",
        "--spool-dir",
        &spool,
    ];
    let mut all = vec![("TOOLPLANE_SIDECAR_TOKEN", token)];
    all.extend_from_slice(env);
    Proc::start("toolplane-sidecar", &args, &all).await
}
