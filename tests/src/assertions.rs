//! Assertions shared by the end-to-end tests.

/// How many attempts in an event record's history routed it.
pub fn routed_count(record: &serde_json::Value) -> usize {
    record["history"]
        .as_array()
        .map(|h| h.iter().filter(|a| a["outcome"] == "routed").count())
        .unwrap_or(0)
}

/// Every record is final (`ROUTED` or `FAILED`), none was routed twice, and each `ROUTED` one was
/// routed exactly once.
pub fn assert_final_once(records: &[serde_json::Value]) {
    for r in records {
        assert!(
            matches!(r["state"].as_str(), Some("ROUTED" | "FAILED")),
            "not final: {r}"
        );
        let routed = routed_count(r);
        assert!(routed <= 1, "routed twice: {r}");
        if r["state"] == "ROUTED" {
            assert_eq!(routed, 1, "{r}");
        }
    }
}
