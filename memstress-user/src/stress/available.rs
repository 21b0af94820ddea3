//! `--fill-to available=SIZE`: the node's `memory.available`, the kubelet's eviction signal,
//! held at a goal by the stressors of one target.
//!
//! Enters: the goal and the node's MemTotal (planning); then, at every sample read after each
//! stressor settled, the node's memory ([`NodeMemory`]: the kubelet's figure and the kernel's
//! MemAvailable) and what the stressors hold. Leaves: their next total ([`Step`]), and what
//! the node's figure was while it was held ([`Held`], the summary's `available`).
//!
//! The kubelet's `memory.available` (MemTotal − the root cgroup's working set, see
//! [`crate::target::node`]) leaves out kernel memory that no cgroup's working set counts
//! (slab, page tables, kernel stacks, BPF maps), so once the node's page cache is gone it is
//! above the kernel's MemAvailable by that much (the *gap*: 131-144 MiB in the lab's 2 GiB
//! guests; in its 512 MiB guests 46-50 MiB before a run, 61-68 MiB once the run has loaded
//! its probes and holds its goal). Holding the kubelet's figure at 100 MiB can therefore mean
//! a node past the point of a global OOM. The loop's rules:
//! - **Floor**: MemAvailable is never taken below [`floor`] (1/64 of MemTotal, at least
//!   32 MiB): growth stops there, and a node that gets below it anyway (something else grew)
//!   makes the stressors shed what it is below the floor, and a deadband more, at once,
//!   whatever the goal. A goal that would need MemAvailable under the floor is refused when
//!   the run is planned ([`Goal::lowest`], from the gap then); one just above that can still
//!   be held back by the floor as the gap grows during the run (the summary's `at_floor_ms`).
//! - **Deadband**: within [`deadband`] of the goal nothing moves (the node's figures move by
//!   themselves: page cache ages, per-CPU counters are folded in batches).
//! - **Damped growth**: 3/4 of the distance to the goal while it is more than four deadbands,
//!   then all of it, and at most a floor's worth per step: what the node's figure drops for a
//!   charge is about the charge, but other processes move it meanwhile, an overshoot is what
//!   must not happen, and a stressor finishes a fill before it takes the next command (it
//!   cannot shed in the middle of one), so the loop looks at the node again before it has
//!   taken more than the margin it keeps.
//! - **Shrinking at once**: below the goal, the whole distance is shed in one step.

use std::time::Instant;

use crate::{
    output::line::{AvailableHeld, AvailablePlan},
    target::node::NodeMemory,
};

const MIB: u64 = 1 << 20;

/// The loop leaves `memory.available` alone within this of the goal: 1/256 of MemTotal,
/// from 2 MiB to 32 MiB (2 MiB in a 512 MiB guest, 8 MiB at 2 GiB, 32 MiB from 8 GiB up).
pub fn deadband(mem_total: u64) -> u64 {
    (mem_total / 256).clamp(2 * MIB, 32 * MIB)
}

/// The kernel's MemAvailable below which the stressors never hold more: 1/64 of MemTotal, at
/// least 32 MiB (384 MiB on a 24 GiB node). MemAvailable already leaves out the zones'
/// watermark reserves; what is under the floor is the margin for the loop's own delay (a
/// sample every 100 ms) and for what others allocate meanwhile.
pub fn floor(mem_total: u64) -> u64 {
    (mem_total / 64).max(32 * MIB)
}

/// `bytes` as a `--fill-to available=` value, rounded up to a MiB: `2081Mi`.
pub fn flag_value(bytes: u64) -> String {
    format!("{}Mi", bytes.div_ceil(MIB))
}

/// The kubelet's figure less MemAvailable: kernel memory no cgroup's working set counts.
pub fn gap(node: &NodeMemory) -> u64 {
    node.available.saturating_sub(node.mem_available)
}

/// A `memory.available` goal and the bounds of the loop that holds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Goal {
    /// The node's `memory.available` to hold.
    pub bytes: u64,
    /// See [`deadband`].
    pub deadband: u64,
    /// See [`floor`].
    pub floor: u64,
}

