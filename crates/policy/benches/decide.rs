//! Decide benchmark: the cost of one Cedar decision with 1,000 policies
//! loaded, against the same calls with 10 policies and with none, in the
//! same run, on one thread.
//!
//! ```sh
//! cargo bench -p custody-policy --bench decide -- [CALLS]
//! ```
//!
//! The policies and calls are `support/corpus.rs`'s: permits and forbids
//! scoped by human, agent type, run, tool, server and action, with
//! conditions on the context (depth, blast radius, run age, arguments
//! `like`, findings, baselines, signals); calls through chains one to four
//! agents deep, each with its run's facts and signals. Each decision is
//! timed alone (`Policies::decide_with`: building the request, finding the
//! candidate policies, authorizing); figures are the median and 99th
//! percentile of a pass over every call, after a first pass that fills
//! the candidate cache (its figures are printed too, as `cold`). The
//! 1,000-policy set is also decided without the index, against the whole
//! set, which is what the index saves.

use std::time::{Duration, Instant};

use custody_engine::{Decision, Signal};
use custody_event::RuntimeEvent;
use custody_policy::{Policies, RunFacts};

#[path = "support/corpus.rs"]
mod corpus;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Calls {
    events: Vec<RuntimeEvent>,
    signals: Vec<Vec<Signal>>,
    facts: Vec<RunFacts>,
}

/// Median and 99th percentile, in µs.
fn percentiles(mut times: Vec<Duration>) -> (f64, f64) {
    times.sort();
    let at = |q: f64| {
        let index = ((times.len() as f64 - 1.0) * q).round() as usize;
        times[index].as_secs_f64() * 1e6
    };
    (at(0.5), at(0.99))
}

/// One pass over every call, each decision timed; and the verdicts, so
/// that the work is not optimized away and the mix can be shown.
fn pass(
    calls: &Calls,
    decide: impl Fn(&RuntimeEvent, &[Signal], &RunFacts) -> Decision,
) -> (f64, f64, [usize; 3]) {
    let (times, verdicts) = timed(calls, decide);
    let (median, p99) = percentiles(times);
    (median, p99, verdicts)
}

/// Each call's decision time, in the calls' order, and the verdicts.
fn timed(
    calls: &Calls,
    decide: impl Fn(&RuntimeEvent, &[Signal], &RunFacts) -> Decision,
) -> (Vec<Duration>, [usize; 3]) {
    let mut times = Vec::with_capacity(calls.events.len());
    let mut verdicts = [0; 3];
    for ((event, signals), facts) in calls.events.iter().zip(&calls.signals).zip(&calls.facts) {
        let started = Instant::now();
        let decision = std::hint::black_box(decide(event, signals, facts));
        times.push(started.elapsed());
        verdicts[match decision.verdict {
            custody_engine::Verdict::Allow => 0,
            custody_engine::Verdict::Deny => 1,
            _ => 2,
        }] += 1;
    }
    (times, verdicts)
}

fn main() {
    let count: usize = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .and_then(|a| a.parse().ok())
        .unwrap_or(20_000);
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!("decide benchmark: {count} calls, chains 1-4 agents deep, 1 thread, {cpus} CPUs");
    let calls = Calls {
        events: corpus::events(count),
        signals: (0..count).map(corpus::signals).collect(),
        facts: (0..count).map(corpus::facts).collect(),
    };

    // `DECIDE_SIZES=0` (or `10`, `1000`, comma-separated) runs those
    // sizes alone, for profiling.
    let sizes: Vec<usize> = std::env::var("DECIDE_SIZES")
        .ok()
        .map(|sizes| sizes.split(',').filter_map(|s| s.parse().ok()).collect())
        .unwrap_or_else(|| vec![0, 10, 1000]);
    let mut medians = Vec::new();
    for &size in &sizes {
        let policies = Policies::load(&corpus::policies(size)).unwrap();
        assert_eq!(policies.len(), size);
        let decide = |e: &RuntimeEvent, s: &[Signal], f: &RunFacts| policies.decide_with(e, s, f);
        let (cold_median, cold_p99, _) = pass(&calls, decide);
        let (median, p99, [allow, deny, hold]) = pass(&calls, decide);
        medians.push(median);
        println!(
            "{size:>5} policies: median {median:>6.2} µs  p99 {p99:>7.2} µs   (cold: median {cold_median:.2} µs, p99 {cold_p99:.2} µs)   allow {allow} deny {deny} hold {hold}"
        );
        if size == 1000 {
            // By the chain's depth: deeper chains are in scope of more
            // policies (those of each agent type and run above).
            let (times, _) = timed(&calls, decide);
            let by_depth: Vec<String> = (1..=4)
                .map(|depth| {
                    let times: Vec<Duration> = times
                        .iter()
                        .zip(&calls.events)
                        .filter(|(_, e)| e.actor.depth() == depth)
                        .map(|(t, _)| *t)
                        .collect();
                    let (median, p99) = percentiles(times);
                    format!("depth {depth}: median {median:.2} µs, p99 {p99:.2} µs")
                })
                .collect();
            println!("             {}", by_depth.join("; "));
            let whole =
                |e: &RuntimeEvent, s: &[Signal], f: &RunFacts| policies.decide_unindexed(e, s, f);
            let (median, p99, _) = pass(&calls, whole);
            println!(
                "{size:>5} policies, whole set (no index): median {median:>6.2} µs  p99 {p99:>7.2} µs"
            );
        }
    }
    if let [none, ten, thousand] = medians[..] {
        println!(
            "1000 policies cost {:.2}x the median of 10 policies and {:.2}x that of none",
            thousand / ten,
            thousand / none
        );
    }
}
