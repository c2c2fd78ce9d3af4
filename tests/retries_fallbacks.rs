//! What an admin configures for retries and fallbacks is what runs: a strategy's
//! attempts and backoff bounds, `ON_RATE_LIMIT` on the sidecar's own limit, and
//! fallbacks that keep `ExecuteTask`'s constraints and never touch more sensitive data
//! than the tool asked for. Real control plane, sidecar, PostgreSQL and HTTP tools.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use serde_json::json;
use tonic::Code;
use toolplane_proto::v1 as pb;
use toolplane_tests::eventually;
use toolplane_tests::grpc::{Admin, Authed, executor, http_tool, invoke_request};
use toolplane_tests::pg::TestDb;
use toolplane_tests::procs::{ADMIN_TOKEN, Proc, control_plane, sidecar};
use toolplane_tests::tool_server::ToolServer;

const WAIT: Duration = Duration::from_secs(20);

type Ex = pb::executor_client::ExecutorClient<Authed>;

/// A control plane on its own database, a tool server and one agent; the sidecar is
/// started by [`Fleet::serve`] once tools and strategies are in place, so its first
/// snapshot already holds them.
struct Fleet {
    db: TestDb,
    tools: ToolServer,
    cp: Proc,
    admin: Admin,
    agent: pb::Agent,
    agent_token: String,
}

impl Fleet {
    async fn start() -> Self {
        let db = TestDb::create().await;
        let tools = ToolServer::start().await;
        let cp = control_plane(Some(&db.url)).await;
        let mut admin = Admin::connect(&cp.url(), ADMIN_TOKEN).await;
        let agent = admin.agent("retrying-agent").await;
        let agent_token = admin.token(pb::Role::Agent, &agent.id).await;
        let mut fleet = Self {
            db,
            tools,
            cp,
            admin,
            agent,
            agent_token,
        };
        // A healthy tool of its own capability, to tell when the sidecar serves.
        let mut warm = http_tool("warm", &fleet.tools.url("/count/warm"));
        warm.capabilities = vec!["warm-up".to_owned()];
        fleet.tool(warm).await;
        fleet
    }

    /// Registers `t` and grants it to the agent.
    async fn tool(&mut self, t: pb::Tool) -> pb::Tool {
        let t = self.admin.register(t).await.unwrap();
        self.admin.grant_full(&self.agent.id, &t.id).await;
        t
    }

    /// An idempotent tool at `path` with `capability`, `sensitivity` and `cost`.
    async fn tool_at(
        &mut self,
        name: &str,
        path: &str,
        capability: &str,
        sensitivity: pb::DataSensitivity,
        cost: &str,
    ) -> pb::Tool {
        let mut t = http_tool(name, &self.tools.url(path));
        t.capabilities = vec![capability.to_owned()];
        t.requirements.as_mut().unwrap().data_sensitivity = sensitivity as i32;
        t.cost_per_call = cost.to_owned();
        self.tool(t).await
    }

    async fn strategy(&mut self, s: pb::FallbackStrategy) {
        self.admin
            .registry
            .set_fallback_strategy(pb::SetFallbackStrategyRequest { strategy: Some(s) })
            .await
            .unwrap();
    }

    /// Starts the sidecar and waits until it answers calls from a snapshot.
    async fn serve(&mut self) -> (Proc, Ex) {
        let sidecar_token = self.admin.token(pb::Role::Sidecar, "").await;
        let sc = sidecar(&self.cp, &sidecar_token).await;
        let ex = executor(&sc.url(), Some(&self.agent_token)).await;
        eventually("the sidecar to serve from a snapshot", WAIT, || {
            let mut ex = ex.clone();
            async move {
                match ex.invoke(invoke_request("warm", &json!({"text": "warm up"}))).await {
                    Err(s) if matches!(s.code(), Code::Unavailable | Code::Unauthenticated) => None,
                    other => Some(other.unwrap()),
                }
            }
        })
        .await;
        (sc, ex)
    }