impl Goal {
    /// The goal, with the deadband and floor of a node of `mem_total`.
    pub fn new(bytes: u64, mem_total: u64) -> Self {
        Self {
            bytes,
            deadband: deadband(mem_total),
            floor: floor(mem_total),
        }
    }

    /// The lowest goal that keeps MemAvailable at or above the floor at the bottom of the
    /// deadband, on the node as it is now: floor + gap + deadband.
    pub fn lowest(&self, node: &NodeMemory) -> u64 {
        self.floor + gap(node) + self.deadband
    }

    /// What the stressors hold at first: what takes `memory.available` from now to the goal,
    /// at most what keeps MemAvailable above the floor.
    pub fn first_estimate(&self, node: &NodeMemory) -> u64 {
        node.available
            .saturating_sub(self.bytes)
            .min(node.mem_available.saturating_sub(self.floor))
    }
}

impl From<&AvailablePlan> for Goal {
    fn from(plan: &AvailablePlan) -> Self {
        Self {
            bytes: plan.goal_bytes,
            deadband: plan.deadband_bytes,
            floor: plan.floor_bytes,
        }
    }
}

/// What the loop does at a settled sample.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Nothing changes: within the deadband of the goal (`at_goal`), or unable to grow without
    /// taking MemAvailable under the floor (`at_floor`); neither: below the goal with nothing
    /// left to shed.
    Hold {
        /// Within the deadband.
        at_goal: bool,
        /// Held back by the floor.
        at_floor: bool,
    },
    /// The stressors' new total.
    Set {
        /// What they hold together.
        total: u64,
        /// Growth cut short, or memory shed, for the floor.
        at_floor: bool,
    },
}

/// The loop's step: the stressors hold `held` together; the node is at `node`.
pub fn step(goal: &Goal, held: u64, node: &NodeMemory) -> Step {
    let above_floor = i128::from(node.mem_available) - i128::from(goal.floor);
    if above_floor < 0 {
        let shed = above_floor.unsigned_abs() as u64 + goal.deadband;
        return if held == 0 {
            Step::Hold {
                at_goal: false,
                at_floor: true,
            }
        } else {
            Step::Set {
                total: held.saturating_sub(shed),
                at_floor: true,
            }
        };
    }
    let above_floor = above_floor as u64;
    let excess = i128::from(node.available) - i128::from(goal.bytes);
    if excess.unsigned_abs() <= u128::from(goal.deadband) {
        return Step::Hold {
            at_goal: true,
            at_floor: false,
        };
    }
    if excess < 0 {
        let shed = excess.unsigned_abs() as u64;
        return if held == 0 {
            Step::Hold {
                at_goal: false,
                at_floor: false,
            }
        } else {
            Step::Set {
                total: held.saturating_sub(shed),
                at_floor: false,
            }
        };
    }
    let excess = excess as u64;
    let want = if excess > 4 * goal.deadband {
        excess / 4 * 3
    } else {
        excess
    }
    .min(goal.floor);
    let grow = want.min(above_floor);
    if grow < want && grow <= goal.deadband {
        return Step::Hold {
            at_goal: false,
            at_floor: true,
        };
    }
    Step::Set {
        total: held.saturating_add(grow),
        at_floor: grow < want,
    }
}

/// What the node's `memory.available` was while it was held, from the samples.
#[derive(Clone, Debug)]
pub struct Held {
    line: AvailableHeld,
    /// Since when the floor holds the stressors back (`None`: it does not).
    floor_since: Option<Instant>,
}

impl Held {
    /// Nothing sampled yet.
    pub fn new(goal: &Goal) -> Self {
        Self {
            line: AvailableHeld {
                goal_bytes: goal.bytes,
                floor_bytes: goal.floor,
                ..AvailableHeld::default()
            },
            floor_since: None,
        }
    }

