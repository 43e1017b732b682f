//! Every kernel program loads, and stays far below the verifier's budget.

use palisade::{
    craft::Frame,
    guard::{DNS_EGRESS, DNS_INGRESS, FIREWALL},
    policy::config,
    testrun::Bench,
};

#[test]
fn loads_and_passes() {
    let mut b = Bench::new().expect("load");
    b.install(&config::default_policy()).expect("install");
    let f = Frame::tcp("10.0.0.1", "10.0.0.2", 1234, 22, 2).build();
    assert_eq!(b.run(&f).unwrap(), 2);
}

/// The verifier's processed-instruction count of each program is reported and must stay
/// under half of its 1,000,000 limit, so kernels that count differently still load them.
#[test]
fn verifier_cost_stays_far_below_the_limit() {
    let b = Bench::new().expect("load");
    for name in [FIREWALL, DNS_INGRESS, DNS_EGRESS] {
        let info = b.ebpf.program(name).unwrap().info().expect("program info");
        let n = info
            .verified_instruction_count()
            .expect("kernel reports verified instructions");
        println!("{name}: {n} instructions verified");
        assert!(n > 0 && n < 500_000, "{name}: {n}");
    }
}
