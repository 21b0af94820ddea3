//! The blast radius: which bound a run meets first as it fills (its memcg's limit, the node's
//! eviction threshold, a global OOM), and the refusal of a run that would reach the node's.
//!
//! Enters: the domain's limit and headroom, what the run adds, the node's memory
//! ([`NodeMemory`]) and `--eviction-threshold`. Leaves: the plan's [`PlanDomain`], and the one
//! line that refuses it without `--allow-node-oom`.
//!
//! A run is bounded by whichever comes first as it grows: the limit of its memcg (an OOM kill
//! inside that cgroup), the node's `memory.available` falling below the kubelet's eviction
//! threshold (pods evicted, by the kubelet's ranking), or the node's MemAvailable running out
//! (a global OOM, whose kill can take any process: the kubelet, the runtime, sshd). The
//! domain is the node when there is no limit, or when the limit's headroom is more than the
//! node can give before its own bounds: then the limit would never be what stops the run.
//! Such a run that reaches the node's bounds is refused unless `--allow-node-oom`.

use super::available::Goal;
use crate::{
    output::line::{DomainKind, FirstBound, PlanDomain},
    size::Bytes,
    target::node::NodeMemory,
};

/// The limit that applies to the run's target.
#[derive(Clone, Copy, Debug)]
pub struct Limit<'a> {
    /// The cgroup that sets it.
    pub cgroup: &'a str,
    /// Its limit.
    pub bytes: u64,
    /// What the domain can still be charged before it, the run's apps aside.
    pub headroom: u64,
}

/// The plan's domain for a run adding `run_bytes` under `limit` (`None`: no limit anywhere
/// above the target) on a node with `node`'s memory.
pub fn assess(
    limit: Option<Limit<'_>>,
    run_bytes: u64,
    node: &NodeMemory,
    threshold: u64,
    allow_node_oom: bool,
) -> PlanDomain {
    // A threshold of 0 is no threshold: `memory.available < 0` never holds.
    let eviction_after = (threshold > 0).then(|| node.available.saturating_sub(threshold));
    let node_room = eviction_after.map_or(node.mem_available, |e| e.min(node.mem_available));
    let kind = match limit {
        Some(l) if l.headroom <= node_room => DomainKind::Memcg,
        _ => DomainKind::Node,
    };
    let first = match (kind, limit) {
        (DomainKind::Memcg, Some(l)) if run_bytes > l.headroom => FirstBound::Limit,
        (DomainKind::Node, _) if run_bytes > node_room => match eviction_after {
            Some(e) if e <= node.mem_available => FirstBound::Eviction,
            _ => FirstBound::NodeOom,
        },
        _ => FirstBound::Neither,
    };
    PlanDomain {
        kind,
        cgroup: limit.map(|l| l.cgroup.to_owned()),
        limit_bytes: limit.map(|l| l.bytes),
        headroom_bytes: limit.map(|l| l.headroom),
        node_available_bytes: node.available,
        node_available_from: node.available_from,
        node_mem_available_bytes: node.mem_available,
        eviction_threshold_bytes: threshold,
        eviction_after_bytes: eviction_after,
        run_bytes,
        first,
        allow_node_oom,
    }
}

/// Whether the plan reaches the node's own bounds (eviction or a global OOM).
pub fn reaches_node(domain: &PlanDomain) -> bool {
    matches!(domain.first, FirstBound::Eviction | FirstBound::NodeOom)
}

/// Why the domain is the node, for people: `no memory limit on /x or any ancestor`.
pub fn why_node(domain: &PlanDomain, target: &str) -> String {
    match (&domain.cgroup, domain.limit_bytes, domain.headroom_bytes) {
        (Some(cgroup), Some(limit), Some(headroom)) => format!(
            "the limit of {} on {cgroup} leaves {} to charge, more than the node can give",
            Bytes(limit),
            Bytes(headroom)
        ),
        _ if target == "/" => "the root cgroup, which has no limit".to_owned(),
        _ => format!("no memory limit on {target} or any ancestor"),
    }
}