    /// How many audit events of `action` concern `tool`, with the detail of the last.
    async fn audited(&self, action: &str, tool: &pb::Tool) -> (i64, String) {
        let client = self.db.client().await;
        let id = uuid::Uuid::parse_str(&tool.id).unwrap();
        let rows = client
            .query(
                "SELECT detail FROM audit_events WHERE action = $1 AND tool_id = $2 ORDER BY occurred_at",
                &[&action, &id],
            )
            .await
            .unwrap();
        let last = rows.last().map(|r| r.get::<_, String>(0)).unwrap_or_default();
        (i64::try_from(rows.len()).unwrap(), last)
    }

    /// Waits until at least `n` events of `action` about `tool` are stored; the last detail.
    async fn wait_audited(&self, action: &str, tool: &pb::Tool, n: i64) -> String {
        eventually(&format!("{n} {action} events of {}", tool.name), WAIT, || async move {
            let (count, detail) = self.audited(action, tool).await;
            (count >= n).then_some(detail)
        })
        .await
    }
}

fn strategy(tool: &pb::Tool, mode: pb::DegradationMode) -> pb::FallbackStrategy {
    pb::FallbackStrategy {
        tool_id: tool.id.clone(),
        mode: mode as i32,
        ..Default::default()
    }
}

async fn invoke(ex: &Ex, tool: &str) -> pb::ToolResult {
    ex.clone()
        .invoke(invoke_request(tool, &json!({"text": "a b c"})))
        .await
        .unwrap()
        .into_inner()
        .result
        .unwrap()
}

#[tokio::test]
async fn a_strategys_attempts_and_backoff_are_what_runs() {
    let mut f = Fleet::start().await;
    use pb::DataSensitivity::Internal;
    let once = f.tool_at("once", "/unavailable/once", "a", Internal, "0.001").await;
    let five = f.tool_at("five", "/unavailable/five", "b", Internal, "0.001").await;
    let patient = f
        .tool_at("patient", "/unavailable/patient", "c", Internal, "0.001")
        .await;
    let defaults = f
        .tool_at("defaults", "/unavailable/defaults", "d", Internal, "0.001")
        .await;
    // ABORT: no fallback, so every upstream call counted is a retry of the tool itself.
    let abort = pb::DegradationMode::Abort;
    f.strategy(pb::FallbackStrategy {
        max_attempts: 1,
        ..strategy(&once, abort)
    })
    .await;
    // Waits of 100..200 ms, then 125..250 ms (capped) three times: 475..950 ms in all;
    // uncapped (200, 400, 800 ms) they would be at least 1.5 s.
    f.strategy(pb::FallbackStrategy {
        max_attempts: 5,
        initial_backoff_ms: 200,
        max_backoff_ms: 250,
        ..strategy(&five, abort)
    })
    .await;
    // One wait of 300..600 ms; the default initial backoff (50 ms) would wait at most 50.
    f.strategy(pb::FallbackStrategy {
        max_attempts: 2,
        initial_backoff_ms: 600,
        ..strategy(&patient, abort)
    })
    .await;
    // Nothing set: the defaults (3 attempts).
    f.strategy(strategy(&defaults, abort)).await;
    let (_sc, ex) = f.serve().await;

    let r = invoke(&ex, "once").await;
    assert_eq!(r.status, pb::ToolExecutionStatus::ExecutionError as i32, "{r:?}");
    assert_eq!((r.attempts, f.tools.hits("/unavailable/once")), (1, 1));

    let started = Instant::now();
    let r = invoke(&ex, "five").await;
    let took = started.elapsed();
    assert_eq!((r.attempts, f.tools.hits("/unavailable/five")), (5, 5), "{r:?}");
    assert!(
        took >= Duration::from_millis(450),
        "waits below the initial backoff: {took:?}"
    );
    assert!(
        took < Duration::from_millis(1450),
        "waits past the maximum backoff: {took:?}"
    );

    let started = Instant::now();
    let r = invoke(&ex, "patient").await;
    let took = started.elapsed();
    assert_eq!((r.attempts, f.tools.hits("/unavailable/patient")), (2, 2), "{r:?}");
    assert!(
        took >= Duration::from_millis(300),
        "the configured initial backoff: {took:?}"
    );

    let r = invoke(&ex, "defaults").await;
    assert_eq!((r.attempts, f.tools.hits("/unavailable/defaults")), (3, 3), "{r:?}");
}

