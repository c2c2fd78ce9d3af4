use super::*;

fn services_of(set: &prost_types::FileDescriptorSet) -> Vec<String> {
    set.file
        .iter()
        .flat_map(|f| f.service.iter().map(move |s| format!("{}.{}", f.package(), s.name())))
        .collect()
}

#[test]
fn a_binary_describes_only_the_services_it_serves() {
    let sidecar = served_descriptors(&["toolplane.v1.Executor"]).unwrap();
    assert_eq!(services_of(&sidecar), ["toolplane.v1.Executor"]);
    let files: Vec<&str> = sidecar.file.iter().map(|f| f.name()).collect();
    // What Executor's messages need is there, without the services beside them.
    assert!(files.contains(&"toolplane/v1/selector.proto"), "{files:?}");
    assert!(!files.contains(&"toolplane/v1/sync.proto"), "{files:?}");

    let cp = served_descriptors(&["toolplane.v1.ToolRegistry", "toolplane.v1.SidecarSync"]).unwrap();
    let mut names = services_of(&cp);
    names.sort();
    assert_eq!(names, ["toolplane.v1.SidecarSync", "toolplane.v1.ToolRegistry"]);
    assert!(reflection(&["toolplane.v1.Executor"]).is_ok());
}