/// The one line that refuses a run reaching the node's bounds (`None`: not refused).
pub fn refusal(domain: &PlanDomain, target: &str) -> Option<String> {
    if domain.kind != DomainKind::Node || !reaches_node(domain) || domain.allow_node_oom {
        return None;
    }
    let reached = match domain.first {
        FirstBound::Eviction if domain.run_bytes > domain.node_mem_available_bytes => format!(
            "below the eviction threshold of {} and past MemAvailable ({}), into a global OOM",
            Bytes(domain.eviction_threshold_bytes),
            Bytes(domain.node_mem_available_bytes)
        ),
        FirstBound::Eviction => format!(
            "below the eviction threshold of {} (kubelet eviction)",
            Bytes(domain.eviction_threshold_bytes)
        ),
        _ => format!(
            "past MemAvailable ({}), into a global OOM",
            Bytes(domain.node_mem_available_bytes)
        ),
    };
    Some(format!(
        "refusing: this run's OOM domain is the node ({}): {} would take the node's available \
         memory (memory.available {}, as the kubelet computes it) {reached}; what is then \
         evicted or killed can be any process on the node; pass --allow-node-oom to run it \
         anyway, or target a cgroup with a limit",
        why_node(domain, target),
        Bytes(domain.run_bytes),
        Bytes(domain.node_available_bytes),
    ))
}

