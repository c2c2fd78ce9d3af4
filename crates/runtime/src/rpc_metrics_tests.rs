use super::*;

#[test]
fn only_known_methods_are_labelled_as_themselves() {
    let m = method_of("/toolplane.v1.Executor/Invoke");
    assert_eq!(
        (m.service(), m.method(), m.kind),
        ("toolplane.v1.Executor", "Invoke", "unary")
    );
    let m = method_of("/toolplane.v1.SidecarSync/Connect");
    assert_eq!(m.kind, "bidi_stream");
    let m = method_of("/grpc.health.v1.Health/Check");
    assert_eq!(m.service(), "grpc.health.v1.Health");
    let m = method_of("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo");
    assert_eq!(m.method(), "ServerReflectionInfo");
    for path in [
        "/toolplane.v1.Executor/Nope",
        "/wp-login.php",
        "/",
        "/evil.Service/Method",
    ] {
        let m = method_of(path);
        assert_eq!(
            (m.service(), m.method(), m.kind),
            ("other", "other", "unknown"),
            "{path}"
        );
    }
}