#[tokio::test]
async fn on_rate_limit_falls_back_when_the_sidecars_own_limit_refuses() {
    let mut f = Fleet::start().await;
    let mut limited = http_tool("limited", &f.tools.url("/count/limited"));
    limited.requirements.as_mut().unwrap().rate_limit_rpm = 1;
    let limited = f.tool(limited).await;
    // The fallback has a limit of its own, which it must pass too.
    let mut backup = http_tool("backup", &f.tools.url("/count/backup"));
    backup.requirements.as_mut().unwrap().rate_limit_rpm = 1;
    let backup = f.tool(backup).await;
    f.strategy(pb::FallbackStrategy {
        fallback_tool_ids: vec![backup.id.clone()],
        conditions: vec![pb::FallbackCondition::OnRateLimit as i32],
        ..strategy(&limited, pb::DegradationMode::Full)
    })
    .await;
    let (_sc, ex) = f.serve().await;

    let first = invoke(&ex, "limited").await;
    assert_eq!(first.status, pb::ToolExecutionStatus::Success as i32, "{first:?}");
    assert_eq!(first.tool_id, limited.id);

    // The sidecar's own limit refuses the second call: the fallback answers.
    let second = invoke(&ex, "limited").await;
    assert_eq!(second.status, pb::ToolExecutionStatus::Success as i32, "{second:?}");
    assert_eq!(
        (second.tool_id.as_str(), second.fallback_from_tool_id.as_str()),
        (backup.id.as_str(), limited.id.as_str())
    );
    assert_eq!((f.tools.hits("/count/limited"), f.tools.hits("/count/backup")), (1, 1));
    let why = f.wait_audited("fallback_used", &backup, 1).await;
    assert!(why.contains("fell back from limited to backup"), "{why}");
    f.wait_audited("rate_limited", &limited, 1).await;

    // Both limits spent: the primary's refusal stands, and the fallback is not called.
    let third = invoke(&ex, "limited").await;
    assert_eq!(third.status, pb::ToolExecutionStatus::RateLimited as i32, "{third:?}");
    assert_eq!(third.tool_id, limited.id);
    assert!(third.retry_after_ms > 0);
    assert_eq!((f.tools.hits("/count/limited"), f.tools.hits("/count/backup")), (1, 1));
    f.wait_audited("rate_limited", &backup, 1).await;
}