/// `--fill-to available=`: the one line that refuses holding the node's memory.available at
/// (or a deadband above) the eviction threshold, or below it, without `--allow-node-oom`
/// (`None`: not refused). Such a run means eviction: it reaches the kubelet's threshold on
/// purpose, and the pod the kubelet then evicts can be any on the node. A goal whose deadband
/// stays above the threshold is no eviction, and a limit that comes first keeps the run in
/// its memcg: neither needs the flag. (A global OOM is never the plan: a goal that would
/// take MemAvailable under the loop's floor is refused before this.)
pub fn refusal_available(
    domain: &PlanDomain,
    target: &str,
    given: &str,
    goal: &Goal,
) -> Option<String> {
    if domain.kind != DomainKind::Node || !reaches_node(domain) || domain.allow_node_oom {
        return None;
    }
    Some(format!(
        "refusing: this run's OOM domain is the node ({}): --fill-to {given} holds the node's \
         memory.available (now {}, as the kubelet computes it) at {} ± {}, at or below the \
         eviction threshold of {}: the kubelet evicts pods there, and which it evicts can be any \
         on the node; pass --allow-node-oom to test eviction, or give at least available={}",
        why_node(domain, target),
        Bytes(domain.node_available_bytes),
        Bytes(goal.bytes),
        Bytes(goal.deadband),
        Bytes(domain.eviction_threshold_bytes),
        super::available::flag_value(domain.eviction_threshold_bytes + goal.deadband + 1)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::target::node::AvailableFrom;

    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;

    fn node(available: u64, mem_available: u64) -> NodeMemory {
        NodeMemory {
            mem_total: 24 * GIB,
            mem_available,
            swap_total: 0,
            available,
            available_from: AvailableFrom::RootMemcg,
        }
    }

    fn limit(bytes: u64, headroom: u64) -> Option<Limit<'static>> {
        Some(Limit {
            cgroup: "/pod",
            bytes,
            headroom,
        })
    }

    #[test]
    fn an_unlimited_target_is_bounded_by_the_node() {
        let n = node(20 * GIB, 21 * GIB);
        let small = assess(None, 16 * MIB, &n, 100 * MIB, false);
        assert_eq!(
            (small.kind, small.first),
            (DomainKind::Node, FirstBound::Neither)
        );
        assert_eq!(refusal(&small, "/x"), None);
        // Past memory.available − 100 MiB, short of MemAvailable: eviction first.
        let evicts = assess(None, 20 * GIB - 50 * MIB, &n, 100 * MIB, false);
        assert_eq!(evicts.first, FirstBound::Eviction);
        assert_eq!(evicts.eviction_after_bytes, Some(20 * GIB - 100 * MIB));
        let line = refusal(&evicts, "/x").unwrap();
        assert!(!line.contains('\n'));
        for needle in [
            "the node",
            "no memory limit on /x",
            "--allow-node-oom",
            "eviction threshold of 100 MiB",
            "available memory",
        ] {
            assert!(line.contains(needle), "{line} lacks {needle}");
        }
        assert!(!line.contains("global OOM"), "{line}");
        let oom = assess(None, 30 * GIB, &n, 100 * MIB, false);
        assert_eq!(oom.first, FirstBound::Eviction);
        assert!(refusal(&oom, "/x").unwrap().contains("global OOM"));
        // Allowed: planned, and the plan says the kill may take anything.
        let allowed = assess(None, 30 * GIB, &n, 100 * MIB, true);
        assert_eq!(refusal(&allowed, "/x"), None);
        // The root cgroup is named as such.
        assert!(refusal(&oom, "/").unwrap().contains("the root cgroup"));
    }

    #[test]
    fn without_a_threshold_a_global_oom_comes_first() {
        let n = node(20 * GIB, 18 * GIB);
        let d = assess(None, 19 * GIB, &n, 0, false);
        assert_eq!(
            (d.eviction_after_bytes, d.first),
            (None, FirstBound::NodeOom)
        );
        assert!(refusal(&d, "/x").unwrap().contains("past MemAvailable"));
        // The kubelet's figure can be above MemAvailable (kernel memory no cgroup is charged):
        // with a threshold too, MemAvailable then runs out first.
        let d = assess(None, 19 * GIB, &n, 100 * MIB, false);
        assert_eq!(d.first, FirstBound::NodeOom);
    }

    #[test]
    fn a_limit_the_node_can_give_is_the_domain() {
        let n = node(20 * GIB, 21 * GIB);
        let d = assess(limit(64 * MIB, 40 * MIB), 128 * MIB, &n, 100 * MIB, false);
        assert_eq!((d.kind, d.first), (DomainKind::Memcg, FirstBound::Limit));
        assert_eq!(refusal(&d, "/pod/c"), None);
        let d = assess(limit(64 * MIB, 40 * MIB), 16 * MIB, &n, 100 * MIB, false);
        assert_eq!((d.kind, d.first), (DomainKind::Memcg, FirstBound::Neither));
    }

    /// `--fill-to available=`: the band around the goal reaching the threshold is eviction,
    /// refused without the flag; above it, or with a limit that comes first, it is not.
    #[test]
    fn a_memory_available_goal_at_the_threshold_is_eviction() {
        let n = node(20 * GIB, 19 * GIB);
        let goal = Goal::new(2 * GIB, 24 * GIB);
        // What the run takes: from now to the bottom of the deadband.
        let run = |g: &Goal| n.available - (g.bytes - g.deadband);
        let at = assess(None, run(&goal), &n, 2 * GIB, false);
        assert_eq!(at.first, FirstBound::Eviction);
        let line = refusal_available(&at, "/x", "available=2Gi", &goal).unwrap();
        assert!(!line.contains('\n'));
        for needle in [
            "OOM domain is the node",
            "no memory limit on /x",
            "--fill-to available=2Gi",
            "2 GiB ± 32 MiB",
            "eviction threshold of 2 GiB",
            "--allow-node-oom",
            "give at least available=2081Mi",
        ] {
            assert!(line.contains(needle), "{line} lacks {needle}");
        }
        let allowed = assess(None, run(&goal), &n, 2 * GIB, true);
        assert_eq!(
            refusal_available(&allowed, "/x", "available=2Gi", &goal),
            None
        );
        // A deadband above the threshold: never reaches it.
        let above = assess(None, run(&goal), &n, 2 * GIB - 33 * MIB, false);
        assert_eq!(above.first, FirstBound::Neither);
        assert_eq!(
            refusal_available(&above, "/x", "available=2Gi", &goal),
            None
        );
        // A limit the node can give, reached before the goal: the limit comes first.
        let boxed = assess(limit(GIB, GIB - 8 * MIB), run(&goal), &n, 3 * GIB, false);
        assert_eq!(
            (boxed.kind, boxed.first),
            (DomainKind::Memcg, FirstBound::Limit)
        );
        assert_eq!(
            refusal_available(&boxed, "/x", "available=2Gi", &goal),
            None
        );
    }

    /// A limit of 64 GiB on a 24 GiB node never stops a run: its domain is the node, and
    /// the run is refused when it would reach the node's bounds before that limit.
    #[test]
    fn a_limit_beyond_the_node_is_the_node() {
        let n = node(20 * GIB, 21 * GIB);
        let d = assess(limit(64 * GIB, 63 * GIB), 30 * GIB, &n, 100 * MIB, false);
        assert_eq!((d.kind, d.first), (DomainKind::Node, FirstBound::Eviction));
        let line = refusal(&d, "/big").unwrap();
        assert!(line.contains("the limit of 64 GiB on /pod"), "{line}");
        let d = assess(limit(64 * GIB, 63 * GIB), GIB, &n, 100 * MIB, false);
        assert_eq!((d.kind, d.first), (DomainKind::Node, FirstBound::Neither));
        assert_eq!(refusal(&d, "/big"), None);
        // Exactly what the node gives before eviction: still the limit's domain.
        let d = assess(
            limit(21 * GIB, 20 * GIB - 100 * MIB),
            30 * GIB,
            &n,
            100 * MIB,
            false,
        );
        assert_eq!((d.kind, d.first), (DomainKind::Memcg, FirstBound::Limit));
    }
}
