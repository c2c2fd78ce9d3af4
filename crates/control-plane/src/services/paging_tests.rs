use super::*;

#[test]
fn a_token_round_trips_and_belongs_to_its_list() {
    let first = PageRequest::parse("agents", 2, "").unwrap();
    assert_eq!(first.after, None);
    let (page, next) = first.finish(vec!["a", "b", "c"], |s| (*s).to_owned());
    assert_eq!(page, ["a", "b"]);
    let second = PageRequest::parse("agents", 2, &next).unwrap();
    assert_eq!(second.after.as_deref(), Some("b"));
    let (page, next) = second.finish(vec!["c"], |s| (*s).to_owned());
    assert_eq!((page, next.as_str()), (vec!["c"], ""));
    let other = first.finish(vec!["a", "b", "c"], |s| (*s).to_owned()).1;
    assert!(
        PageRequest::parse("tokens", 2, &other).is_err(),
        "a token of another list"
    );
    assert!(PageRequest::parse("agents", 2, "not hex!").is_err());
    assert!(PageRequest::parse("agents", 1001, "").is_err());
    assert_eq!(PageRequest::parse("agents", 0, "").unwrap().size, 100);
}
