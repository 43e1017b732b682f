use palisade::{craft::Frame, policy::config, testrun::Bench};

#[test]
fn loads_and_passes() {
    let mut b = Bench::new().expect("load");
    b.install(&config::default_policy()).expect("install");
    let f = Frame::tcp("10.0.0.1", "10.0.0.2", 1234, 22, 2).build();
    assert_eq!(b.run(&f).unwrap(), 2);
}