#[tokio::test]
async fn execute_task_fallbacks_keep_the_requests_cost_limit() {
    let mut f = Fleet::start().await;
    use pb::DataSensitivity::Internal;
    let primary = f
        .tool_at("converter", "/unavailable/converter", "convert", Internal, "0.001")
        .await;
    // Another capability: selection never proposes it; only the strategy names it.
    let dear = f
        .tool_at("dear_converter", "/count/dear", "premium", Internal, "0.50")
        .await;
    f.strategy(pb::FallbackStrategy {
        fallback_tool_ids: vec![dear.id.clone()],
        max_attempts: 1,
        ..strategy(&primary, pb::DegradationMode::Full)
    })
    .await;
    let (_sc, ex) = f.serve().await;
    let task = |max_cost: &str| pb::ExecuteTaskRequest {
        task_description: "convert the text".to_owned(),
        required_capabilities: vec!["convert".to_owned()],
        constraints: Some(pb::SelectionConstraints {
            max_cost: max_cost.to_owned(),
            ..Default::default()
        }),
        parameters: toolplane_core::json::json_to_struct(&json!({"text": "one two"})),
        task_id: "convert-1".to_owned(),
        task_category: "conversion".to_owned(),
    };

    // At most 0.01 a call: the 0.50 fallback is not used, and says why.
    let r = ex.clone().execute_task(task("0.01")).await.unwrap().into_inner();
    let result = r.result.unwrap();
    assert_eq!(r.selection.unwrap().primary.unwrap().tool.unwrap().id, primary.id);
    assert_eq!(result.tool_id, primary.id, "{result:?}");
    assert_eq!(result.status, pb::ToolExecutionStatus::ExecutionError as i32);
    assert_eq!(
        f.tools.hits("/count/dear"),
        0,
        "a fallback over the cost limit is never called"
    );
    let why = f.wait_audited("permission_checked", &dear, 1).await;
    assert!(why.contains("cost per call 0.50") && why.contains("0.01"), "{why}");

    // Without the limit the same fallback answers: the strategy itself is sound.
    let r = ex.clone().execute_task(task("")).await.unwrap().into_inner();
    let result = r.result.unwrap();
    assert_eq!(result.status, pb::ToolExecutionStatus::Success as i32, "{result:?}");
    assert_eq!(
        (result.tool_id.as_str(), result.fallback_from_tool_id.as_str()),
        (dear.id.as_str(), primary.id.as_str())
    );
    assert_eq!(f.tools.hits("/count/dear"), 1);
    f.wait_audited("fallback_used", &dear, 1).await;
}

#[tokio::test]
async fn no_fallback_touches_more_sensitive_data_than_the_primary() {
    let mut f = Fleet::start().await;
    use pb::DataSensitivity::{Confidential, Public};
    let primary = f
        .tool_at("public_lookup", "/unavailable/public", "lookup", Public, "0.001")
        .await;
    let secret = f
        .tool_at("confidential_lookup", "/count/secret", "lookup", Confidential, "0.001")
        .await;
    let open = f.tool_at("open_lookup", "/count/open", "lookup", Public, "0.001").await;
    f.strategy(pb::FallbackStrategy {
        fallback_tool_ids: vec![secret.id.clone(), open.id.clone()],
        max_attempts: 1,
        ..strategy(&primary, pb::DegradationMode::Full)
    })
    .await;
    // No list: the tools sharing its capability, the confidential one left out.
    let by_capability = f
        .tool_at("public_lookup_2", "/unavailable/public2", "lookup", Public, "0.001")
        .await;
    f.strategy(pb::FallbackStrategy {
        max_attempts: 1,
        ..strategy(&by_capability, pb::DegradationMode::Full)
    })
    .await;
    let (_sc, ex) = f.serve().await;

    // The confidential fallback, first in the list and granted, is skipped; the
    // public one answers.
    let r = invoke(&ex, "public_lookup").await;
    assert_eq!(r.status, pb::ToolExecutionStatus::Success as i32, "{r:?}");
    assert_eq!(
        (r.tool_id.as_str(), r.fallback_from_tool_id.as_str()),
        (open.id.as_str(), primary.id.as_str())
    );
    assert_eq!(f.tools.hits("/count/secret"), 0, "never called");
    let why = f.wait_audited("permission_checked", &secret, 1).await;
    assert!(why.contains("confidential is above the primary's public"), "{why}");

    let r = invoke(&ex, "public_lookup_2").await;
    assert_eq!(r.status, pb::ToolExecutionStatus::Success as i32, "{r:?}");
    assert_eq!(
        (r.tool_id.as_str(), r.fallback_from_tool_id.as_str()),
        (open.id.as_str(), by_capability.id.as_str())
    );
    assert_eq!(f.tools.hits("/count/secret"), 0, "never called");
    f.wait_audited("fallback_used", &open, 2).await;
    assert_eq!(
        f.audited("permission_checked", &secret).await.0,
        1,
        "a tool found by capability and out of bounds is left out quietly"
    );
}