    /// A sample of the node; `holding`: the goal was reached (the hold has begun).
    pub fn sample(&mut self, node: &NodeMemory, holding: bool) {
        let l = &mut self.line;
        if holding {
            l.min_bytes = Some(
                l.min_bytes
                    .map_or(node.available, |m| m.min(node.available)),
            );
            l.max_bytes = Some(
                l.max_bytes
                    .map_or(node.available, |m| m.max(node.available)),
            );
        }
        l.end_bytes = Some(node.available);
        l.min_mem_available_bytes = Some(
            l.min_mem_available_bytes
                .map_or(node.mem_available, |m| m.min(node.mem_available)),
        );
    }

    /// Whether the floor holds the stressors back now; returns whether it just began to.
    pub fn at_floor(&mut self, at_floor: bool, now: Instant) -> bool {
        match (self.floor_since, at_floor) {
            (None, true) => {
                self.floor_since = Some(now);
                true
            }
            (Some(since), false) => {
                self.line.at_floor_ms += now.duration_since(since).as_millis() as u64;
                self.floor_since = None;
                false
            }
            _ => false,
        }
    }

    /// The summary's `available`, as of `now`.
    pub fn line(&self, now: Instant) -> AvailableHeld {
        let mut line = self.line.clone();
        if let Some(since) = self.floor_since {
            line.at_floor_ms += now.duration_since(since).as_millis() as u64;
        }
        line
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::target::node::AvailableFrom;

    const GIB: u64 = 1 << 30;

    fn node(available: u64, mem_available: u64) -> NodeMemory {
        NodeMemory {
            mem_total: 2 * GIB,
            mem_available,
            swap_total: 0,
            available,
            available_from: AvailableFrom::RootMemcg,
        }
    }

    #[test]
    fn the_bounds_scale_with_the_node() {
        assert_eq!(deadband(463 * MIB), 2 * MIB);
        assert_eq!(deadband(2 * GIB), 8 * MIB);
        assert_eq!(deadband(24 * GIB), 32 * MIB);
        assert_eq!(floor(463 * MIB), 32 * MIB);
        assert_eq!(floor(2 * GIB), 32 * MIB);
        assert_eq!(floor(24 * GIB), 384 * MIB);
        // The lab's 2 GiB guest: the kubelet's figure 1819 MiB, MemAvailable 1687 MiB.
        let goal = Goal::new(100 * MIB, 2 * GIB);
        let n = node(1819 * MIB, 1687 * MIB);
        assert_eq!(gap(&n), 132 * MIB);
        assert_eq!(goal.lowest(&n), (32 + 132 + 8) * MIB);
        assert_eq!(Goal::new(500 * MIB, 2 * GIB).first_estimate(&n), 1319 * MIB);
        // The floor bounds the first estimate when the goal is too low.
        assert_eq!(goal.first_estimate(&n), 1655 * MIB);
        // The kubelet's figure below MemAvailable (no root memcg: MemAvailable stands in).
        assert_eq!(gap(&node(MIB, 2 * MIB)), 0);
    }

    #[test]
    fn holds_within_the_deadband() {
        let goal = Goal::new(200 * MIB, 2 * GIB);
        for available in [192, 200, 208] {
            assert_eq!(
                step(&goal, 100 * MIB, &node(available * MIB, 150 * MIB)),
                Step::Hold {
                    at_goal: true,
                    at_floor: false
                },
                "{available} MiB"
            );
        }
    }

    #[test]
    fn grows_damped_then_the_rest() {
        let goal = Goal::new(200 * MIB, 24 * GIB);
        assert_eq!((goal.deadband, goal.floor), (32 * MIB, 384 * MIB));
        // 800 MiB to go (more than 4 deadbands): 3/4 of it, at most a floor's worth.
        assert_eq!(
            step(&goal, 0, &node(1000 * MIB, 900 * MIB)),
            Step::Set {
                total: 384 * MIB,
                at_floor: false
            }
        );
        assert_eq!(
            step(&goal, 0, &node(500 * MIB, 900 * MIB)),
            Step::Set {
                total: 225 * MIB,
                at_floor: false
            }
        );
        // 100 MiB to go (within four deadbands): all of it.
        assert_eq!(
            step(&goal, 600 * MIB, &node(300 * MIB, 500 * MIB)),
            Step::Set {
                total: 700 * MIB,
                at_floor: false
            }
        );
        // Converges on a small node too, and ends in the deadband without overshooting.
        let goal = Goal::new(200 * MIB, 2 * GIB);
        let (mut held, mut available) = (0u64, 1800 * MIB);
        for _ in 0..100 {
            match step(&goal, held, &node(available, available - 100 * MIB)) {
                Step::Set { total, .. } => {
                    available -= total - held;
                    held = total;
                }
                Step::Hold { at_goal, .. } => {
                    assert!(at_goal);
                    break;
                }
            }
        }
        assert!(
            available.abs_diff(200 * MIB) <= goal.deadband,
            "{available}"
        );
        assert!(available >= 200 * MIB, "overshot to {available}");
    }

    #[test]
    fn shrinks_at_once_when_the_node_moves() {
        let goal = Goal::new(200 * MIB, 2 * GIB);
        // Something else took 64 MiB: the stressors give it all back in one step.
        assert_eq!(
            step(&goal, 500 * MIB, &node(136 * MIB, 100 * MIB)),
            Step::Set {
                total: 436 * MIB,
                at_floor: false
            }
        );
        // Nothing left to give: held, not at the goal.
        assert_eq!(
            step(&goal, 0, &node(136 * MIB, 100 * MIB)),
            Step::Hold {
                at_goal: false,
                at_floor: false
            }
        );
        // Others freed 300 MiB: the stressors grow into it (a floor's worth at a time).
        assert_eq!(
            step(&goal, 436 * MIB, &node(500 * MIB, 400 * MIB)),
            Step::Set {
                total: 436 * MIB + 32 * MIB,
                at_floor: false
            }
        );
    }

    #[test]
    fn never_takes_mem_available_under_the_floor() {
        let goal = Goal::new(100 * MIB, 2 * GIB);
        // The kubelet's figure is far above the goal, but MemAvailable is 18 MiB above the
        // floor: growth stops there.
        assert_eq!(
            step(&goal, 322 * MIB, &node(400 * MIB, 50 * MIB)),
            Step::Set {
                total: 340 * MIB,
                at_floor: true
            }
        );
        // At the floor: held there (as far as the run can safely go).
        assert_eq!(
            step(&goal, 340 * MIB, &node(360 * MIB, 36 * MIB)),
            Step::Hold {
                at_goal: false,
                at_floor: true
            }
        );
        // Below it (another process grew): shed what it is below, and a deadband more,
        // whatever the goal says.
        assert_eq!(
            step(&goal, 340 * MIB, &node(300 * MIB, 20 * MIB)),
            Step::Set {
                total: 340 * MIB - 12 * MIB - 8 * MIB,
                at_floor: true
            }
        );
        assert_eq!(
            step(&goal, 0, &node(300 * MIB, 20 * MIB)),
            Step::Hold {
                at_goal: false,
                at_floor: true
            }
        );
    }

    #[test]
    fn held_figures_count_from_the_goal() {
        let goal = Goal::new(200 * MIB, 2 * GIB);
        let mut held = Held::new(&goal);
        let t0 = Instant::now();
        held.sample(&node(900 * MIB, 800 * MIB), false);
        held.sample(&node(205 * MIB, 100 * MIB), true);
        held.sample(&node(196 * MIB, 90 * MIB), true);
        assert!(held.at_floor(true, t0));
        assert!(!held.at_floor(true, t0));
        held.at_floor(false, t0 + std::time::Duration::from_millis(300));
        let line = held.line(t0 + std::time::Duration::from_secs(1));
        assert_eq!(line.goal_bytes, 200 * MIB);
        assert_eq!(line.min_bytes, Some(196 * MIB));
        assert_eq!(line.max_bytes, Some(205 * MIB));
        assert_eq!(line.end_bytes, Some(196 * MIB));
        assert_eq!(line.min_mem_available_bytes, Some(90 * MIB));
        assert_eq!(line.at_floor_ms, 300);
        assert_eq!(line.floor_bytes, 32 * MIB);
    }
}
