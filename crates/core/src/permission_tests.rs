use chrono::{Duration, Utc};

use super::*;
use crate::model::{DataSensitivity, PermissionType};
use crate::testutil::{agent, grant, tool};

#[test]
fn no_grant_is_denied_and_full_access_allows() {
    let a = agent("a");
    let t = tool("t");
    let d = evaluate(&a, &t, [], Utc::now());
    assert!(!d.allowed);
    assert!(d.reason.contains("no grant"), "{}", d.reason);
    let g = grant(&a, &t, PermissionType::FullAccess);
    let d = evaluate(&a, &t, [&g], Utc::now());
    assert!(d.allowed);
    assert_eq!(d.permission_id, Some(g.id));
}

#[test]
fn grants_of_other_agents_or_tools_do_not_count() {
    let a = agent("a");
    let b = agent("b");
    let t = tool("t");
    let u = tool("u");
    let gb = grant(&b, &t, PermissionType::FullAccess);
    let gu = grant(&a, &u, PermissionType::FullAccess);
    assert!(!evaluate(&a, &t, [&gb, &gu], Utc::now()).allowed);
}

#[test]
fn expired_grants_refuse() {
    let a = agent("a");
    let t = tool("t");
    let mut g = grant(&a, &t, PermissionType::FullAccess);
    g.expires_at = Some(Utc::now() - Duration::seconds(1));
    let d = evaluate(&a, &t, [&g], Utc::now());
    assert!(!d.allowed);
    assert!(d.reason.contains("expired"));
}

#[test]
fn read_only_and_data_restricted() {
    let a = agent("a");
    let mut t = tool("t");
    let ro = grant(&a, &t, PermissionType::ReadOnly);
    assert!(evaluate(&a, &t, [&ro], Utc::now()).allowed);
    t.spec.side_effects = crate::model::SideEffects::Write;
    assert!(!evaluate(&a, &t, [&ro], Utc::now()).allowed);

    let mut dr = grant(&a, &t, PermissionType::DataRestricted);
    dr.max_sensitivity = Some(DataSensitivity::Internal);
    t.spec.requirements.data_sensitivity = DataSensitivity::Confidential;
    assert!(!evaluate(&a, &t, [&dr], Utc::now()).allowed);
    t.spec.requirements.data_sensitivity = DataSensitivity::Public;
    assert!(evaluate(&a, &t, [&dr], Utc::now()).allowed);
}

#[test]
fn missing_skills_are_named() {
    let a = agent("a");
    let mut t = tool("t");
    t.spec.requirements.required_agent_skills = vec!["sql".to_owned(), "finance".to_owned()];
    let g = grant(&a, &t, PermissionType::FullAccess);
    let d = evaluate(&a, &t, [&g], Utc::now());
    assert!(!d.allowed);
    assert!(d.reason.contains("sql, finance"), "{}", d.reason);
}

#[test]
fn unenforced_types_fail_closed() {
    let a = agent("a");
    let t = tool("t");
    let g = grant(&a, &t, PermissionType::TimeRestricted);
    assert!(!evaluate(&a, &t, [&g], Utc::now()).allowed);
}
