use std::time::Duration;

use super::*;

#[test]
fn each_token_shows_its_worst_session_and_leaves_with_it() {
    let fleet = Arc::new(Fleet::default());
    let token = Uuid::now_v7();
    let a = fleet.join(Some(token));
    let b = fleet.join(Some(token));
    a.synced(10);
    b.synced(7);
    let admin = fleet.join(None);
    admin.synced(12);
    let mut out = String::new();
    fleet.render(12, Instant::now() + Duration::from_secs(3), &mut out);
    assert!(
        out.contains(&format!("{SIDECAR_REVISION_LAG}{{sidecar_token=\"{token}\"}} 5\n")),
        "{out}"
    );
    assert!(out.contains(&format!(
        "{SIDECAR_REVISION_LAG}{{sidecar_token=\"bootstrap-admin\"}} 0\n"
    )));
    assert!(out.contains(&format!("{SIDECAR_PUSH_AGE}{{sidecar_token=\"{token}\"}} 3.")));
    drop((a, b, admin));
    let mut out = String::new();
    fleet.render(12, Instant::now(), &mut out);
    assert_eq!(out, "", "disconnected sidecars leave no series");
}

#[test]
fn series_are_bounded_keeping_the_furthest_behind() {
    let fleet = Arc::new(Fleet::default());
    let members: Vec<Member> = (0..MAX_SIDECAR_SERIES as u64 + 50)
        .map(|i| {
            let m = fleet.join(Some(Uuid::now_v7()));
            m.synced(i);
            m
        })
        .collect();
    let mut out = String::new();
    fleet.render(1000, Instant::now(), &mut out);
    let lags: Vec<&str> = out.lines().filter(|l| l.starts_with(SIDECAR_REVISION_LAG)).collect();
    assert_eq!(lags.len(), MAX_SIDECAR_SERIES);
    assert!(lags[0].ends_with(" 1000"), "{}", lags[0]);
    assert_eq!(members.len(), MAX_SIDECAR_SERIES + 50);
}
